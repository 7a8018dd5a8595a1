"""OUTPUT -: rows streamed to stdout (JSON Lines, Arrow IPC) equal to what a file holds, the
README's recipes run as written, and every command piped into `head -1` ends quietly without
losing what else it was asked for. Through the installed command, in real shell pipelines."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess

import numpy as np
import pytest
from conftest import EFX, REPO, SAMPLES, assert_user_error, run_cli, run_efx

import efx

# One test worker runs them all: their module-scoped fixtures are built once, not on each
# worker (make test runs pytest-xdist with --dist loadgroup).
pytestmark = pytest.mark.xdist_group("stream")

SIZE = 32
BROKEN = "b_broken.jpg"  # sorted between good images: its record sits between theirs


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> str:
    root = tmp_path_factory.mktemp("stream") / "photos"
    root.mkdir()
    for name in ("chelsea.png", "coffee.jpg", "camera.png"):
        shutil.copy(os.path.join(SAMPLES, name), root / f"{name[0]}_{name}")
    (root / BROKEN).write_bytes(b"\xff\xd8\xff\xe0 not really a JPEG")
    os.symlink(os.path.join(SAMPLES, "space"), root / "space")
    return str(root)


@pytest.fixture(scope="module")
def reference(photos, tiny_model, tmp_path_factory) -> tuple[list[str], np.ndarray]:
    output = str(tmp_path_factory.mktemp("reference") / "out.h5")
    efx.extract(photos, output, model=tiny_model, image_size=SIZE)
    return efx.load(output)


def shell(command: str, cwd: str | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    """A real shell pipeline; `efx` is the installed command. PIPESTATUS[0] is printed last on
    stderr as `status=N`."""
    env = {**os.environ, "PATH": os.path.dirname(EFX) + os.pathsep + os.environ["PATH"]}
    script = f"{command}; echo status=${{PIPESTATUS[0]}} >&2"
    return subprocess.run(
        ["bash", "-c", script], capture_output=True, text=True, cwd=cwd, env=env, timeout=timeout
    )


def efx_status(result: subprocess.CompletedProcess) -> int:
    return int(re.findall(r"status=(\d+)", result.stderr)[-1])


@pytest.fixture(scope="module")
def jsonl(photos, tiny_model) -> subprocess.CompletedProcess:
    """`efx extract photos/ -`, run once: its stdout is what the README's recipes read."""
    result = run_efx("extract", photos, "-", "-m", tiny_model, "--image-size", str(SIZE))
    assert result.returncode == 0, result.stderr
    return result


def test_json_lines_hold_one_record_per_input_in_order_exactly_as_a_file(jsonl, photos, reference):
    result = jsonl
    records = [json.loads(line) for line in result.stdout.splitlines()]
    paths, embeddings = reference
    assert [r["path"] for r in records if "error" not in r] == paths
    rows = np.array([r["embedding"] for r in records if "error" not in r], np.float32)
    assert np.array_equal(rows, embeddings)  # bit for bit
    names = [os.path.relpath(r["path"], photos) for r in records]
    assert names == sorted(names)  # input order, the failure in its place
    failure = records[names.index(BROKEN)]
    assert failure == {"path": os.path.join(photos, BROKEN), "error": "truncated or corrupt JPEG"}
    assert "-> stdout" in result.stderr and "1 image(s) could not be embedded" in result.stderr


def readme_block(marker: str) -> str:
    with open(os.path.join(REPO, "README.md"), encoding="utf-8") as file:
        text = file.read()
    (block,) = [
        b for b in re.findall(r"```(?:python|console)\n(.*?)```", text, re.S) if marker in b
    ]
    return block


@pytest.fixture
def workdir(photos, tiny_model, tmp_path, monkeypatch) -> str:
    """A folder holding photos/ as the README's recipes expect, with EFX_MODEL set to the tiny
    model (the recipes name no model)."""
    os.symlink(photos, tmp_path / "photos")
    monkeypatch.setenv("EFX_MODEL", tiny_model)
    monkeypatch.setenv("PATH", os.path.dirname(EFX) + os.pathsep + os.environ["PATH"])
    return str(tmp_path)


def test_the_readme_consumer_recipe_reads_the_stream(jsonl, workdir, reference):
    # `efx extract photos/ - | python consumer.py`, with the stream efx wrote (run once).
    with open(os.path.join(workdir, "consumer.py"), "w", encoding="utf-8") as file:
        file.write(readme_block("for line in sys.stdin:"))
    result = subprocess.run(
        ["python", "consumer.py"], input=jsonl.stdout, capture_output=True, text=True,
        cwd=workdir, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stderr.count(f"({len(reference[1][0])},)") == len(reference[0])
    broken = os.path.join(os.path.dirname(reference[0][0]), BROKEN)
    assert f"skipped {broken}: truncated or corrupt JPEG" in result.stderr


def test_the_readme_arrow_recipe_reads_the_same_rows_and_failures(workdir, reference, monkeypatch):
    scope: dict = {}
    monkeypatch.chdir(workdir)
    recipe = readme_block("pyarrow.ipc.open_stream")
    sized = recipe.replace('"arrow"]', '"arrow", "--image-size", "32"]')  # as the reference
    assert sized != recipe
    exec(sized, scope)
    paths, embeddings = reference
    assert np.array_equal(scope["embeddings"], embeddings)  # bit for bit
    table = scope["table"]
    errors = table.column("error").to_pylist()
    assert table.num_rows == len(paths) + 1 and errors.count(None) == len(paths)
    names = [os.path.basename(path) for path in table.column("path").to_pylist()]
    assert errors[names.index(BROKEN)] == "truncated or corrupt JPEG"
    folder = os.path.dirname(paths[0])
    relative = [os.path.join("photos", os.path.relpath(p, folder)) for p in paths]
    assert [os.path.normpath(p) for p in scope["rows"].column("path").to_pylist()] == relative
    assert table.schema.metadata[b"feature_dim"] == str(embeddings.shape[1]).encode()


@pytest.mark.skipif(
    shutil.which("jq") is None, reason="jq is not installed (make test installs it)"
)
def test_the_readme_jq_recipes_read_the_stream(jsonl, photos, reference):
    rows, failures = re.findall(r"\| (jq -[cr] '[^']*')", readme_block("jq -c"))
    found = subprocess.run(["bash", "-c", rows], input=jsonl.stdout, capture_output=True, text=True)
    dims = [json.loads(line)["dims"] for line in found.stdout.splitlines()]
    assert dims.count(len(reference[1][0])) == len(reference[0]) and dims.count(0) == 1
    failed = subprocess.run(
        ["bash", "-c", failures], input=jsonl.stdout, capture_output=True, text=True
    )
    assert failed.stdout == f"{os.path.join(photos, BROKEN)}\ttruncated or corrupt JPEG\n"


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--json"], "--json prints a summary on stdout, where OUTPUT - writes the rows"),
        (["--resume"], "--resume continues an output it reads back: it needs an OUTPUT file"),
        (["--update"], "--update compares with an output it reads back"),
        (["--shard", "0/2"], "--shard writes parts that efx merge reads back"),
        (["--format", "hdf5"], "OUTPUT - is standard output, which takes --format jsonl or arrow"),
    ],
)
def test_what_needs_an_output_file_is_refused_for_stdout(photos, flags, message):
    assert_user_error(run_cli("extract", photos, "-", *flags), message)


def test_a_stream_format_for_a_file_is_refused(photos, tmp_path):
    result = run_cli("extract", photos, str(tmp_path / "o.h5"), "--format", "jsonl")
    assert_user_error(result, "--format jsonl streams to standard output: give - as OUTPUT")


@pytest.fixture(scope="module")
def made(photos, tiny_model, tmp_path_factory) -> str:
    """An output of 12 rows, and its two --shard parts."""
    folder = tmp_path_factory.mktemp("made")
    for index in range(2):
        efx.extract(photos, str(folder / f"part{index}.h5"), model=tiny_model, image_size=SIZE,
                    part=f"{index}/2")  # fmt: skip
    efx.extract(photos, str(folder / "out.h5"), model=tiny_model, image_size=SIZE)
    return str(folder)


@pytest.mark.parametrize(
    "command",
    [
        "efx info {made}/out.h5",
        "efx info {made}/out.h5 --json",
        "efx similar {made}/out.h5 {photos}/c_chelsea.png -k 5 --html {tmp}/page.html",
        "efx duplicates {made}/out.h5 --threshold 0.01 --html {tmp}/page.html",
        "efx merge {made}/part0.h5 {made}/part1.h5 {tmp}/merged.h5 --json",
        "efx merge {made}/part0.h5 {made}/part1.h5 -",
        "efx bench {photos}/c_chelsea.png -m {model} --image-size 32 --rounds 1 "
        "--backend tensorflow",
    ],
)
def test_every_command_piped_into_head_ends_quietly_and_keeps_its_files(
    command, photos, made, tiny_model, tmp_path
):
    line = command.format(photos=photos, model=tiny_model, made=made, tmp=tmp_path)
    result = shell(f"{line} | head -1", cwd=str(tmp_path))
    assert efx_status(result) in (0, 141), result.stderr  # 141: it wrote after head had gone
    assert len(result.stdout.splitlines()) == 1
    for noise in ("Traceback", "Exception ignored", "BrokenPipeError", "Broken pipe"):
        assert noise not in result.stderr, result.stderr
    for asked in re.findall(r"\S+\.(?:html|h5)", line):
        if "/page.html" in asked or "new.h5" in asked or "merged.h5" in asked:
            assert os.path.getsize(asked) > 0, asked  # written whatever happened to stdout
    if "new.h5" in line or "merged.h5" in line:
        assert efx.info(re.findall(r"\S+(?:new|merged)\.h5", line)[0])["complete"]


def test_a_reader_that_stops_stops_the_model_at_the_next_batch(photos, slow_model, tmp_path):
    """`efx extract … - | head -1`: also extract's case of the test above (quiet, one line)."""
    # 120 inputs, one per model call of 0.5 s: a minute if nothing stopped it.
    many = tmp_path / "many"
    many.mkdir()
    for index in range(120):
        shutil.copy(os.path.join(SAMPLES, "chelsea.png"), many / f"{index:02d}.png")
        with open(many / f"{index:02d}.png", "ab") as file:
            file.write(bytes([index]))  # different bytes: each one embedded
    result = shell(
        f"efx extract {many} - -m {slow_model} --image-size 32 -b 1 --backend tensorflow | head -1",
        timeout=40,  # far below the minute of model calls an unstopped run makes
    )
    assert efx_status(result) == 141, result.stderr
    assert len(result.stdout.splitlines()) == 1
    for noise in ("Traceback", "Exception ignored", "BrokenPipeError", "Broken pipe"):
        assert noise not in result.stderr, result.stderr
