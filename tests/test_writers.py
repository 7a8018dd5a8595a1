"""Every writer through the same checks: rows in order, failures, metadata, completeness."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import numpy as np
import pytest

import efx
from efx import writers
from efx.facts import UNKNOWN, Facts

ATTRS = {
    "model": "m",
    "image_size": 8,
    "feature_dim": 5,
    "efx_version": "0",
    "created": "now",
    "tensorflow_version": "x",
}
OUTPUTS = {"hdf5": "out.h5", "npy": "out", "parquet": "out.parquet"}


@pytest.fixture(params=sorted(writers.FILE_FORMATS))  # streams: tests/test_stream.py
def fmt(request):
    return request.param


def rows(start: int, count: int) -> tuple[list[str], np.ndarray]:
    paths = [f"dir/ü {i}.jpg" for i in range(start, start + count)]
    embeddings = np.arange(start * 5, (start + count) * 5, dtype=np.float32).reshape(count, 5)
    return paths, embeddings


def test_rows_failures_and_metadata_round_trip(fmt, tmp_path):
    output = str(tmp_path / OUTPUTS[fmt])
    options = {"shard_size": 3} if fmt != "hdf5" else {}
    writer = writers.open_writer(fmt, output, ATTRS, **options)
    for start, count in [(0, 2), (2, 4), (6, 1)]:
        writer.write(*rows(start, count))
    writer.fail("bad.jpg", "empty file")
    writer.close()

    paths, embeddings = writers.read(output)
    expected_paths, expected = rows(0, 7)
    assert paths == expected_paths
    np.testing.assert_array_equal(embeddings, expected)
    np.testing.assert_array_equal(writers.rows(output, [5, 0, 5, 3]), expected[[5, 0, 5, 3]])
    info = efx.info(output)
    assert info["format"] == fmt
    assert (info["count"], info["feature_dim"], info["dtype"]) == (7, 5, "float32")
    assert info["complete"] is True
    assert info["model"] == "m" and info["image_size"] == 8 and info["created"] == "now"
    assert info["failed"] == 1
    assert info["failures"] == [{"path": "bad.jpg", "error": "empty file"}]


def facts_of(start: int, count: int) -> list[Facts]:
    return [Facts(100 + i, 10**18 + i, f"{i:064x}") for i in range(start, start + count)]


def test_file_facts_round_trip_through_writes_failures_and_resume(fmt, tmp_path):
    """Each row and failure keeps its file's size, mtime and SHA-256 (what --update compares),
    also across a --resume that cuts a batch short; an output's RowReader takes chosen rows."""
    output = str(tmp_path / OUTPUTS[fmt])
    options = {"shard_size": 3} if fmt != "hdf5" else {}
    writer = writers.open_writer(fmt, output, ATTRS, **options)
    writer.write(*rows(0, 4), facts_of(0, 4))
    writer.fail("bad.jpg", "empty file", Facts(0, 5, ""))
    writer.abort()
    writer = writers.open_writer(fmt, output, ATTRS, keep=(2, 1), **options)  # --resume
    writer.write(*rows(2, 3), facts_of(2, 3))
    writer.close()

    state = writers.read_state(output, facts=True)
    assert state.paths == rows(0, 5)[0] and state.has_facts
    assert state.facts == facts_of(0, 5)
    assert state.failed_facts == [Facts(0, 5, "")] and state.reasons == ["empty file"]
    assert efx.info(output)["failures"] == [{"path": "bad.jpg", "error": "empty file"}]
    reader = writers.open_rows(output)
    np.testing.assert_array_equal(reader.take(np.array([4, 0, 4, 2])), rows(0, 5)[1][[4, 0, 4, 2]])
    np.testing.assert_array_equal(reader.take(np.array([0, 4])), rows(0, 5)[1][[0, 4]])
    reader.close()


def test_aborted_output_is_readable_and_marked_incomplete(fmt, tmp_path):
    output = str(tmp_path / OUTPUTS[fmt])
    writer = writers.open_writer(fmt, output, ATTRS)
    writer.write(*rows(0, 3))
    writer.abort()
    assert efx.info(output)["complete"] is False
    assert writers.read(output)[0] == rows(0, 3)[0]


def test_empty_output_reads_as_zero_rows(fmt, tmp_path):
    output = str(tmp_path / OUTPUTS[fmt])
    writers.open_writer(fmt, output, ATTRS).close()
    paths, embeddings = writers.read(output)
    assert paths == [] and embeddings.shape == (0, 5)


def test_path_with_a_newline_is_rejected_only_where_it_cannot_be_stored():
    assert writers.unstorable("npy", "a\nb.jpg") is not None
    assert writers.unstorable("hdf5", "a\nb.jpg") is None
    assert writers.unstorable("parquet", "a\nb.jpg") is None
    assert writers.unstorable("npy", "a b.jpg") is None
    not_utf8 = b"caf\xe9.jpg".decode("utf-8", "surrogateescape")  # how Python names such a file
    assert writers.unstorable("parquet", not_utf8) is not None
    assert writers.unstorable("hdf5", not_utf8) is None


def test_the_options_formats_are_the_writers():
    from efx.config import FORMATS  # what --format offers, without importing the writers

    assert sorted(FORMATS) == sorted(writers.FORMATS)


def test_format_is_guessed_from_the_output_name():
    assert writers.format_for("x.h5") == "hdf5"
    assert writers.format_for("x.HDF5") == "hdf5"
    assert writers.format_for("shards/") == "npy"
    assert writers.format_for("x.h5", "npy") == "npy"
    assert writers.format_for("x.parquet") == "parquet"
    assert writers.format_for("x.parquet/") == "parquet"
    assert writers.format_for("x", "parquet") == "parquet"


# How long each round of the reader test reads while the writer appends: scripts/soak_kills.py
# reads longer (EFX_TEST_READ_SECONDS), the suite for a second.
READ_SECONDS = float(os.environ.get("EFX_TEST_READ_SECONDS", "1"))

# A writer in its own process: appends one row (and every third time a failure) per flush,
# as a run does at batch 1, until killed. argv: format, output, "rows,failures" to keep or "new".
WRITER = """
import sys, numpy as np
from efx import writers
from efx.facts import UNKNOWN, Facts
fmt, output, keep = sys.argv[1:4]
options = {"shard_size": 7} if fmt != "hdf5" else {}
if keep != "new":
    options["keep"] = tuple(map(int, keep.split(",")))
writer = writers.open_writer(fmt, output, {"model": "m", "feature_dim": 5}, **options)
print("open", flush=True)
i = 0
while True:
    writer.write([f"dir/image-{i:06d}.jpg"], np.full((1, 5), i, np.float32))
    if i % 3 == 0:
        writer.fail(f"dir/broken-{i:06d}.jpg", "truncated or corrupt JPEG" + "!" * (i % 40))
    writer.flush(sync=False)
    i += 1
"""


def test_a_reader_sees_a_valid_output_while_runs_append_are_killed_and_resume(fmt, tmp_path):
    """What `efx info` and `--resume` do during and between runs: every read succeeds and is a
    consistent prefix. (HDF5 once failed here with "len not positive after adjustment for EOA"
    when a resumed writer had placed data past the end the reader saw at open.)"""
    output = str(tmp_path / OUTPUTS[fmt])
    keep, reads, last = "new", 0, (0, 0)
    for _round in range(4):
        process = subprocess.Popen(
            [sys.executable, "-c", WRITER, fmt, output, keep], stdout=subprocess.PIPE, text=True
        )
        assert process.stdout is not None and process.stdout.readline() == "open\n"
        deadline = time.monotonic() + READ_SECONDS
        while time.monotonic() < deadline:
            info = efx.info(output)
            paths, embeddings = writers.read(output)
            failures = writers.read_failures(output)
            count, failed = info["count"], info["failed"]
            assert len(paths) >= count and len(failures) >= failed  # read a moment later
            assert count >= last[0] and failed >= last[1]
            assert embeddings[:, 0].tolist() == [float(p[-10:-4]) for p in paths]
            last, reads = (count, failed), reads + 1
        process.kill()
        process.wait()
        info = efx.info(output)
        keep = f"{info['count']},{info['failed']}"
    print(f"reads: {reads}, rows: {last[0]}")
    assert reads > 20 and last[0] > 20


def test_hdf5_texts_are_fixed_width_and_resume_widens_them_for_a_longer_path(tmp_path):
    import h5py

    output = str(tmp_path / "out.h5")
    writer = writers.open_writer("hdf5", output, ATTRS)  # paths fields 256 bytes wide
    writer.write(*rows(0, 3))
    writer.fail("bad.jpg", "empty file")
    writer.abort()
    longer = "dir/" + "ü" * 300 + ".jpg"  # 608 bytes in UTF-8
    writer = writers.open_writer("hdf5", output, ATTRS, keep=(3, 1), inputs=[longer])
    writer.write([longer], rows(3, 1)[1])
    writer.fail(longer, "x" * 2000)  # a reason longer than its field is cut, not refused
    writer.close()

    paths, embeddings = writers.read(output)
    assert paths == rows(0, 3)[0] + [longer]
    np.testing.assert_array_equal(embeddings, rows(0, 4)[1])
    failures = writers.read_failures(output)
    assert failures[0] == {"path": "bad.jpg", "error": "empty file"}
    assert failures[1]["path"] == longer and failures[1]["error"].endswith("...")
    with h5py.File(output) as file:  # plain h5py reads them as strings
        assert [
            h5py.check_string_dtype(file[n].dtype).length for n in ("paths", "failures/paths")
        ] == [608, 608]
        assert list(file["paths"].asstr()[:]) == paths
        assert file.attrs["complete"]
    assert not os.path.exists(output + ".widening")


def test_hdf5_resume_of_an_output_with_variable_length_texts_rewrites_them_fixed(tmp_path):
    """Outputs of efx before 0.2 stored variable-length strings, unsafe under SWMR."""
    import h5py

    output = str(tmp_path / "old.h5")
    text = h5py.string_dtype("utf-8")
    with h5py.File(output, "w", libver="latest") as file:
        file.create_dataset("embeddings", data=rows(0, 2)[1], maxshape=(None, 5), chunks=(64, 5))
        file.create_dataset("paths", data=rows(0, 2)[0], dtype=text, maxshape=(None,), chunks=(64,))
        for name, value in (("paths", "bad.jpg"), ("errors", "empty file")):
            file.create_dataset(
                f"failures/{name}", data=[value], dtype=text, maxshape=(None,), chunks=(64,)
            )
        file.attrs.update({**ATTRS, "complete": False})
    writer = writers.open_writer("hdf5", output, ATTRS, keep=(2, 1))
    writer.write(*rows(2, 2), facts_of(2, 2))
    writer.close()
    assert writers.read(output)[0] == rows(0, 4)[0]
    state = writers.read_state(output, facts=True)  # facts: unknown for the old rows only
    assert state.facts == [UNKNOWN, UNKNOWN, *facts_of(2, 2)]
    assert state.failed_facts == [UNKNOWN]
    assert writers.read_failures(output) == [{"path": "bad.jpg", "error": "empty file"}]
    with h5py.File(output) as file:
        assert h5py.check_string_dtype(file["paths"].dtype).length == 256
        assert file.attrs["created"] == "now"


def test_superblock_checksum_and_crash_flags_match_what_hdf5_itself_writes(tmp_path):
    """`superblock` against files HDF5 wrote: the checksum of a fresh file, and a file whose
    SWMR writer was killed, which HDF5 refuses to reopen until its flags are cleared."""
    import h5py

    from efx.writers import superblock

    killed = str(tmp_path / "killed.h5")
    code = (
        "import os, sys, h5py\n"
        "f = h5py.File(sys.argv[1], 'w', libver='latest')\n"
        "f.create_dataset('x', shape=(0,), maxshape=(None,), dtype='f4', chunks=(16,))\n"
        "f.swmr_mode = True\n"
        "f['x'].resize((3,)); f['x'][:] = [1, 2, 3]; f.flush()\n"
        "os._exit(0)  # as kill -9: no close\n"
    )
    subprocess.run([sys.executable, "-c", code, killed], check=True, timeout=60)
    with open(killed, "rb") as file:
        block = file.read(48)
    assert superblock.checksum_ok(block)  # lookup3 agrees with HDF5's own checksum
    assert block[11] != 0  # HDF5 left its "open for writing" flags
    with pytest.raises(OSError, match="consistency flags"):
        h5py.File(killed, "r+")
    superblock.clear_crash_flags(killed)
    with h5py.File(killed, "r+") as file:  # HDF5 verifies the rewritten checksum on open
        assert file["x"][:].tolist() == [1.0, 2.0, 3.0]
    with open(killed, "r+b") as file:
        file.seek(40)
        file.write(b"\x01\x02\x03\x04")
    with pytest.raises(efx.EfxError, match="superblock is damaged"):
        superblock.clear_crash_flags(killed)


def test_hdf5_being_extended_is_read_but_a_truncated_finished_file_is_refused(tmp_path):
    """While a SWMR writer extends the file, its superblock can record an end past the bytes
    on disk for a moment: plain HDF5 says "truncated file" (seen by `efx info` during a run).
    With the writer's flags set that is a file being written, read in SWMR mode; without
    them, a damaged file."""
    from efx.writers import superblock

    output = str(tmp_path / "out.h5")
    writer = writers.open_writer("hdf5", output, ATTRS)
    writer.write(*rows(0, 3), facts_of(0, 3))
    writer.close()
    with open(output, "r+b") as file:  # the superblock as a writer mid-extension leaves it
        block = bytearray(file.read(48))
        block[11] = 0x05  # opened for writing, in SWMR mode
        end = int.from_bytes(block[28:36], "little")
        block[28:36] = (end + 4096).to_bytes(8, "little")
        block[44:48] = superblock.lookup3(bytes(block[:44])).to_bytes(4, "little")
        file.seek(0)
        file.write(block)
    assert superblock.held_open(output)
    assert efx.info(output)["count"] == 3 and writers.read(output)[0] == rows(0, 3)[0]

    finished = str(tmp_path / "finished.h5")
    writer = writers.open_writer("hdf5", finished, ATTRS)
    writer.write(*rows(0, 3))
    writer.close()
    os.truncate(finished, os.path.getsize(finished) - 100)
    with pytest.raises(efx.EfxError, match="truncated file"):
        efx.info(finished)
