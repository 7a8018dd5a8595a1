"""The command line: help, every user-error path (exit code, message, no traceback), and the
process-level behaviour only a real `efx` process shows (fast start, clean stderr)."""

from __future__ import annotations

import http.server
import json
import os
import subprocess
import sys
import threading

import pytest
from conftest import EFX, REPO, SAMPLES, assert_user_error, run_cli


def test_help_teaches_with_examples():
    result = run_cli("extract", "--help")
    assert result.exit_code == 0
    for text in (
        "SOURCE...",
        "--model",
        "--image-size",
        "--batch-size",
        "--format",
        "--strict",
        "--json",
        "--quiet",
        "--overwrite",
        "-0, --null",
        "Examples:",
    ):
        assert text in result.output


@pytest.mark.parametrize(
    "argv, message",
    [
        (["extract", "nowhere/", "o.h5"], "source not found: nowhere/"),
        (
            ["extract", "--batch-size", "0", SAMPLES, "{tmp}/o.h5"],
            "--batch-size must be a positive integer. Received: 0",
        ),
        (
            ["extract", "--image-size", "-3", SAMPLES, "{tmp}/o.h5"],
            "--image-size must be a positive integer. Received: -3",
        ),
        (
            ["extract", "--shard-size", "0", SAMPLES, "{tmp}/o"],
            "--shard-size must be a positive integer. Received: 0",
        ),
        (["extract", SAMPLES, "{tmp}/no/such/folder/o.h5"], "the folder for OUTPUT does not exist"),
        (
            ["extract", "--model", "b9", SAMPLES, "{tmp}/o.h5"],
            "--model is not a short name, a URL, a SavedModel folder or a .tar.gz",
        ),
        (
            ["extract", "--model", "{tmp}", SAMPLES, "{tmp}/o.h5"],
            "--model folder is not a SavedModel (no saved_model.pb inside)",
        ),
        (["extract", "{tmp}/empty-folder", "{tmp}/o.h5"], "no images found in"),
        (
            ["extract", "--model", "http://127.0.0.1:9/nothing.tar.gz", SAMPLES, "{tmp}/o.h5"],
            "could not fetch the model http://127.0.0.1:9/nothing.tar.gz",
        ),
        (["info", "{tmp}/missing.h5"], "output not found"),
        (["info", SAMPLES], "not an efx output"),
        (
            ["extract", "--image-size", "4096", SAMPLES, "{tmp}/o.h5"],
            "--image-size must be at most 2048. Received: 4096",
        ),
        (
            ["extract", SAMPLES, "{tmp}/a-file"],
            "OUTPUT {tmp}/a-file is a file; .npy shards go in a folder",
        ),
        (
            ["extract", SAMPLES, "{tmp}/empty-folder.h5"],
            "OUTPUT {tmp}/empty-folder.h5 is a folder; an HDF5 output must be a file path",
        ),
        (
            ["extract", "--resume", "--format", "hdf5", SAMPLES, "{tmp}/shards"],
            "cannot resume {tmp}/shards: it is npy output, not hdf5",
        ),
        (["extract", "--resume", "--overwrite", SAMPLES, "{tmp}/o.h5"], "choose one"),
        (
            ["extract", "--ray-address", "auto", SAMPLES, "{tmp}/o.h5"],
            "--ray-address is for --engine ray. Received: --ray-address auto with --engine local",
        ),
        (["merge", "{tmp}/part.h5", "{tmp}/part.h5"], "OUTPUT {tmp}/part.h5 is also one of the"),
        (["make-standin", "{tmp}/empty-folder"], "refusing to overwrite existing"),
        (["bench", "--size", "big", "-m", "b0"], "--size must be WIDTHxHEIGHT"),
        (["bench", "--rounds", "0", "-m", "b0"], "--rounds must be a positive integer"),
    ],
)
def test_user_errors_exit_1_with_a_message_and_no_traceback(tmp_path, argv, message):
    from efx import writers

    (tmp_path / "empty-folder").mkdir()
    (tmp_path / "empty-folder.h5").mkdir()
    (tmp_path / "a-file").write_text("not a folder")
    writers.open_writer("npy", str(tmp_path / "shards"), {"feature_dim": 4}).abort()
    argv = [arg.replace("{tmp}", str(tmp_path)) for arg in argv]
    assert_user_error(run_cli(*argv), message.replace("{tmp}", str(tmp_path)))


def test_unwritable_output_folder_is_refused_before_any_work(tmp_path):
    if os.geteuid() == 0:
        pytest.skip("root can write anywhere")
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    assert_user_error(run_cli("extract", SAMPLES, str(locked / "o.h5")), "permission denied")


def test_usage_errors_exit_2():
    assert run_cli("extract").exit_code == 2
    assert run_cli("extract", "--format", "csv", SAMPLES, "o").exit_code == 2
    assert run_cli("no-such-command").exit_code == 2


def test_offline_default_model_failure_says_what_was_tried_and_how_to_go_local(
    tmp_path, monkeypatch
):
    # A stand-in for "no internet": the handle's host refuses connections.
    monkeypatch.setenv("TFHUB_CACHE_DIR", str(tmp_path / "hub-cache"))
    result = run_cli(
        "extract",
        "--model",
        "https://127.0.0.1:9/tensorflow/efficientnet/b6",
        SAMPLES,
        str(tmp_path / "o.h5"),
    )
    assert_user_error(result, "could not fetch the model")
    assert str(tmp_path / "hub-cache") in result.stderr
    assert "--model path/to/model.tar.gz" in result.stderr
    assert not (tmp_path / "o.h5").exists()


def test_help_and_info_do_not_import_tensorflow(tmp_path):
    code = (
        "import sys\n"
        "from efx.cli import main\n"
        "codes = []\n"
        "for argv in (['--help'], ['extract', '--help'], ['info', sys.argv[1]]):\n"
        "    try:\n"
        "        main(argv)\n"
        "    except SystemExit as done:\n"
        "        codes.append(done.code)\n"
        "print(codes, 'TF' if 'tensorflow' in sys.modules else 'no TF')\n"
    )
    output = tmp_path / "o"
    output.mkdir()
    (output / "manifest.json").write_text(json.dumps({"shards": [], "complete": True}))
    result = subprocess.run(
        [sys.executable, "-c", code, str(output)], capture_output=True, text=True, timeout=60
    )
    assert result.stdout.strip().endswith("[0, 0, 0] no TF"), result.stdout + result.stderr


def test_help_imports_neither_numpy_nor_h5py():
    """What keeps `efx --help` near Python's own start-up: the API loads on first use."""
    code = (
        "import sys\n"
        "from efx.cli import main\n"
        "for argv in (['--help'], ['extract', '--help']):\n"
        "    try:\n"
        "        main(argv)\n"
        "    except SystemExit:\n"
        "        pass\n"
        "print(sorted({'numpy', 'h5py', 'tensorflow'} & set(sys.modules)))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60
    )
    assert result.stdout.strip().endswith("[]"), result.stdout + result.stderr


def test_real_process_keeps_stderr_clean_and_stdout_json_only(tmp_path, tiny_model):
    output = tmp_path / "o.h5"
    result = subprocess.run(
        [
            EFX,
            "extract",
            os.path.join(SAMPLES, "space"),
            str(output),
            "--model",
            tiny_model,
            "--image-size",
            "32",
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
    )
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)  # stdout is exactly one JSON object
    assert summary["embedded"] == 3
    # No TensorFlow C++ chatter (oneDNN, CUDA, absl) on the terminal, only efx's own lines.
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines and all(line.startswith("efx: ") for line in lines), result.stderr


def test_verbose_shows_tensorflow_logs(tmp_path, tiny_model):
    result = subprocess.run(
        [
            EFX,
            "extract",
            os.path.join(SAMPLES, "space", "rocket.jpg"),
            str(tmp_path / "o.h5"),
            "--model",
            tiny_model,
            "--image-size",
            "32",
            "--verbose",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env={k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"},
    )
    assert result.returncode == 0
    assert any(not line.startswith("efx: ") for line in result.stderr.splitlines() if line)


def test_stdin_pipeline_with_find_print0(tmp_path, tiny_model):
    finder = subprocess.Popen(
        ["find", SAMPLES, "-name", "*.jpg", "-print0"], stdout=subprocess.PIPE
    )
    result = subprocess.run(
        [
            EFX,
            "extract",
            "-0",
            "-",
            str(tmp_path / "o.h5"),
            "--model",
            tiny_model,
            "--image-size",
            "32",
            "--json",
            "--quiet",
        ],
        stdin=finder.stdout,
        capture_output=True,
        text=True,
        timeout=120,
    )
    finder.wait()
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["embedded"] == 4
    assert result.stderr == ""


def test_model_served_over_http_is_downloaded_once_and_cached(tmp_path, tiny_tarball, monkeypatch):
    """tensorflow-hub's own download-and-cache path, offline: a tarball served on 127.0.0.1."""
    folder = os.path.dirname(tiny_tarball)

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, directory=folder, **kwargs)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Quiet)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.server_address[1]}/{os.path.basename(tiny_tarball)}"
    monkeypatch.setenv("TFHUB_CACHE_DIR", str(tmp_path / "cache"))
    args = ["extract", "--model", url, "--image-size", "32", os.path.join(SAMPLES, "space")]
    try:
        first = run_cli(*args, str(tmp_path / "a.h5"))
        assert first.exit_code == 0, first.output
    finally:
        server.shutdown()
        server.server_close()
    assert any((tmp_path / "cache").iterdir())
    # The server is gone: the cached copy is used.
    second = run_cli(*args, str(tmp_path / "b.h5"))
    assert second.exit_code == 0, second.output


def test_stale_cache_folder_is_reported_with_the_fix(tmp_path, monkeypatch):
    import hashlib

    url = "http://127.0.0.1:9/model.tar.gz"
    cache = tmp_path / "cache"
    # tensorflow-hub names cache folders by the SHA-1 of the handle and trusts any non-empty one;
    # a folder left half-deleted (no saved_model.pb) is stale.
    stale = cache / hashlib.sha1(url.encode()).hexdigest()
    stale.mkdir(parents=True)
    (stale / "variables").mkdir()
    monkeypatch.setenv("TFHUB_CACHE_DIR", str(cache))
    result = run_cli("extract", "--model", url, SAMPLES, str(tmp_path / "o.h5"))
    assert_user_error(result, f"could not load the SavedModel in {stale}")
    assert "delete that folder and try again" in result.stderr


def test_a_full_disk_is_a_clear_error_not_a_traceback(tmp_path, tiny_model):
    """A file-size limit (RLIMIT_FSIZE) makes writes fail with EFBIG, as a full disk would."""
    import resource

    def small_files():
        resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, 64 * 1024))

    result = subprocess.run(
        [
            EFX,
            "extract",
            SAMPLES,
            str(tmp_path / "o.h5"),
            "--model",
            tiny_model,
            "--image-size",
            "32",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        preexec_fn=small_files,
    )
    assert result.returncode == 1, result.stderr
    assert "efx: writing" in result.stderr and "(disk full?)" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr
