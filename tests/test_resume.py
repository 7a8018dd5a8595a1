"""Never lose work: outputs stay readable and truthful through kill -9, Ctrl-C and a full disk;
--resume finishes exactly the uninterrupted output; --shard parts merge into one run's output."""

from __future__ import annotations

import glob
import os
import random
import resource
import shlex
import shutil
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from conftest import EFX, SLOW_CALL_SECONDS, run_cli, sample, write_broken_images
from conftest import run_efx as run

import efx
from efx import writers
from efx.resume import done_prefix, select_part

# One test worker runs them all: their module-scoped fixtures are built once, not on each
# worker (make test runs pytest-xdist with --dist loadgroup).
pytestmark = pytest.mark.xdist_group("resume")

SIZE = 48
# Runs killed at random points per format (at least two land mid-way): scripts/soak_kills.py
# runs the kill tests again and again with more (EFX_TEST_KILLS=5), the suite with a few.
KILLS = int(os.environ.get("EFX_TEST_KILLS", "2"))
OUTPUTS = {"hdf5": "out.h5", "npy": "out", "parquet": "out.parquet"}


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> str:
    """240 real photos (crops of the samples) with broken files among them."""
    root = tmp_path_factory.mktemp("photos")
    sources = [sample(n) for n in ("chelsea.png", "coffee.jpg", "space/astronaut.jpg")]
    rng = random.Random(0)
    for i in range(240):
        image = sources[i % 3]
        left, top = rng.randrange(0, 100), rng.randrange(0, 100)
        crop = image.crop((left, top, left + 200, top + 150))
        crop.save(root / f"img-{i:03d}.jpg", quality=90)
    write_broken_images(str(root / "img-120-broken"))  # sorted into the middle of the run
    return str(root)


def extract_args(photos: str, output: str, model: str, *extra: str) -> list[str]:
    return ["extract", photos, output, "-m", model, "--image-size", str(SIZE), "-b", "2", *extra]


@pytest.fixture(scope="module")
def clean(photos, tiny_model, tmp_path_factory) -> dict[str, str]:
    """One uninterrupted run per format: what every resumed or merged output must equal. Batch
    1, as the killed runs: each image computed alone, so a resumed output equals it bit for bit."""
    folder = tmp_path_factory.mktemp("clean")
    outputs = {}
    for fmt, name in OUTPUTS.items():  # (in this process: the killed runs are the command's)
        outputs[fmt] = str(folder / name)
        efx.extract(
            photos, outputs[fmt], model=tiny_model, image_size=SIZE, batch_size=1, shard_size=40
        )
    return outputs


def assert_same_output(actual: str, expected: str) -> None:
    paths, embeddings = efx.load(actual)
    expected_paths, expected_embeddings = efx.load(expected)
    assert paths == expected_paths
    # Same model, same inputs, same batch size: resumed batches hold other neighbours, which
    # does not change any image's row beyond float rounding.
    np.testing.assert_allclose(embeddings, expected_embeddings, rtol=0, atol=1e-6)
    assert writers.read_failures(actual) == writers.read_failures(expected)
    assert efx.info(actual)["complete"] is True


def rows_in(output: str) -> int:
    try:
        return int(efx.info(output)["count"])
    except efx.EfxError:
        return 0  # not created yet


@pytest.mark.parametrize("fmt", sorted(OUTPUTS))
def test_killed_at_random_points_and_resumed_equals_an_uninterrupted_run(
    fmt, photos, tiny_model, clean, tmp_path
):
    output = str(tmp_path / OUTPUTS[fmt])
    # Batch 1: a commit per image, so that a run lasts long enough to be killed mid-way.
    args = extract_args(photos, output, tiny_model, "--shard-size", "40", "--resume", "-b", "1")
    rng = random.Random(fmt)
    total = len(efx.load(clean[fmt])[0])
    kills = []
    for _attempt in range(KILLS):
        before = rows_in(output)
        process = subprocess.Popen([EFX, *args], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        # Wait for this run to add rows, then kill it a random moment later, mid-write.
        deadline = time.monotonic() + 60
        while rows_in(output) <= before and process.poll() is None:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        time.sleep(rng.uniform(0, 0.1))
        if process.poll() is not None:  # finished before the kill
            assert process.returncode == 0, process.communicate()[1]
            break
        process.send_signal(signal.SIGKILL)
        if process.wait() == 0:
            break  # it finished just before the signal
        # At any instant the output is readable and says truthfully whether it is complete
        # (a kill while the process exits, after the output is finished, leaves it complete).
        info = efx.info(output)
        assert len(efx.load(output)[0]) == info["count"] <= total
        if fmt == "parquet":  # readers of the folder see whole files only: 40 rows each
            parts = sorted(glob.glob(os.path.join(output, "*.parquet")))
            seen = pq.ParquetDataset(parts).read().column("path").to_pylist() if parts else []
            assert seen == efx.load(clean[fmt])[0][: len(seen)] and len(seen) % 40 == 0
        if info["complete"]:
            assert info["count"] == total
            break
        kills.append(info["count"])
    else:
        assert run_cli(*args).exit_code == 0
    print(f"rows committed at each kill: {kills}")
    assert len(kills) >= min(2, KILLS), kills  # the loop really did kill runs mid-way
    assert_same_output(output, clean[fmt])
    np.testing.assert_array_equal(efx.load(output)[1], efx.load(clean[fmt])[1])  # bit for bit


# Parquet's abort is the writers' own check (tests/test_writers.py): the command's signal path
# is the same for every format, and each run here costs ~50 s.
@pytest.mark.parametrize("fmt", ["hdf5", "npy"])
def test_ctrl_c_flushes_marks_incomplete_says_how_to_resume_and_exits_130(
    fmt, photos, tiny_model, clean, tmp_path
):
    output = str(tmp_path / OUTPUTS[fmt])
    # Batch 1: a commit per image keeps the run long enough for the signal to land mid-way (at
    # batch 2 the tiny model's 244 images once finished, 93 images/s, before it arrived).
    args = extract_args(photos, output, tiny_model, "--shard-size", "40", "-b", "1")
    # As in a terminal: a test run started in the background (`make test &`) ignores SIGINT, and
    # a child inherits that, so Ctrl-C's signal would never reach efx.
    process = subprocess.Popen(
        [EFX, *args],
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    while rows_in(output) < 10:
        assert process.poll() is None, process.stderr.read() if process.stderr else ""
        time.sleep(0.02)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=30)
    assert process.returncode == 130, stderr
    assert "Traceback" not in stderr
    info = efx.info(output)
    assert info["complete"] is False and info["count"] >= 10
    command = stderr.strip().splitlines()[-1].strip()
    assert command.startswith("efx extract ") and command.endswith("--resume"), stderr

    resumed = run_cli(*shlex.split(command)[1:])  # (the printed command, in this process)
    assert resumed.exit_code == 0, resumed.stderr
    assert "already done" in resumed.stderr
    assert_same_output(output, clean[fmt])

    again = run(*shlex.split(command)[1:])
    assert (
        again.returncode == 0
        and "already complete" in again.stderr
        and "nothing to do" in again.stderr
    )


def start_slow_run(photos: str, slow_model: str, output: str) -> subprocess.Popen:
    """efx at batch 2 on the slow model, returned once the first batch is committed: from then
    on, for SLOW_CALL_SECONDS, the second batch is inside the model."""
    args = extract_args(photos, output, slow_model, "--backend", "tensorflow")
    process = subprocess.Popen(
        [EFX, *args],
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),  # as in a terminal
    )
    while rows_in(output) < 2:
        assert process.poll() is None, process.stderr.read() if process.stderr else ""
        time.sleep(0.01)
    return process


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_a_signal_stops_the_run_once_the_batch_in_flight_is_written(
    signum, photos, slow_model, tmp_path
):
    output = str(tmp_path / "out.h5")
    process = start_slow_run(photos, slow_model, output)
    time.sleep(SLOW_CALL_SECONDS / 3)  # batch 2 is in the model's call
    process.send_signal(signum)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 130, stderr
    assert "stopping once the batch in flight is written" in stderr
    assert "Traceback" not in stderr and "--resume" in stderr
    # Batch 2 was computed when the signal came: it is kept, and nothing after it was started.
    info = efx.info(output)
    assert info["complete"] is False and info["count"] == 4, (info, stderr)


class Stop(Exception):
    pass


def test_between_batches_a_signal_waits_for_the_commit_and_a_second_one_acts_at_once(capfd):
    from efx.process import SignalsBetweenBatches as _SignalsBetweenBatches

    def stop(signum, frame):
        raise Stop(signum)

    # (A run's main thread sits in the model's native call, where Python runs no handler: two
    # quick signals there arrive as one. This runs the handlers in Python, where they can differ.)
    previous = signal.signal(signal.SIGTERM, stop)
    ignored = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        with _SignalsBetweenBatches() as signals:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.05)  # the handler has run: recorded, not raised
            assert "stopping once the batch in flight is written" in capfd.readouterr().err
            with pytest.raises(Stop):
                signals.deliver()  # the loop's check after the commit
        assert signal.getsignal(signal.SIGTERM) is stop
        with _SignalsBetweenBatches():
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.05)
            with pytest.raises(Stop):
                os.kill(os.getpid(), signal.SIGTERM)  # the second
                time.sleep(0.05)
            os.kill(os.getpid(), signal.SIGINT)  # ignored before: stays ignored
            time.sleep(0.05)
        assert signal.getsignal(signal.SIGTERM) is stop
        with pytest.raises(Stop), _SignalsBetweenBatches():  # after the last batch's check
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.05)
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGTERM, previous)
        signal.signal(signal.SIGINT, ignored)


# Parquet runs out of room in test_a_filesystem_that_fills_up_stops_cleanly_and_resume_finishes.
@pytest.mark.parametrize("fmt", ["hdf5", "npy"])
def test_full_disk_keeps_what_was_written_and_resume_finishes_it(
    fmt, photos, tiny_model, clean, tmp_path
):
    """A file-size limit (RLIMIT_FSIZE) makes writes fail with EFBIG, as a full disk would."""
    output = str(tmp_path / OUTPUTS[fmt])
    args = extract_args(photos, output, tiny_model, "--shard-size", "40")

    # Room for part of the output: HDF5 preallocates a 1 MiB chunk, then grows with the paths;
    # a .npy shard of 40 rows is 2,688 bytes.
    limit = os.path.getsize(clean[fmt]) - 20_000 if fmt == "hdf5" else 2000

    def small_files():
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    full = run(*args, preexec_fn=small_files)
    assert full.returncode == 1, full.stderr
    assert "(disk full?)" in full.stderr and "--resume" in full.stderr
    assert "Traceback" not in full.stderr
    info = efx.info(output)
    assert info["complete"] is False and info["count"] < len(efx.load(clean[fmt])[0])

    resume(photos, output, tiny_model)  # (the command's own resume: the Ctrl-C tests)
    assert_same_output(output, clean[fmt])


def resume(photos: str, output: str, model: str) -> None:
    """The run of `extract_args(photos, output, model, "--shard-size", "40")` resumed, in this
    process."""
    efx.extract(
        photos, output, model=model, image_size=SIZE, batch_size=2, shard_size=40, resume=True
    )


def test_resume_refuses_other_settings_and_says_which(photos, tiny_model, clean, tmp_path):
    output = str(tmp_path / "out.h5")
    shutil.copy(clean["hdf5"], output)
    for flags, difference in [
        (["--resize", "crop"], "resize: 'squash' there, 'crop' here"),
        (["--image-size", "64"], "image_size: 48 there, 64 here"),
        (["--no-exif"], "exif_orientation: True there, False here"),
        (["--shard", "1/2"], "part: '0/1' there, '1/2' here"),
    ]:
        args = ["extract", photos, output, "-m", tiny_model, "--image-size", str(SIZE), *flags]
        result = run(*args, "--resume")
        assert result.returncode == 1, result.stderr
        assert f"cannot resume {output}: it was made with other settings" in result.stderr
        assert difference in result.stderr, result.stderr


def test_resume_refuses_another_model(photos, tiny_model, keras_model, clean, tmp_path):
    output = str(tmp_path / "out")
    shutil.copytree(clean["npy"], output)
    result = run(*extract_args(photos, output, keras_model, "--resume"))
    assert result.returncode == 1 and "model_handle:" in result.stderr, result.stderr


def test_resume_without_an_output_starts_one_and_overwrite_contradicts_it(
    photos, tiny_model, clean, tmp_path
):
    output = str(tmp_path / "new.h5")
    summary = efx.extract(photos, output, model=tiny_model, image_size=SIZE, resume=True)
    assert summary.resumed == 0 and summary.complete
    assert_same_output(output, clean["hdf5"])
    with pytest.raises(efx.EfxError, match="choose one"):
        efx.extract(photos, output, model=tiny_model, resume=True, overwrite=True)


def test_resume_after_new_photos_appear_gives_the_output_of_one_run_over_all(
    photos, tiny_model, tmp_path
):
    """Inputs added in the middle of the sorted order: rows after them are redone."""
    folder = tmp_path / "growing"
    shutil.copytree(photos, folder)
    late = [folder / "img-010.jpg", folder / "img-100.jpg"]
    for path in late:
        path.rename(path.with_suffix(".later"))
    output = str(tmp_path / "out.h5")
    efx.extract(str(folder), output, model=tiny_model, image_size=SIZE)
    with h5_marked_incomplete(output):
        pass
    for path in late:
        path.with_suffix(".later").rename(path)
    summary = efx.extract(str(folder), output, model=tiny_model, image_size=SIZE, resume=True)
    assert summary.resumed == 10  # img-000 .. img-009 kept; everything after is redone
    single = str(tmp_path / "single.h5")
    efx.extract(str(folder), single, model=tiny_model, image_size=SIZE)
    assert_same_output(output, single)


class h5_marked_incomplete:  # noqa: N801 - used as a statement
    """Turn a finished HDF5 output back into an interrupted one."""

    def __init__(self, output: str) -> None:
        import h5py

        with h5py.File(output, "r+") as file:
            file.attrs["complete"] = False

    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


@pytest.fixture(scope="module")
def part_of(photos, tiny_model, tmp_path_factory):
    """`part_of(fmt, index)`: the output of `--shard index/3` over the photos, in format `fmt`,
    made once for the module (a merge only reads its parts)."""
    folder = tmp_path_factory.mktemp("parts")
    made: dict[tuple[str, int], str] = {}

    def part(fmt: str, index: int) -> str:
        if (fmt, index) not in made:
            made[fmt, index] = str(folder / f"part{index}-{OUTPUTS[fmt]}")
            efx.extract(photos, made[fmt, index], model=tiny_model, image_size=SIZE,
                        part=f"{index}/3")  # fmt: skip
        return made[fmt, index]

    return part


@pytest.mark.parametrize(
    ("formats", "merged_fmt"),
    [
        (("hdf5", "npy", "hdf5"), "hdf5"),
        (("hdf5", "npy", "hdf5"), "npy"),
        (("npy", "npy", "npy"), "hdf5"),
        (("npy", "npy", "npy"), "npy"),
        (("parquet", "hdf5", "parquet"), "parquet"),
        (("parquet", "npy", "parquet"), "hdf5"),
    ],
)
def test_parts_merge_into_exactly_one_runs_output(formats, merged_fmt, part_of, clean, tmp_path):
    parts = [part_of(fmt, index) for index, fmt in enumerate(formats)]
    sizes = [len(efx.load(part)[0]) for part in parts]
    assert all(size > 0 for size in sizes)
    merged = str(tmp_path / OUTPUTS[merged_fmt])
    summary = efx.merge(list(reversed(parts)), merged, shard_size=40)  # order does not matter
    assert summary.parts == 3
    assert_same_output(merged, clean[merged_fmt])


def test_merge_refuses_incomplete_overlapping_missing_or_mismatched_parts(
    photos, tiny_model, part_of, tmp_path
):
    parts = {index: str(tmp_path / f"p{index}.h5") for index in range(3)}
    for index, copy in parts.items():  # copies: one is marked unfinished below
        shutil.copy(part_of("hdf5", index), copy)
    out = str(tmp_path / "all.h5")
    with pytest.raises(efx.EfxError, match=r"part\(s\) 2/3 missing"):
        efx.merge([parts[0], parts[1]], out)
    with pytest.raises(efx.EfxError, match="are both part 1/3"):
        efx.merge([parts[0], parts[1], parts[1], parts[2]], out)
    other = str(tmp_path / "other.h5")
    efx.extract(photos, other, model=tiny_model, image_size=SIZE, part="2/3", resize="pad")
    with pytest.raises(efx.EfxError, match="resize: 'squash' there, 'pad' here"):
        efx.merge([parts[0], parts[1], other], out)
    split_in_two = str(tmp_path / "half.h5")
    efx.extract(photos, split_in_two, model=tiny_model, image_size=SIZE, part="1/2")
    with pytest.raises(efx.EfxError, match="split the inputs differently"):
        efx.merge([parts[0], parts[1], parts[2], split_in_two], out)
    with h5_marked_incomplete(parts[2]), pytest.raises(efx.EfxError, match="is unfinished"):
        efx.merge(list(parts.values()), out)
    assert not os.path.exists(out)


def test_merge_command_line(photos, tiny_model, clean, tmp_path):
    for index in range(2):
        efx.extract(
            photos, str(tmp_path / f"p{index}.h5"), model=tiny_model, image_size=SIZE,
            part=f"{index}/2",
        )  # fmt: skip
    result = run("merge", str(tmp_path / "p1.h5"), str(tmp_path / "p0.h5"), str(tmp_path / "m.h5"))
    assert result.returncode == 0 and "merged 2 parts" in result.stderr, result.stderr
    assert_same_output(str(tmp_path / "m.h5"), clean["hdf5"])
    missing = run("merge", str(tmp_path / "p1.h5"), str(tmp_path / "m2.h5"))
    assert missing.returncode == 1 and "efx: part(s) 0/2 missing" in missing.stderr


@pytest.mark.parametrize("bad", ["3/3", "-1/2", "1", "a/b", "1/0"])
def test_shard_must_be_i_of_n(bad, photos, tiny_model, tmp_path):
    with pytest.raises(efx.EfxError, match="--shard must be I/N"):
        efx.extract(photos, str(tmp_path / "o.h5"), model=tiny_model, part=bad)


def test_parts_are_contiguous_blocks_that_add_up_to_the_whole():
    paths = [f"{i}" for i in range(10)]
    parts = [select_part(paths, i, 3) for i in range(3)]
    assert sum(parts, []) == paths and [len(p) for p in parts] == [3, 3, 4]


def test_done_prefix_walks_rows_and_failures_alongside_the_inputs():
    inputs = ["a", "b", "c", "d", "e"]
    assert done_prefix(inputs, ["a", "c"], ["b"]) == (3, 2, 1)
    # "d" embedded but "c"'s failure never recorded (killed in between): redo from "c".
    assert done_prefix(inputs, ["a", "d"], ["b"]) == (2, 1, 1)
    assert done_prefix(inputs, [], []) == (0, 0, 0)
    assert done_prefix(inputs, inputs, []) == (5, 5, 0)


def test_outputs_flush_every_batch_so_a_reader_sees_rows_while_the_run_goes_on(
    photos, tiny_model, tmp_path
):
    output = str(tmp_path / "live.h5")
    process = subprocess.Popen([EFX, *extract_args(photos, output, tiny_model)])
    seen = []
    while process.poll() is None:
        seen.append(rows_in(output))
        time.sleep(0.05)
    assert process.returncode == 0
    assert len({n for n in seen if 0 < n < 240}) >= 2, seen  # rows appeared batch by batch
    assert Path(output).exists()


@pytest.fixture
def small_filesystem(tmp_path):
    """A real 8 MiB filesystem (tmpfs) that fills up, where this machine lets us mount one."""
    mount_point = tmp_path / "small"
    mount_point.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(mount_point)],
        capture_output=True,
    )
    if mounted.returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root); RLIMIT_FSIZE covers the logic")
    yield mount_point
    if subprocess.run(["umount", str(mount_point)]).returncode != 0:
        subprocess.run(["umount", "--lazy", str(mount_point)], check=True)  # none left behind
        pytest.fail(f"a file below {mount_point} is still open")


def files_open_below(folder: str) -> list[str]:
    """The files below `folder` that this process holds open."""
    found = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except FileNotFoundError:  # closed since the listing
            continue
        if target.startswith(folder + os.sep):
            found.append(target)
    return found


@pytest.mark.parametrize("fmt", sorted(OUTPUTS))
def test_a_filesystem_that_fills_up_stops_cleanly_and_resume_finishes(
    fmt, small_filesystem, photos, tiny_model, clean
):
    output = str(small_filesystem / OUTPUTS[fmt])
    # Fill the disk to leave room for the start of the run only. HDF5: efx wants 3 MiB spare
    # before each write, so leave 3 MiB plus the whole output less the last ~12 KiB of paths;
    # .npy: each 40-row shard takes ~5 KiB.
    room = (3 << 20) + os.path.getsize(clean[fmt]) - 12 * 1024 if fmt == "hdf5" else 20 * 1024
    filler = small_filesystem / "filler"
    filler.write_bytes(b"\0" * (shutil.disk_usage(small_filesystem).free - room))
    args = extract_args(photos, output, tiny_model, "--shard-size", "40")
    # The command in this process: the failed run must also let go of the output's files for
    # the resume below (the RLIMIT_FSIZE test above runs the command in a process of its own).
    full = run_cli(*args)
    assert full.exit_code == 1, full.stderr
    assert "No space left on device (disk full?)" in full.stderr, full.stderr
    assert "Traceback" not in full.stderr
    info = efx.info(output)
    assert info["complete"] is False and info["count"] < len(efx.load(clean[fmt])[0])
    # The run let go of every file it opened there (a full disk fails their flushes on close).
    assert files_open_below(str(small_filesystem)) == []
    filler.unlink()
    resume(photos, output, tiny_model)
    assert_same_output(output, clean[fmt])
