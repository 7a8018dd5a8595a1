"""Error paths that need more than a command line to set up: a model that never finishes
downloading (Ctrl-C while it loads), options judged before TensorFlow is imported, an output
another process holds, a damaged output, merge parts that overlap, paths on stdin for bench."""

from __future__ import annotations

import fcntl
import http.server
import os
import shutil
import signal
import subprocess
import sys
import threading

import numpy as np
import pytest
from conftest import EFX, SAMPLES, ctrl_c_after, run_cli, run_efx

import efx
from efx import writers
from efx.model import _cpu_has_bfloat16, _cpu_has_float16, _gpu_device_present


class StalledDownload:
    """A model URL on 127.0.0.1 whose download never starts: the run waits in the model load."""

    def __init__(self) -> None:
        self.arrived = threading.Event()
        self.release = threading.Event()
        stalled = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                stalled.arrived.set()
                stalled.release.wait(60)
                self.send_error(503)

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/b6.tar.gz"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def stalled(tmp_path, monkeypatch):
    monkeypatch.setenv("TFHUB_CACHE_DIR", str(tmp_path / "hub-cache"))
    server = StalledDownload()
    yield server
    server.close()


def interrupt_while_loading(stalled: StalledDownload, *args: str) -> subprocess.CompletedProcess:
    """Run efx, press Ctrl-C once its model download has begun, and wait for it to end."""
    process = subprocess.Popen(
        [EFX, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),  # as in a terminal
    )
    try:
        assert stalled.arrived.wait(60), "efx never asked for the model"
        process.send_signal(signal.SIGINT)
        stdout, stderr = process.communicate(timeout=60)
    finally:
        process.kill()
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


def test_ctrl_c_while_the_model_loads_says_nothing_was_written(stalled, tmp_path):
    output = tmp_path / "o.h5"
    result = interrupt_while_loading(stalled, "extract", "-m", stalled.url, SAMPLES, str(output))
    assert result.returncode == 130, result.stderr
    said = "efx: interrupted while loading the model: nothing was written, no OUTPUT was created."
    assert said in result.stderr
    assert "--resume" not in result.stderr and "kept in" not in result.stderr
    assert "Traceback" not in result.stderr
    assert not output.exists()


def test_ctrl_c_while_the_model_loads_leaves_an_output_to_overwrite_as_it_was(
    stalled, good_dir, tiny_model, tmp_path
):
    output = str(tmp_path / "o.h5")
    efx.extract(good_dir[0], output, model=tiny_model, image_size=32)
    before = efx.load(output)[0]
    result = interrupt_while_loading(
        stalled, "extract", "--overwrite", "-m", stalled.url, SAMPLES, output
    )
    assert result.returncode == 130, result.stderr
    said = f"efx: interrupted while loading the model: nothing was written, {output} is as it was."
    assert said in result.stderr
    assert efx.load(output)[0] == before and efx.info(output)["complete"] is True


def test_ctrl_c_outside_extract_exits_130_without_a_traceback(stalled):
    result = interrupt_while_loading(stalled, "bench", "-m", stalled.url, "--count", "2")
    assert result.returncode == 130, result.stderr
    assert result.stderr.strip().endswith("efx: interrupted"), result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.skipif(_gpu_device_present(), reason="a GPU machine decides after loading")
@pytest.mark.parametrize(
    "flags, message",
    [
        (["--precision", "float16", "--backend", "tensorflow"], "--precision float16 needs a GPU"),
        pytest.param(
            ["--precision", "float16"], "--precision float16 needs a GPU",
            marks=pytest.mark.skipif(_cpu_has_float16(), reason="OpenVINO runs float16 here"),
        ),
        pytest.param(
            ["--precision", "bfloat16", "--backend", "tensorflow"], "--precision bfloat16",
            marks=pytest.mark.skipif(_cpu_has_bfloat16(), reason="this CPU has bfloat16"),
        ),
    ],
)  # fmt: skip
def test_a_precision_this_machine_cannot_run_is_refused_before_tensorflow_loads(
    tmp_path, flags, message
):
    """Refused before the model is fetched: the URL below would fail, and TF is never imported."""
    code = (
        "import sys\n"
        "from efx.cli import main\n"
        "try:\n"
        "    main(sys.argv[1:])\n"
        "except SystemExit as done:\n"
        "    print(done.code, 'TF' if 'tensorflow' in sys.modules else 'no TF')\n"
    )
    argv = ["extract", *flags, "-m", "http://127.0.0.1:9/b6.tar.gz", SAMPLES, str(tmp_path / "o")]
    result = subprocess.run(
        [sys.executable, "-c", code, *argv], capture_output=True, text=True, timeout=60
    )
    assert result.stdout.strip() == "1 no TF", result.stdout + result.stderr
    assert result.stderr.startswith(f"efx: {message}"), result.stderr
    assert "could not fetch" not in result.stderr


def test_bench_reads_paths_from_stdin(tiny_model, good_dir):
    source, rels = good_dir
    paths = "".join(os.path.join(source, rel) + "\n" for rel in rels[:3])
    result = run_cli(
        "bench", "-", "-m", tiny_model, "--image-size", "32", "--backend", "tensorflow",
        "--rounds", "1", "--json", input=paths.encode(),
    )  # fmt: skip
    assert result.exit_code == 0, result.stderr
    assert '"images": 3' in result.stdout and '"source": "-"' in result.stdout


def test_an_hdf5_output_held_by_another_process_is_a_clear_error(
    tiny_model, good_dir, tmp_path, monkeypatch
):
    output = str(tmp_path / "o.h5")
    efx.extract(good_dir[0], output, model=tiny_model, image_size=32)
    # efx waits 10 s for the lock's holder to let go; this test's holder never does.
    monkeypatch.setattr(efx.writers.hdf5, "LOCK_WAIT_SECONDS", 1.0)
    with open(output, "rb") as held:
        # As an HDF5 writer in another process holds it: flock's locks belong to an open file,
        # so HDF5's own open of the file in this process is refused as another process's.
        fcntl.flock(held, fcntl.LOCK_EX)
        result = run_cli("info", output)
    assert result.exit_code == 1, result.stderr
    assert result.stderr == f"efx: {output} is in use by another process; try again\n"


@pytest.mark.parametrize("where", ["superblock", "root group header"])
def test_a_damaged_hdf5_output_is_a_clear_error_at_once(where, tiny_model, good_dir, tmp_path):
    """At once: opened in SWMR mode, HDF5 retries a failed checksum for about two minutes."""
    output = str(tmp_path / "o.h5")
    efx.extract(good_dir[0], output, model=tiny_model, image_size=32)
    with open(output, "r+b") as file:
        root = int.from_bytes(file.read(48)[36:44], "little")  # the root group's address
        file.seek(40 if where == "superblock" else root + 8)
        file.write(b"\x01\x02\x03\x04")  # its checksum no longer matches
    for args in (["info", output], ["extract", "--resume", good_dir[0], output, "-m", tiny_model]):
        result = run_efx(*args, timeout=30)
        assert result.returncode == 1, result.stderr
        assert result.stderr.startswith(f"efx: cannot read {output}: "), result.stderr
        assert "Traceback" not in result.stderr


def test_merge_refuses_parts_that_hold_the_same_input(tmp_path):
    attrs = {"model": "m", "feature_dim": 2, "image_size": 8, "inputs_total": 4}
    parts = []
    for index, paths in enumerate([["a.jpg", "b.jpg"], ["b.jpg", "c.jpg"]]):
        part = str(tmp_path / f"p{index}.h5")
        writer = writers.open_writer("hdf5", part, {**attrs, "part": f"{index}/2"}, inputs=paths)
        writer.write(paths, np.zeros((2, 2), np.float32))
        writer.close()
        parts.append(part)
    result = run_efx("merge", *parts, str(tmp_path / "all.h5"))
    assert result.returncode == 1
    assert result.stderr == f"efx: {parts[0]} and {parts[1]} overlap: both hold b.jpg\n"
    assert not (tmp_path / "all.h5").exists()


def test_a_named_pipe_or_device_named_like_an_image_is_a_failure_not_a_hang(tmp_path, tiny_model):
    # A capture tool's FIFO called b_incoming.jpg: opening it would wait for a writer forever.
    folder = tmp_path / "photos"
    folder.mkdir()
    shutil.copy(os.path.join(SAMPLES, "coffee.jpg"), folder / "a.jpg")
    os.mkfifo(folder / "b_incoming.jpg")
    os.symlink("/dev/zero", folder / "c_device.jpg")
    output = str(tmp_path / "out.h5")
    result = run_efx("extract", str(folder), output, "-m", tiny_model, timeout=120)
    assert result.returncode == 0, result.stderr
    # An update decides from the same stat: the pipe is refused again, never opened.
    efx.extract(str(folder), output, model=tiny_model, update=True)
    info = efx.info(output)
    assert (info["count"], info["failed"]) == (1, 2)
    state = writers.read_state(output, facts=True)
    reasons = dict(zip(state.failed, state.reasons, strict=True))
    assert reasons == {
        str(folder / "b_incoming.jpg"): "not an image file: a named pipe",
        str(folder / "c_device.jpg"): "not an image file: a character device",
    }


def test_ctrl_c_while_reading_the_files_stops_at_once_and_says_so(tmp_path, tiny_model):
    folder = tmp_path / "photos"
    folder.mkdir()
    with open(folder / "huge.jpg", "wb") as file:  # sparse: no disk, but minutes of hashing
        file.truncate(1 << 40)
    output = tmp_path / "out.h5"
    # Imports take about a second; then the hashing of 1 TiB begins.
    returncode, stderr = ctrl_c_after(3, "extract", str(folder), str(output), "-m", tiny_model)
    assert returncode == 130, stderr
    said = "efx: interrupted while reading the files: nothing was written, no OUTPUT was created."
    assert said in stderr
    assert "Traceback" not in stderr and not output.exists()
