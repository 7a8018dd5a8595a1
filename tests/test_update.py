"""--update: an output follows a changing folder of real photos. After every kind of change
(new, edited in place, moved, copied, deleted, a broken file replaced) the updated output must
equal a fresh run over the folder as it is now, and the model must have seen only what changed.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
from conftest import EFX, SLOW_CALL_SECONDS, assert_user_error, no_sleep, run_cli, sample

import efx
from efx import reuse, writers

SIZE = 48
OUTPUTS = {"hdf5": "out.h5", "npy": "out", "parquet": "out.parquet"}
HOUR_NS = 3600 * 10**9


def write_photo(path: str, seed: int) -> None:
    """A real photo (a crop of a sample), different bytes for every seed."""
    rng = random.Random(seed)
    image = sample(("chelsea.png", "coffee.jpg", "space/astronaut.jpg")[seed % 3])
    left, top = rng.randrange(0, 150), rng.randrange(0, 150)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    image.crop((left, top, left + 160, top + 120)).save(path, quality=90)


@pytest.fixture
def tree(tmp_path) -> str:
    """12 photos in three folders, and a broken file; dated an hour ago, as an existing
    library is (an edit made during a test then always has a later mtime)."""
    root = str(tmp_path / "photos")
    for i in range(12):
        write_photo(os.path.join(root, "abc"[i % 3], f"img-{i:02d}.jpg"), i)
    with open(os.path.join(root, "b", "broken.jpg"), "wb") as file:
        file.write(b"\xff\xd8\xff\xe0 this is not a JPEG")
    for folder, _, names in os.walk(root):
        for name in names:
            age_an_hour(os.path.join(folder, name))
    return root


def age_an_hour(path: str) -> None:
    then = time.time_ns() - HOUR_NS
    os.utime(path, ns=(then, then))


def output_in(tmp_path, fmt: str, name: str = "out") -> str:
    return str(tmp_path / {"hdf5": f"{name}.h5", "parquet": f"{name}.parquet"}.get(fmt, name))


def extract(root: str, output: str, model: str, **options) -> efx.Summary:
    return efx.extract(root, output, model=model, image_size=SIZE, batch_size=2, **options)


def assert_equals_fresh_run(output: str, root: str, model: str, tmp_path, fmt: str) -> None:
    """The same rows, order, failures, file facts and (to float rounding) embeddings as one
    fresh run over `root` as it is now; complete."""
    fresh = output_in(tmp_path, fmt, "fresh")
    if os.path.exists(fresh):
        shutil.rmtree(fresh) if os.path.isdir(fresh) else os.remove(fresh)
    with no_sleep(model):
        extract(root, fresh, model)
    paths, rows = efx.load(output)
    fresh_paths, fresh_rows = efx.load(fresh)
    assert paths == fresh_paths
    np.testing.assert_allclose(rows, fresh_rows, rtol=0, atol=1e-6)
    assert writers.read_failures(output) == writers.read_failures(fresh)
    updated, expected = writers.read_state(output, True), writers.read_state(fresh, True)
    assert updated.facts == expected.facts
    assert updated.failed_facts == expected.failed_facts
    assert efx.info(output)["complete"] is True


def kill_once_it_holds(rows: int, output: str, command: list[str]) -> None:
    """Run `command`, and kill -9 it once `output` holds `rows` committed rows."""
    process = subprocess.Popen(command, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while process.poll() is None:
        assert time.monotonic() < deadline
        try:
            if efx.info(output)["count"] >= rows:
                break
        except (efx.EfxError, OSError, KeyError, ValueError):  # not there yet
            pass
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()


def leftovers(output: str) -> list[str]:
    folder = os.path.dirname(output)
    return [n for n in os.listdir(folder) if n.startswith(os.path.basename(output) + ".")]


@pytest.mark.parametrize("fmt", sorted(OUTPUTS))
def test_every_kind_of_change_gives_a_fresh_runs_output_and_the_model_sees_only_what_changed(
    fmt, tree, tiny_model, tmp_path
):
    output = output_in(tmp_path, fmt)
    first = extract(tree, output, tiny_model)
    assert (first.embedded, first.failed, first.computed) == (12, 1, 13)
    write_photo(os.path.join(tree, "a", "000-new.jpg"), 100)  # new, sorted first
    write_photo(os.path.join(tree, "c", "zzz-new.jpg"), 101)  # new, sorted last
    write_photo(os.path.join(tree, "b", "img-04.jpg"), 104)  # edited in place
    shutil.move(os.path.join(tree, "a", "img-03.jpg"), os.path.join(tree, "c", "moved.jpg"))
    shutil.copy2(os.path.join(tree, "b", "img-01.jpg"), os.path.join(tree, "a", "copy.jpg"))
    os.remove(os.path.join(tree, "c", "img-05.jpg"))  # deleted
    os.replace(os.path.join(tree, "a", "img-06.jpg"), os.path.join(tree, "b", "broken.jpg"))
    os.utime(os.path.join(tree, "b", "img-07.jpg"))  # touched: same bytes, newer mtime

    summary = extract(tree, output, tiny_model, update=True)

    # broken.jpg now holds img-06's bytes: a move over a failure (reused, not embedded).
    assert summary.computed == 3 and (summary.new, summary.changed) == (2, 1)
    assert summary.reused == 3  # moved.jpg, copy.jpg, broken.jpg (img-06 moved over it)
    assert summary.kept == 8  # img-07 among them: touched, so hashed, and the same bytes
    assert summary.removed == 1  # img-05 (img-03 and img-06 moved: their rows live on)
    assert (summary.embedded, summary.failed, summary.model_loaded) == (14, 0, True)
    assert_equals_fresh_run(output, tree, tiny_model, tmp_path, fmt)
    assert leftovers(output) == []


def test_nothing_changed_loads_no_model_imports_no_tensorflow_and_touches_nothing(
    tree, tiny_model, tmp_path
):
    output = output_in(tmp_path, "hdf5")
    extract(tree, output, tiny_model)
    before = (os.stat(output).st_mtime_ns, Path(output).read_bytes())
    code = (
        "import efx, json, sys; s = efx.extract(sys.argv[1], sys.argv[2], model=sys.argv[3], "
        "image_size=48, update=True); "
        "print(json.dumps([s.to_dict(), 'tensorflow' in sys.modules]))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, tree, output, tiny_model], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    summary, tensorflow_imported = json.loads(done.stdout)
    assert summary["up_to_date"] and not summary["model_loaded"] and not tensorflow_imported
    assert (summary["kept"], summary["computed"], summary["embedded"]) == (13, 0, 12)
    assert (os.stat(output).st_mtime_ns, Path(output).read_bytes()) == before

    result = run_cli("extract", tree, output, "-m", tiny_model, "--image-size", "48", "--update")
    assert result.exit_code == 0, result.output
    assert "is up to date (12 embedded, 1 failed): nothing changed in 13 inputs" in result.output


@pytest.mark.parametrize("fmt", sorted(OUTPUTS))
def test_moves_and_deletions_alone_need_no_model(fmt, tree, tiny_model, tmp_path):
    output = output_in(tmp_path, fmt)
    extract(tree, output, tiny_model)
    shutil.move(os.path.join(tree, "a"), os.path.join(tree, "renamed"))  # a folder renamed
    os.remove(os.path.join(tree, "b", "img-01.jpg"))
    summary = extract(tree, output, tiny_model, update=True)
    assert not summary.model_loaded and summary.computed == 0
    assert (summary.reused, summary.removed, summary.kept) == (4, 1, 8)
    assert_equals_fresh_run(output, tree, tiny_model, tmp_path, fmt)


def test_checksum_finds_an_edit_that_kept_size_and_mtime(tree, tiny_model, tmp_path):
    """The fast path trusts size + mtime (as rsync does); --checksum reads every file."""
    output = output_in(tmp_path, "hdf5")
    extract(tree, output, tiny_model)
    path = os.path.join(tree, "c", "img-02.jpg")
    stat = os.stat(path)
    with open(path, "r+b") as file:  # one byte of the picture's data changed, in place
        data = bytearray(file.read())
        at = next(i for i in range(len(data) * 2 // 3, len(data)) if data[i] < 0xEF)
        data[at] ^= 0x10
        file.seek(0)
        file.write(data)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # the date put back
    assert (os.stat(path).st_size, os.stat(path).st_mtime_ns) == (stat.st_size, stat.st_mtime_ns)

    trusted = extract(tree, output, tiny_model, update=True)
    assert trusted.up_to_date and trusted.computed == 0  # size and mtime say: unchanged
    checked = extract(tree, output, tiny_model, update=True, checksum=True)
    assert (checked.changed, checked.computed, checked.kept) == (1, 1, 12)
    assert_equals_fresh_run(output, tree, tiny_model, tmp_path, "hdf5")


def test_an_unchanged_failure_is_kept_until_retry_failed_or_the_file_changes(
    tree, tiny_model, tmp_path
):
    output = output_in(tmp_path, "hdf5")
    extract(tree, output, tiny_model)
    write_photo(os.path.join(tree, "a", "new.jpg"), 50)
    kept = extract(tree, output, tiny_model, update=True)
    assert (kept.computed, kept.new, kept.failed) == (1, 1, 1)  # broken.jpg not retried
    retried = extract(tree, output, tiny_model, update=True, retry_failed=True)
    assert (retried.computed, retried.retried, retried.failed) == (1, 1, 1)
    assert writers.read_failures(output) == [
        {"path": os.path.join(tree, "b", "broken.jpg"), "error": "truncated or corrupt JPEG"}
    ]
    write_photo(os.path.join(tree, "b", "broken.jpg"), 51)  # fixed by replacing the file
    fixed = extract(tree, output, tiny_model, update=True)
    assert (fixed.computed, fixed.changed, fixed.failed, fixed.embedded) == (1, 1, 0, 14)
    assert_equals_fresh_run(output, tree, tiny_model, tmp_path, "hdf5")


def test_identical_bytes_are_embedded_once_in_an_ordinary_run(tree, tiny_model, tmp_path):
    for i in range(3):
        shutil.copy(os.path.join(tree, "a", "img-00.jpg"), os.path.join(tree, f"dup-{i}.jpg"))
    shutil.copy(os.path.join(tree, "b", "broken.jpg"), os.path.join(tree, "broken-too.jpg"))
    output = output_in(tmp_path, "hdf5")
    summary = extract(tree, output, tiny_model)
    assert (summary.images, summary.computed, summary.reused) == (17, 13, 4)
    paths, rows = efx.load(output)
    copies = [paths.index(os.path.join(tree, f"dup-{i}.jpg")) for i in range(3)]
    original = paths.index(os.path.join(tree, "a", "img-00.jpg"))
    for row in copies:
        np.testing.assert_array_equal(rows[row], rows[original])
    assert [f["error"] for f in writers.read_failures(output)] == ["truncated or corrupt JPEG"] * 2


# Parquet: the swap-in is the same for every folder format (.npy here), and a killed Parquet run
# resumes in tests/test_resume.py.
@pytest.mark.parametrize("fmt", ["hdf5", "npy"])
def test_killed_update_leaves_output_intact_and_the_rerun_reuses_its_rows(
    fmt, tree, slow_model, tiny_model, tmp_path
):
    output = output_in(tmp_path, fmt)
    args = [tree, output, "-m", slow_model, "--image-size", str(SIZE), "-b", "1", "--backend"]
    args.append("tensorflow")  # the slow model's sleep does not convert to OpenVINO
    with no_sleep(slow_model):
        efx.extract(
            tree, output, model=slow_model, image_size=SIZE, batch_size=1, backend="tensorflow"
        )
    before = efx.load(output)
    for i in range(6):
        write_photo(os.path.join(tree, "c", f"new-{i}.jpg"), 200 + i)
    scratch = output + ".updating-1"
    kill_once_it_holds(14, scratch, [EFX, "extract", *args, "--update", "-q"])  # 2 new rows
    paths, rows = efx.load(output)  # OUTPUT is exactly as it was
    assert paths == before[0]
    np.testing.assert_array_equal(rows, before[1])
    assert os.path.exists(scratch)

    with no_sleep(slow_model):
        done = run_cli("extract", *args, "--update", "--json", "-q")
    assert done.exit_code == 0, done.stderr
    summary = json.loads(done.stdout)
    assert summary["computed"] <= 4 and summary["computed"] + summary["kept"] == 19
    assert leftovers(output) == []
    assert_equals_fresh_run(output, tree, slow_model, tmp_path, fmt)


def test_ctrl_c_during_an_update_says_output_is_as_it_was(tree, slow_model, tmp_path):
    output = output_in(tmp_path, "hdf5")
    args = [tree, output, "-m", slow_model, "--image-size", str(SIZE), "-b", "1", "--backend"]
    args.append("tensorflow")
    with no_sleep(slow_model):
        efx.extract(
            tree, output, model=slow_model, image_size=SIZE, batch_size=1, backend="tensorflow"
        )
    for i in range(4):
        write_photo(os.path.join(tree, "c", f"new-{i}.jpg"), 300 + i)
    update = subprocess.Popen(
        [EFX, "extract", *args, "--update", "-q"],
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),  # as in a terminal
    )  # (a suite started in the background inherits SIGINT ignored: then Ctrl-C is too)
    scratch = output + ".updating-1"
    deadline = time.monotonic() + 60
    while not os.path.exists(scratch):
        assert time.monotonic() < deadline and update.poll() is None
        time.sleep(0.05)
    time.sleep(2 * SLOW_CALL_SECONDS)
    update.send_signal(signal.SIGINT)
    _, stderr = update.communicate(timeout=60)
    assert update.returncode == 130, stderr
    assert f"{output} is as it was; what was computed is kept in {scratch}" in stderr
    assert "--update" in stderr.splitlines()[-1] and "--resume" not in stderr
    assert len(efx.load(output)[0]) == 12 and not any("new-" in p for p in efx.load(output)[0])


def test_update_refuses_other_settings_and_combinations_and_starts_a_missing_output(
    tree, tiny_model, tmp_path
):
    output = output_in(tmp_path, "hdf5")
    started = extract(tree, output, tiny_model, update=True)  # no OUTPUT yet: a first run
    assert (started.new, started.computed, started.embedded) == (13, 13, 12)
    result = run_cli("extract", tree, output, "-m", tiny_model, "--image-size", "64", "--update")
    assert_user_error(result, "cannot update")
    assert "image_size: 48 there, 64 here" in result.output
    result = run_cli("extract", tree, output, "-m", tiny_model, "--update", "--overwrite")
    assert_user_error(result, "cannot be combined with --overwrite")
    result = run_cli("extract", tree, output, "-m", tiny_model, "--retry-failed")
    assert_user_error(result, "--retry-failed is for --update")


@pytest.mark.parametrize("fmt", ["hdf5", "npy"])  # Parquet outputs record facts from the start
def test_an_output_of_efx_0_3_is_updated_by_reading_files_once(fmt, tree, tiny_model, tmp_path):
    output = output_in(tmp_path, fmt)
    extract(tree, output, tiny_model)
    strip_file_facts(output, fmt)  # as efx 0.3 wrote it
    assert efx.info(output)["file_facts"] is False
    write_photo(os.path.join(tree, "a", "img-00.jpg"), 400)  # edited since: a newer mtime
    notes: list[str] = []
    summary = efx.extract(
        tree, output, model=tiny_model, image_size=SIZE, batch_size=2, update=True,
        on_note=notes.append,
    )  # fmt: skip
    assert any("did not record each file's size, date and checksum" in n for n in notes)
    # Rows of files not modified since the output was created are kept; the edited one and
    # the failure (no record of its bytes) are done again.
    assert (summary.kept, summary.changed, summary.computed) == (11, 2, 2)
    assert efx.info(output)["file_facts"] is True
    assert_equals_fresh_run(output, tree, tiny_model, tmp_path, fmt)


def strip_file_facts(output: str, fmt: str) -> None:
    if fmt == "hdf5":
        with h5py.File(output, "r+") as file:
            for group in (file, file["failures"]):
                for name in ("file_sizes", "file_mtimes_ns", "file_sha256"):
                    del group[name]
            file.attrs["efx_version"] = "0.3.0"
        return
    with open(os.path.join(output, "manifest.json")) as file:
        manifest = json.load(file)
    for shard in manifest["shards"]:
        os.remove(os.path.join(output, shard.pop("files")))
    manifest["efx_version"] = "0.3.0"
    with open(os.path.join(output, "manifest.json"), "w") as file:
        json.dump(manifest, file)
    with open(os.path.join(output, "failures.jsonl")) as file:
        failures = [json.loads(line) for line in file]
    with open(os.path.join(output, "failures.jsonl"), "w") as file:
        for failure in failures:
            file.write(json.dumps({"path": failure["path"], "error": failure["error"]}) + "\n")


def test_shard_parts_update_independently_and_still_merge(tree, tiny_model, tmp_path):
    parts = [str(tmp_path / f"part-{i}.h5") for i in range(2)]
    for i, part in enumerate(parts):
        extract(tree, part, tiny_model, part=f"{i}/2")
    write_photo(os.path.join(tree, "a", "000-new.jpg"), 500)  # shifts the parts' boundary
    os.remove(os.path.join(tree, "c", "img-11.jpg"))
    for i, part in enumerate(parts):
        summary = extract(tree, part, tiny_model, part=f"{i}/2", update=True)
        assert summary.computed <= 2  # the new file, and one that crossed the boundary
    merged = str(tmp_path / "merged.h5")
    efx.merge(parts, merged)
    assert_equals_fresh_run(merged, tree, tiny_model, tmp_path, "hdf5")


def test_update_with_the_tensorflow_backend_and_through_the_command_line(
    tree, tiny_model, tmp_path
):
    output = output_in(tmp_path, "npy")
    base = ["extract", tree, output, "-m", tiny_model, "--image-size", "48", "--backend"]
    assert run_cli(*base, "tensorflow").exit_code == 0
    write_photo(os.path.join(tree, "b", "new.jpg"), 600)
    result = run_cli(*base, "tensorflow", "--update", "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert (summary["backend"], summary["computed"], summary["kept"]) == ("tensorflow", 1, 13)
    assert "updated: 13 kept, 1 embedded (1 new, 0 changed)" in result.stderr
    assert_equals_fresh_run(output, tree, tiny_model, tmp_path, "npy")


def test_update_continues_a_killed_run_and_keeps_every_row_it_wrote(tree, slow_model, tmp_path):
    """Unlike --resume, which keeps the longest prefix, --update keeps every row: a new photo
    sorted first costs one embedding, not a rerun of everything after it."""
    output = output_in(tmp_path, "hdf5")
    args = [tree, output, "-m", slow_model, "--image-size", str(SIZE), "-b", "1", "--backend"]
    args.append("tensorflow")
    kill_once_it_holds(4, output, [EFX, "extract", *args, "-q"])
    done = efx.info(output)["count"] + efx.info(output)["failed"]
    assert 4 <= done < 13
    write_photo(os.path.join(tree, "000-new.jpg"), 700)  # sorted before everything
    with no_sleep(slow_model):
        result = run_cli("extract", *args, "--update", "--json", "-q")
    assert result.exit_code == 0, result.stderr
    summary = json.loads(result.stdout)
    assert (summary["kept"], summary["computed"]) == (done, 14 - done)
    assert_equals_fresh_run(output, tree, slow_model, tmp_path, "hdf5")


@pytest.mark.parametrize("exchange", [True, False], ids=["renameat2", "two-renames"])
def test_swap_in_replaces_a_folder_or_file_and_leaves_nothing_behind(
    exchange, tmp_path, monkeypatch
):
    from efx import files

    if not exchange:  # as on a filesystem or OS without RENAME_EXCHANGE
        monkeypatch.setattr(files, "_exchange", lambda first, second: False)
    old, new = tmp_path / "out", tmp_path / "out.updating-1"
    old.mkdir()
    (old / "manifest.json").write_text("old")
    new.mkdir()
    (new / "manifest.json").write_text("new")
    files.swap_in(str(new), str(old))
    assert (old / "manifest.json").read_text() == "new"
    assert sorted(os.listdir(tmp_path)) == ["out"]
    (tmp_path / "a.h5").write_text("old")
    (tmp_path / "a.h5.updating-3").write_text("new")
    files.swap_in(str(tmp_path / "a.h5.updating-3"), str(tmp_path / "a.h5"))
    assert (tmp_path / "a.h5").read_text() == "new" and not (tmp_path / "a.h5.updating-3").exists()


def test_leftovers_are_numbered_and_new_work_takes_the_next_number(tmp_path):
    from efx import reuse

    output = str(tmp_path / "out")
    for name in ("out.updating-2", "out.updating-10", "out.updating-9.old", "out.updatingx"):
        (tmp_path / name).mkdir()
    assert [os.path.basename(p) for p in reuse.leftovers(output + "/")] == [
        "out.updating-2",
        "out.updating-10",
    ]
    assert reuse.scratch_name(output + "/") == output + ".updating-11"
    reuse.remove_leftovers(output)
    assert sorted(os.listdir(tmp_path)) == ["out.updatingx"]


def test_a_file_that_changes_while_it_is_embedded_is_stored_without_its_hash(tree):
    """Its hash was taken before the model read it: the row may be of other bytes, so the row
    keeps no hash and the next update embeds the file again."""
    from efx import reuse
    from efx.inputs import loose
    from efx.run.loop import Step

    paths = [os.path.join(tree, "a", "img-00.jpg"), os.path.join(tree, "a", "img-03.jpg")]
    inputs = [loose(path) for path in paths]
    work = reuse.plan(inputs, [], unstorable={})
    assert [f.sha256 != "" for f in work.facts] == [True, True]
    write_photo(paths[1], 900)  # changed after it was hashed, before its row is written
    stored = Step(inputs, work, 0, 2, None).facts(np.arange(2))
    assert stored[0] == work.facts[0]
    assert stored[1].sha256 == "" and stored[1].size == work.facts[1].size


def test_a_second_update_of_the_same_output_is_refused_while_one_runs(tree, tiny_model, tmp_path):
    from efx import files

    output = output_in(tmp_path, "hdf5")
    extract(tree, output, tiny_model)
    with files.held_exclusively(output + ".updating.lock", "held"):  # as a running update does
        result = run_cli(
            "extract", tree, output, "-m", tiny_model, "--image-size", "48", "--update"
        )
        assert_user_error(result, f"another efx --update of {output} is running")
    assert extract(tree, output, tiny_model, update=True).up_to_date
    assert leftovers(output) == []  # the lock file goes with the update


def test_a_move_that_keeps_the_row_order_is_still_a_change(tree, tiny_model, tmp_path):
    """c/ renamed d/: every row in the same place, same bytes and dates, only the paths differ.
    (Once taken for "up to date", leaving the old paths in OUTPUT.)"""
    output = output_in(tmp_path, "npy")
    extract(tree, output, tiny_model)
    os.rename(os.path.join(tree, "c"), os.path.join(tree, "d"))
    summary = extract(tree, output, tiny_model, update=True)
    assert not summary.up_to_date and not summary.model_loaded
    assert (summary.reused, summary.kept, summary.computed) == (4, 9, 0)
    assert_equals_fresh_run(output, tree, tiny_model, tmp_path, "npy")


@pytest.mark.parametrize("fmt", sorted(OUTPUTS))
def test_a_touch_records_the_new_dates_in_place_without_rewriting_the_rows(
    fmt, tree, tiny_model, tmp_path
):
    output = output_in(tmp_path, fmt)
    efx.extract(tree, output, model=tiny_model, image_size=SIZE)
    before = efx.load(output)
    # Parquet files cannot be changed in place: a part whose facts changed is rewritten.
    rows_file = {"hdf5": output, "npy": os.path.join(output, "embeddings-00000.npy")}.get(fmt)
    inode = os.stat(rows_file).st_ino if rows_file else None
    touched = [os.path.join(tree, "a", "img-00.jpg"), os.path.join(tree, "b", "broken.jpg")]
    for path in touched:
        os.utime(path)  # the same bytes, a new date (touch, a restore, a sync tool)
    summary = efx.extract(tree, output, model=tiny_model, image_size=SIZE, update=True)
    assert (summary.kept, summary.computed, summary.model_loaded) == (13, 0, False)
    assert not summary.up_to_date  # the output changed: its dates
    if rows_file:
        assert os.stat(rows_file).st_ino == inode  # rows not copied: the same file, in place
    assert reuse.leftovers(output, old=True) == []
    after = efx.load(output)
    assert after[0] == before[0] and np.array_equal(after[1], before[1])
    state = writers.read_state(output, facts=True)
    names = state.paths + state.failed
    dated = dict(zip(names, state.facts + state.failed_facts, strict=True))
    for path in touched:
        assert dated[path].mtime_ns == os.stat(path).st_mtime_ns and dated[path].sha256
    assert efx.info(output)["complete"] and "updated" in efx.info(output)
    again = efx.extract(tree, output, model=tiny_model, image_size=SIZE, update=True)
    assert again.up_to_date  # the recorded dates are the files' dates now


def test_an_update_keeps_the_outputs_own_shard_size_unless_asked(tree, tiny_model, tmp_path):
    output = output_in(tmp_path, "npy")
    efx.extract(tree, output, model=tiny_model, image_size=SIZE, shard_size=4)
    write_photo(os.path.join(tree, "c", "new.jpg"), 99)
    efx.extract(tree, output, model=tiny_model, image_size=SIZE, update=True)
    with open(os.path.join(output, "manifest.json")) as file:
        manifest = json.load(file)
    assert manifest["shard_size"] == 4
    assert [s["rows"] for s in manifest["shards"]] == [4, 4, 4, 1]  # 13 rows, one failure
    write_photo(os.path.join(tree, "c", "newer.jpg"), 98)
    efx.extract(tree, output, model=tiny_model, image_size=SIZE, update=True, shard_size=10)
    with open(os.path.join(output, "manifest.json")) as file:
        assert [s["rows"] for s in json.load(file)["shards"]] == [10, 4]
