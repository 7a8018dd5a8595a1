"""HDF5 output: `embeddings` (N, D) float32, `paths` (N,) UTF-8, `failures/{paths,errors}`, and
what efx saw of each file (`file_sizes`, `file_mtimes_ns`, `file_sha256`, for rows and failures)."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import re
import resource
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, TypeVar

import h5py
import numpy as np

from .. import files
from ..errors import EfxError
from ..facts import UNKNOWN, Facts
from . import superblock

_CHUNK_BYTES = 1 << 20  # ~1 MiB chunks: cheap appends, and reading a few rows stays cheap

# Texts are fixed-length UTF-8 fields, not variable-length strings: HDF5 keeps variable-length
# data in a "global heap" that SWMR's write ordering does not cover, so a reader during a run, or
# after a kill, could find a path that points at heap bytes never written (h5py issue #1273;
# seen here as "len not positive after adjustment for EOA" and as a reader spinning forever).
MIN_PATH_BYTES = 256  # paths fields are at least this wide: room for paths added before --resume
REASON_BYTES = 512  # failure reasons are short sentences; a longer one is cut
# Per row (and per failure, in `failures/`): the file's facts, as efx saw it (efx.facts).
FACTS = ("file_sizes", "file_mtimes_ns", "file_sha256")
_FACT_TYPES = ("int64", "int64", h5py.string_dtype("ascii", 64))


def _path_bytes(paths: Sequence[str]) -> int:
    """The width of the paths fields that holds every one of `paths` (all inputs are known
    before a run, so the fields are set wide enough once)."""
    return max([MIN_PATH_BYTES, *(len(p.encode("utf-8", "surrogateescape")) for p in paths)])


def _text(width: int) -> np.dtype:
    return h5py.string_dtype("utf-8", width)


def is_hdf5(path: str) -> bool:
    return bool(h5py.is_hdf5(path))


def check_target(output: str, overwrite: bool) -> None:
    if os.path.isdir(output):
        raise EfxError(f"OUTPUT {output} is a folder; an HDF5 output must be a file path")
    if os.path.exists(output) and not overwrite:
        raise EfxError(f"OUTPUT {output} already exists; pass --overwrite to replace it")


def unstorable(path: str) -> str | None:
    """HDF5 stores any path."""
    return None


def _encode(texts: list[str], dataset: h5py.Dataset) -> np.ndarray:
    """`texts` as the dataset's fixed-length field (surrogateescape round-trips paths that are
    not valid UTF-8 byte for byte); a field too narrow is a bug: widths are set from the inputs."""
    encoded = [text.encode("utf-8", "surrogateescape") for text in texts]
    width = _width(dataset)
    if width is not None:
        too_long = [text for text, data in zip(texts, encoded, strict=True) if len(data) > width]
        if too_long:
            raise ValueError(f"{too_long[0]!r} is wider than {dataset.name}'s {width} bytes")
    return np.array(encoded, dtype=dataset.dtype)  # the dtype carries HDF5's UTF-8 marking


def _width(dataset: h5py.Dataset) -> int | None:
    """The byte width of a text dataset; None for a variable-length one (efx before 0.2)."""
    info = h5py.check_string_dtype(dataset.dtype)
    return None if info is None or info.length is None else int(info.length)


def _reason(text: str) -> str:
    data = text.encode("utf-8", "surrogateescape")
    if len(data) <= REASON_BYTES:
        return text
    return data[: REASON_BYTES - 3].decode("utf-8", "ignore") + "..."


def _append(dataset: h5py.Dataset, rows: Any) -> None:
    if len(rows) == 0:
        return
    start = dataset.shape[0]
    dataset.resize(start + len(rows), axis=0)
    dataset[start:] = rows


@contextlib.contextmanager
def _as_os_error() -> Iterator[None]:
    """h5py reports failed writes (disk full, EFBIG) as RuntimeError; efx expects OSError."""
    try:
        yield
    except (RuntimeError, OSError) as error:
        global _write_failed
        _write_failed = True
        found = re.search(r"error message = '([^']*)'", str(error))
        raise OSError(found.group(1) if found else str(error).splitlines()[0]) from error


def write_failed() -> bool:
    """Whether a write failed in this process. The HDF5 library then retries the flush when the
    process exits and can segfault (HDF5 1.14, h5py 3.14): the `efx` command leaves without
    native teardown (cli.run); a library caller may do the same when this is true."""
    return _write_failed


_write_failed = False


class Hdf5Writer:
    """Appends rows to an HDF5 file in SWMR mode, so that the file on disk is valid at every
    instant (kill -9 and power loss included): HDF5 then orders its metadata writes so that
    no pointer on disk ever leads to unwritten data. Rows reach the file at each `flush`.

    With `keep=(rows, failures)` it reopens an interrupted output and continues after that
    many rows and failures (`--resume`), dropping anything past them.
    """

    def __init__(
        self,
        output: str,
        attrs: dict[str, Any],
        *,
        inputs: Sequence[str] = (),
        shard_size: int = 0,  # npy's; an HDF5 file is one piece
        keep: tuple[int, int] | None = None,
    ) -> None:
        self._output = output
        path_bytes = _path_bytes(inputs)
        with _as_os_error():
            if keep is None:
                self._file = _when_unlocked(output, lambda: _create(output, attrs, path_bytes))
            else:
                _widen_if_needed(output, keep, path_bytes)
                self._file = _when_unlocked(output, lambda: _reopen(output))
                if FACTS[0] not in self._file or FACTS[0] not in self._file["failures"]:
                    self._file.close()
                    _add_facts_if_missing(output, keep)
                    self._file = h5py.File(output, "r+")
                for key, value in attrs.items():
                    if key != "created":  # the output keeps the date it was started
                        self._file.attrs[key] = value
                self._file.attrs["complete"] = False
                _truncate(self._file, ["embeddings", "paths", *FACTS], keep[0])
                _truncate(self._file["failures"], ["paths", "errors", *FACTS], keep[1])
            self._file.flush()
            self._file.swmr_mode = True  # from here on, no new objects; appends only
        self._embeddings = self._file["embeddings"]
        self._paths = self._file["paths"]
        self._failed_paths = self._file["failures/paths"]
        self._failed_errors = self._file["failures/errors"]

    def write(
        self,
        paths: list[str],
        embeddings: np.ndarray,
        facts: Sequence[Facts] | None = None,
        columns: Mapping[str, Sequence[Any]] | None = None,  # Parquet's only
    ) -> None:
        encoded = _encode(paths, self._paths)
        _ensure_room(self._output, embeddings.nbytes + encoded.nbytes + 80 * len(paths))
        with _as_os_error():
            _append(self._embeddings, embeddings)
            _append(self._paths, encoded)
            _append_facts(self._file, facts or [UNKNOWN] * len(paths))

    def fail(self, path: str, reason: str, facts: Facts | None = None) -> None:
        paths, reasons = (
            _encode([path], self._failed_paths),
            _encode([_reason(reason)], self._failed_errors),
        )
        with _as_os_error():
            _append(self._failed_paths, paths)
            _append(self._failed_errors, reasons)
            _append_facts(self._file["failures"], [facts or UNKNOWN])

    def flush(self, sync: bool = False) -> None:
        """Hand everything written so far to the OS (survives kill -9); `sync`: to the disk."""
        with _as_os_error():
            self._file.flush()
            if sync:
                _fsync(self._output)

    def close(self) -> None:
        with _as_os_error():
            self._file.flush()
            _fsync(self._output)  # every row on the disk before the file says complete
            self._file.attrs["complete"] = True
            self._file.close()
            _fsync(self._output)

    def abort(self) -> None:
        if _write_failed:
            # A write failed (disk full): flushing now would write metadata that points at
            # data that never reached the disk. Leave the file as the last successful flush
            # left it, exactly as a kill would; --resume reopens it from there.
            return
        if self._file.id.valid:
            with _as_os_error():
                self._file.flush()
                self._file.close()


def _ensure_room(output: str, size: int) -> None:
    """Stop before a write that the disk (or the file-size limit) cannot take.

    SWMR keeps the file valid through a kill, not through a failed write: HDF5 may already have
    written metadata that points at the data it could not write. So efx checks for room first
    (the rows, a new 1 MiB chunk, metadata) and stops while the file is still whole.
    """
    needed = size + 2 * _CHUNK_BYTES + (1 << 20)
    disk = os.statvfs(os.path.dirname(os.path.abspath(output)))
    if disk.f_bavail * disk.f_frsize < needed:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    limit = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
    if limit != resource.RLIM_INFINITY and os.path.getsize(output) + needed > limit:
        raise OSError(errno.EFBIG, os.strerror(errno.EFBIG))


def _append_facts(group: h5py.Group, facts: Sequence[Facts]) -> None:
    if not facts:
        return
    sizes, mtimes, digests = zip(*facts, strict=True)
    for name, values in zip(FACTS, (sizes, mtimes, digests), strict=True):
        _append(group[name], np.array(values, dtype=group[name].dtype))


def refresh_facts(
    output: str, rows: Sequence[Facts], failures: Sequence[Facts], updated: str
) -> None:
    """Record new facts of the same rows and failures in place (an update that found only
    touched files: the same bytes with a new date), without rewriting the embeddings. The
    datasets keep their size and chunks, so only their values are written: a kill leaves every
    row with either its old facts or its new ones, both true of the same bytes."""
    with _as_os_error():
        file = _when_unlocked(output, lambda: _reopen(output))
        with file:
            if "updated" not in file.attrs:  # new attributes only before SWMR mode
                file.attrs["updated"] = updated
            file.flush()
            file.swmr_mode = True  # the metadata stays ordered as for every other write
            for group, facts in ((file, rows), (file["failures"], failures)):
                if facts and _facts(group, len(facts)) != list(facts):
                    for name, values in zip(FACTS, zip(*facts, strict=True), strict=True):
                        group[name][: len(facts)] = np.array(values, dtype=group[name].dtype)
            file.attrs["updated"] = updated
        _fsync(output)


def _create_facts(group: h5py.Group, rows: int = 0) -> None:
    """The facts datasets of a group (root or failures), `rows` of them unknown (an output of
    efx before 0.4 gets them when --resume reopens it)."""
    chunk = 1 << 12  # 256 KiB of hashes, as the paths' chunks: small outputs stay small
    for name, dtype in zip(FACTS, _FACT_TYPES, strict=True):
        unknown = b"" if name == "file_sha256" else -1
        group.create_dataset(
            name, shape=(rows,), maxshape=(None,), dtype=dtype, chunks=(chunk,),
            fillvalue=unknown,
        )  # fmt: skip


def _create(output: str, attrs: dict[str, Any], path_bytes: int) -> h5py.File:
    dim = int(attrs["feature_dim"])
    file = h5py.File(output, "w", libver="latest")  # the SWMR file format (HDF5 >= 1.10)
    rows = max(1, _CHUNK_BYTES // (4 * dim))
    file.create_dataset(
        "embeddings", shape=(0, dim), maxshape=(None, dim), dtype="float32", chunks=(rows, dim)
    )
    texts = {"paths": path_bytes, "failures/paths": path_bytes, "failures/errors": REASON_BYTES}
    for name, width in texts.items():
        chunk = max(16, _CHUNK_BYTES // 4 // width)  # ~256 KiB
        file.create_dataset(name, shape=(0,), maxshape=(None,), dtype=_text(width), chunks=(chunk,))
    _create_facts(file)
    _create_facts(file["failures"])
    for key, value in attrs.items():
        file.attrs[key] = value
    file.attrs["complete"] = False
    return file


def _widen_if_needed(output: str, keep: tuple[int, int], path_bytes: int) -> None:
    """Before --resume appends: rewrite the output with wider paths fields when an input to come
    is longer than they are (a longer file name added since), or when its texts are
    variable-length (outputs of efx before 0.2). The copy is written beside the output and
    renamed over it, so a kill during it leaves the output as it was."""
    with _open_for_reading(output) as file:
        widths = [_width(file[name]) for name in ("paths", "failures/paths", "failures/errors")]
        fixed = [width for width in widths if width is not None]
        if len(fixed) == len(widths) and min(fixed[:2]) >= path_bytes:
            return
        temporary = output + ".widening"
        attrs = {key: value for key, value in file.attrs.items()}
        wider = max([path_bytes, *(w for w in widths[:2] if w is not None)])
        with _create(temporary, attrs, wider) as copy:
            rows, failed = keep
            block = max(1, _CHUNK_BYTES // (4 * file["embeddings"].shape[1]))
            for start in range(0, rows, block):
                stop = min(start + block, rows)
                _append(copy["embeddings"], file["embeddings"][start:stop])
                _append(copy["paths"], _encode(_texts(file["paths"], stop, start), copy["paths"]))
                _append_facts(copy, _facts(file, stop, start))
            failures = file["failures"]
            _append_facts(copy["failures"], _facts(failures, failed))
            _append(
                copy["failures/paths"],
                _encode(_texts(failures["paths"], failed), copy["failures/paths"]),
            )
            reasons = [_reason(text) for text in _texts(failures["errors"], failed)]
            _append(copy["failures/errors"], _encode(reasons, copy["failures/errors"]))
    _fsync(temporary)
    files.replace(temporary, output)


def _add_facts_if_missing(output: str, keep: tuple[int, int]) -> None:
    """An output of efx before 0.4 gets the facts datasets (unknown for the rows it holds)
    before --resume appends to it; new datasets cannot be added once in SWMR mode."""
    with h5py.File(output, "r+") as file:
        for group, rows in ((file, keep[0]), (file["failures"], keep[1])):
            if FACTS[0] not in group:
                _create_facts(group, rows)


def _reopen(output: str) -> h5py.File:
    """Open an interrupted output for appending. A writer killed in SWMR mode leaves a flag in
    the superblock that makes HDF5 refuse to open the file for writing; clear it first, as
    HDF5's own `h5clear -s` does, unless another process still holds the file."""
    try:
        return h5py.File(output, "r+")
    except OSError as error:
        if "consistency flags" not in str(error):
            raise
    with open(output, "rb") as file:
        fcntl.flock(file, fcntl.LOCK_EX | fcntl.LOCK_NB)  # as HDF5 does: held, if in use
        fcntl.flock(file, fcntl.LOCK_UN)
    superblock.clear_crash_flags(output)
    return h5py.File(output, "r+")


def _truncate(group: h5py.Group, names: list[str], rows: int) -> None:
    for name in names:
        group[name].resize(rows, axis=0)


def _fsync(output: str) -> None:
    with open(output, "rb") as file:
        os.fsync(file.fileno())


def _open_for_reading(output: str) -> h5py.File:
    superblock.check(output)
    try:
        return _when_unlocked(output, lambda: _open_file(output))
    except BlockingIOError:
        raise
    except OSError as error:  # a damaged file: HDF5's checksums and signatures catch it
        raise _damaged(output, error) from error


def _damaged(output: str, error: Exception) -> EfxError:
    found = re.search(r"\(([^()]*)\)", str(error))
    why = found.group(1) if found else str(error).splitlines()[0]
    return EfxError(f"cannot read {output}: {why} (is it damaged?)")


def _open_file(output: str) -> h5py.File:
    """A finished file opens plainly; one being written, or whose writer was killed, in SWMR
    mode (plain mode refuses it until h5clear). Not SWMR first: SWMR retries every failed
    checksum for about two minutes before it reports a damaged file; plain mode reports it at
    once."""
    try:
        return h5py.File(output, "r")
    except BlockingIOError:
        raise
    except OSError as error:
        # A file being appended to can end, for a moment, before the end its superblock
        # records ("truncated file"); SWMR mode reads it. A finished file that does is damaged.
        being_written = "truncated file" in str(error) and superblock.held_open(output)
        if "already open for write" not in str(error) and not being_written:
            raise
    return h5py.File(output, "r", swmr=True)


_T = TypeVar("_T")

# How long to wait out another process's hold on an HDF5 file's lock before reporting it.
LOCK_WAIT_SECONDS = 10.0


def _when_unlocked(output: str, action: Callable[[], _T]) -> _T:
    """Run `action`, waiting out another process's brief hold on the file's lock.

    HDF5 locks files while opening them (a reader's `efx info`, a writer creating or reopening
    the file); the holds last milliseconds, so wait a few seconds before giving up.
    """
    deadline = time.monotonic() + LOCK_WAIT_SECONDS
    while True:
        try:
            return action()
        except BlockingIOError:
            if time.monotonic() > deadline:
                raise EfxError(f"{output} is in use by another process; try again") from None
            time.sleep(0.05)


def _rows(file: h5py.File) -> tuple[int, int]:
    """Rows and failures held whole: after a kill, one of a row's datasets may be longer."""
    failures = file["failures"]
    rows = [file[name].shape[0] for name in ("embeddings", "paths", *FACTS) if name in file]
    failed = [failures[name].shape[0] for name in ("paths", "errors", *FACTS) if name in failures]
    return min(rows), min(failed)


def _facts(group: h5py.Group, stop: int, start: int = 0) -> list[Facts]:
    """The facts of entries start..stop of a group (root: rows; failures); unknown in an
    output of efx before 0.4."""
    if FACTS[0] not in group:
        return [UNKNOWN] * (stop - start)
    sizes = group["file_sizes"][start:stop].tolist()
    mtimes = group["file_mtimes_ns"][start:stop].tolist()
    digests = group["file_sha256"].asstr()[start:stop]
    return [Facts(*fact) for fact in zip(sizes, mtimes, digests, strict=True)]


def _texts(dataset: h5py.Dataset, stop: int, start: int = 0) -> list[str]:
    return list(dataset.asstr(errors="surrogateescape")[start:stop])


def _read(output: str, read: Callable[[h5py.File], _T]) -> _T:
    """Open `output` for reading and run `read` on it.

    While a run appends, a reader can meet data that the writer placed after the end of the
    file as this reader saw it when it opened the file (HDF5: "len not positive after adjustment
    for EOA", seen reading failure texts during a run); a fresh open sees the file as it is now,
    so such a read is tried again for a few seconds before it is reported.
    """
    deadline = time.monotonic() + 5
    while True:
        with _open_for_reading(output) as file:
            try:
                return read(file)
            except OSError as error:
                if time.monotonic() > deadline:
                    raise EfxError(f"cannot read {output}: {error}") from error
            except RuntimeError as error:  # metadata that fails its checksum
                raise _damaged(output, error) from error
        time.sleep(0.05)


def read(output: str) -> tuple[list[str], np.ndarray]:
    def rows_of(file: h5py.File) -> tuple[list[str], np.ndarray]:
        _require(file, output)
        rows, _ = _rows(file)
        embeddings = np.asarray(file["embeddings"][:rows], dtype=np.float32)
        return _texts(file["paths"], rows), embeddings

    return _read(output, rows_of)


def rows(output: str, indices: list[int]) -> np.ndarray:
    """The embeddings of the rows at `indices` (in that order)."""

    def pick(file: h5py.File) -> np.ndarray:
        data = file["embeddings"]
        return _take(lambda start, stop: data[start:stop], data, np.asarray(indices, np.int64))

    return _read(output, pick) if indices else np.zeros((0, 0), np.float32)


class RowReader:
    """Embeddings of chosen rows, the file kept open between reads (--update copies the rows
    it keeps in blocks, never the whole output into memory)."""

    def __init__(self, output: str) -> None:
        self._file = _open_for_reading(output)
        self._data = self._file["embeddings"]

    def take(self, indices: np.ndarray) -> np.ndarray:
        return _take(lambda start, stop: self._data[start:stop], self._data, indices)

    def columns(self, indices: list[int]) -> dict[str, list[Any]]:
        return {}  # only Parquet outputs hold columns beyond the embeddings and facts

    def close(self) -> None:
        self._file.close()


def _take(span: Callable[[int, int], np.ndarray], data: Any, indices: np.ndarray) -> np.ndarray:
    """Rows at `indices` (any order): one read of the span they cover when it is dense (the
    usual case: kept rows come in runs), else each distinct row in increasing order."""
    if len(indices) == 0:
        return np.zeros((0, data.shape[1]), np.float32)
    low, high = int(indices.min()), int(indices.max()) + 1
    if high - low <= 4 * len(indices):
        return np.asarray(span(low, high), dtype=np.float32)[indices - low]
    distinct = np.unique(indices)
    picked = np.asarray(data[distinct.tolist()], dtype=np.float32)
    return picked[np.searchsorted(distinct, indices)]


def iter_rows(output: str, block: int) -> Iterator[tuple[list[str], np.ndarray]]:
    """The rows in blocks of at most `block`, so that big outputs stream through memory (merge
    reads finished parts: no writer appends to them)."""
    with _open_for_reading(output) as file:
        try:
            rows, _ = _rows(file)
            for start in range(0, rows, block):
                stop = min(start + block, rows)
                embeddings = np.asarray(file["embeddings"][start:stop], dtype=np.float32)
                yield _texts(file["paths"], stop, start), embeddings
        except RuntimeError as error:  # metadata that fails its checksum
            raise _damaged(output, error) from error


def _failures(file: h5py.File, limit: int | None = None) -> list[dict[str, str]]:
    _, failed = _rows(file)
    stop = failed if limit is None else min(failed, limit)
    failures = file["failures"]
    return [
        {"path": path, "error": error}
        for path, error in zip(
            _texts(failures["paths"], stop), _texts(failures["errors"], stop), strict=True
        )
    ]


def read_failures(output: str, limit: int | None = None) -> list[dict[str, str]]:
    return _read(output, lambda file: _failures(file, limit))


def read_state(output: str, facts: bool = False) -> dict[str, Any]:
    """Everything --resume needs: the settings, the paths done and failed, completeness; with
    `facts`, what --update needs too: each row's and failure's facts, and the failures' reasons.
    """

    def state_of(file: h5py.File) -> dict[str, Any]:
        _require(file, output)
        rows, failed = _rows(file)
        attrs = {key: _plain(value) for key, value in file.attrs.items()}
        state = {
            "attrs": attrs,
            "paths": _texts(file["paths"], rows),
            "failed": _texts(file["failures/paths"], failed),
            "complete": bool(attrs.get("complete", False)),
        }
        if facts:
            state["facts"] = _facts(file, rows)
            state["failed_facts"] = _facts(file["failures"], failed)
            state["reasons"] = _texts(file["failures/errors"], failed)
            state["has_facts"] = FACTS[0] in file
        return state

    return _read(output, state_of)


def describe(output: str) -> dict[str, Any]:
    def info_of(file: h5py.File) -> dict[str, Any]:
        _require(file, output)
        rows, failed = _rows(file)
        attrs = {key: _plain(value) for key, value in file.attrs.items()}
        embeddings = file["embeddings"]
        info = {
            "count": rows,
            "feature_dim": int(embeddings.shape[1]),
            "dtype": str(embeddings.dtype),
            "failed": failed,
            "failures": _failures(file, limit=20),
            "file_facts": FACTS[0] in file,
        }
        return {**attrs, **info, "complete": bool(attrs.get("complete", False))}

    return _read(output, info_of)


def _require(file: h5py.File, output: str) -> None:
    if "embeddings" not in file or "paths" not in file or "failures" not in file:
        raise EfxError(f"not an efx output: {output} lacks the embeddings/paths/failures datasets")


def _plain(value: Any) -> Any:
    """HDF5 attribute values as plain Python (numpy scalars and bytes are not JSON-friendly)."""
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, np.generic):
        return value.item()
    return value
