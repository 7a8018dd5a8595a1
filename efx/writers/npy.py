"""A folder of .npy shards: `embeddings-NNNNN.npy` + `paths-NNNNN.txt` + `files-NNNNN.tsv` (each
row's file size, mtime_ns and SHA-256), `manifest.json`, `failures.jsonl`. Every file is
loadable without efx (numpy, a text reader, a JSON reader).
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, BinaryIO

import numpy as np

from ..config import DEFAULT_SHARD_SIZE
from ..errors import EfxError
from ..facts import UNKNOWN, Facts
from ..files import write_atomically
from . import folder

MANIFEST = "manifest.json"
FAILURES = "failures.jsonl"
_SHARD_PATTERNS = ("embeddings-*.npy", "paths-*.txt", "files-*.tsv")
_SHARD_FILES = ("embeddings", "paths", "files")
_HEADER_BYTES = 128
# Manifest fields that describe the folder's layout rather than the run's settings.
_LAYOUT_KEYS = frozenset(
    {"format", "complete", "count", "failed", "shard_size", "shards", "failures"}
)


def check_target(output: str, overwrite: bool) -> None:
    a_file = ".npy shards go in a folder (end the path in .h5 for HDF5)"
    folder.check_target(output, overwrite, MANIFEST, a_file)


def unstorable(path: str) -> str | None:
    """Why this format cannot store `path` (one path per line in paths-*.txt), or None."""
    if "\n" in path or "\r" in path:
        return "path contains a line break, which .npy shards' paths-*.txt cannot hold (use .h5)"
    return None


def _remove_previous(output: str) -> None:
    """Delete an earlier efx output's own files (and nothing else) from `output`."""
    names = [MANIFEST, FAILURES]
    for pattern in (*_SHARD_PATTERNS, "*.partial"):
        names += [os.path.basename(p) for p in folder.own_files(output, pattern)]
    for name in names:
        path = os.path.join(output, name)
        if os.path.exists(path):
            os.remove(path)


def _npy_header(rows: int, dim: int) -> bytes:
    """The .npy header of a shard, written by numpy itself. numpy pads it with room for the row
    count to grow (`GROWTH_AXIS_MAX_DIGITS`), so its length stays _HEADER_BYTES and it can be
    rewritten in place as rows are appended behind it."""
    buffer = io.BytesIO()
    shape = {"descr": "<f4", "fortran_order": False, "shape": (rows, dim)}
    np.lib.format.write_array_header_1_0(buffer, shape)
    header = buffer.getvalue()
    if len(header) != _HEADER_BYTES:  # a numpy that pads otherwise: rows could not be added
        raise RuntimeError(f"numpy wrote a {len(header)}-byte .npy header, not {_HEADER_BYTES}")
    return header


class NpyWriter:
    """Appends rows to the current shard's files and commits them at each `flush`: the shard's
    .npy header is rewritten in place with the new row count, then `manifest.json` (replaced
    atomically) records the rows committed. At any instant the manifest describes rows that
    are all on disk; a reader takes exactly the rows it lists.

    With `keep=(rows, failures)` it reopens an interrupted output and continues after that
    many rows and failures (`--resume`), dropping anything past them.
    """

    def __init__(
        self,
        output: str,
        attrs: dict[str, Any],
        *,
        inputs: Sequence[str] = (),  # HDF5's; shards take paths of any length
        shard_size: int = DEFAULT_SHARD_SIZE,
        keep: tuple[int, int] | None = None,
    ) -> None:
        if shard_size < 1:
            raise EfxError(f"--shard-size must be at least 1. Received: {shard_size}")
        self._output = output
        self._dim = int(attrs["feature_dim"])
        self._shards: list[dict[str, Any]] = []  # finished shards
        self._open: dict[str, Any] | None = None  # the shard being appended to
        self._embeddings_file: BinaryIO | None = None
        self._paths_file: BinaryIO | None = None
        self._facts_file: BinaryIO | None = None
        self._failed = 0
        if keep is None:
            os.makedirs(output, exist_ok=True)
            _remove_previous(output)
            self._attrs = dict(attrs)
            self._shard_size = shard_size
            self._failures = open(os.path.join(output, FAILURES), "wb")  # noqa: SIM115
        else:
            manifest = _manifest(output)
            self._attrs = {k: v for k, v in manifest.items() if k not in _LAYOUT_KEYS}
            self._attrs.update({k: v for k, v in attrs.items() if k != "created"})
            self._shard_size = int(manifest["shard_size"])  # the same layout as before
            self._keep(manifest, *keep)
        self._write_manifest(complete=False)

    def write(
        self,
        paths: list[str],
        embeddings: np.ndarray,
        facts: Sequence[Facts] | None = None,
        columns: Mapping[str, Sequence[Any]] | None = None,  # Parquet's only
    ) -> None:
        embeddings = np.ascontiguousarray(embeddings, dtype="<f4")
        facts = facts or [UNKNOWN] * len(paths)
        start = 0
        while start < len(paths):
            if self._open is None:
                self._start_shard(len(self._shards))
            assert self._open is not None and self._embeddings_file and self._paths_file
            assert self._facts_file is not None
            take = min(len(paths) - start, self._shard_size - self._open["written"])
            self._embeddings_file.write(embeddings[start : start + take].tobytes())
            self._paths_file.write(_lines(paths[start : start + take]))
            self._facts_file.write(_fact_lines(facts[start : start + take]))
            self._open["written"] += take
            start += take
            if self._open["written"] == self._shard_size:
                self._finish_shard()

    def fail(self, path: str, reason: str, facts: Facts | None = None) -> None:
        record = {"path": path, "error": reason, **(facts or UNKNOWN)._asdict()}
        self._failures.write(folder.failure_line(record))
        self._failed += 1

    def flush(self, sync: bool = False) -> None:
        """Commit every row written so far: survives kill -9; with `sync`, power loss too."""
        self._commit(sync)
        self._write_manifest(complete=False, sync=sync)

    def close(self) -> None:
        self._commit(sync=True)
        self._close_files()
        self._write_manifest(complete=True)

    def abort(self) -> None:
        """Leave the output incomplete, holding the rows committed so far; every file is closed,
        even where committing more fails (a full disk), and the manifest is then left as the
        last commit wrote it."""
        if self._failures.closed:
            return
        try:
            self._commit(sync=True)
        finally:
            self._close_files()
        self._write_manifest(complete=False)

    def _start_shard(self, number: int) -> None:
        self._open = {
            **_shard_names(number),
            "rows": 0,  # committed: in the header and the manifest
            "written": 0,  # handed to the files
        }
        self._embeddings_file = open(self._path(self._open["embeddings"]), "wb")  # noqa: SIM115
        self._embeddings_file.write(_npy_header(0, self._dim))
        self._paths_file = open(self._path(self._open["paths"]), "wb")  # noqa: SIM115
        self._facts_file = open(self._path(self._open["files"]), "wb")  # noqa: SIM115

    def _finish_shard(self) -> None:
        self._commit(sync=True)
        assert self._open is not None
        self._shards.append({k: self._open[k] for k in (*_SHARD_FILES, "rows")})
        self._close_files(failures=False)
        self._open = None
        self._write_manifest(complete=False)

    def _commit(self, sync: bool) -> None:
        self._failures.flush()
        if sync:
            os.fsync(self._failures.fileno())
        if self._open is None or not self._embeddings_file or not self._paths_file:
            return
        for file in (self._embeddings_file, self._paths_file, self._facts_file):
            if file is None:
                continue
            file.flush()
            if sync:
                os.fsync(file.fileno())
        # The header only ever counts rows already in the file, so np.load never runs short.
        os.pwrite(self._embeddings_file.fileno(), _npy_header(self._open["written"], self._dim), 0)
        if sync:
            os.fsync(self._embeddings_file.fileno())
        self._open["rows"] = self._open["written"]

    def _close_files(self, failures: bool = True) -> None:
        files = [self._embeddings_file, self._paths_file, self._facts_file]
        self._embeddings_file = self._paths_file = self._facts_file = None
        if failures:
            files.append(self._failures)
        folder.close_all(*(file.close for file in files if file is not None))

    def _keep(self, manifest: dict[str, Any], rows: int, failures: int) -> None:
        """Reopen for --resume: keep the first `rows` rows and `failures` failures."""
        left = rows
        for shard in manifest["shards"]:
            take = min(left, int(shard["rows"]))
            left -= take
            if take == int(shard["rows"]) and take == self._shard_size:
                self._shards.append(shard)
            elif take > 0:  # the shard to continue: cut it to `take` rows and append after
                self._reopen_shard(len(self._shards), take)
            else:
                for key in _SHARD_FILES:
                    if key in shard and os.path.exists(self._path(shard[key])):
                        os.remove(self._path(shard[key]))
        kept = _failure_records(self._output)[:failures]
        lines = b"".join(folder.failure_line(f) for f in kept)
        # Replaced, not truncated and rewritten: a reader (or a kill) in between would find
        # fewer failures than the manifest promises.
        write_atomically(self._path(FAILURES), lines)
        self._failures = open(self._path(FAILURES), "ab")  # noqa: SIM115
        self._failed = len(kept)
        self._commit(sync=True)

    def _reopen_shard(self, number: int, rows: int) -> None:
        self._open = {**_shard_names(number), "rows": rows, "written": rows}
        with open(self._path(self._open["paths"]), "rb") as file:
            kept = file.read().split(b"\n")[:rows]
        write_atomically(self._path(self._open["paths"]), b"".join(line + b"\n" for line in kept))
        self._paths_file = open(self._path(self._open["paths"]), "ab")  # noqa: SIM115
        # The shard's facts, cut to the rows kept (unknown for a shard of efx before 0.4).
        facts = _read_facts(self._output, self._open, rows)
        write_atomically(self._path(self._open["files"]), _fact_lines(facts))
        self._facts_file = open(self._path(self._open["files"]), "ab")  # noqa: SIM115
        self._embeddings_file = open(self._path(self._open["embeddings"]), "r+b")  # noqa: SIM115
        self._embeddings_file.truncate(_HEADER_BYTES + rows * self._dim * 4)
        self._embeddings_file.seek(0, os.SEEK_END)

    def _path(self, name: str) -> str:
        return os.path.join(self._output, name)

    def _write_manifest(self, complete: bool, sync: bool = True) -> None:
        shards = list(self._shards)
        if self._open is not None and self._open["rows"]:
            shards.append({k: self._open[k] for k in (*_SHARD_FILES, "rows")})
        manifest = {
            **self._attrs,
            "format": "efx-npy-shards/1",
            "complete": complete,
            "count": sum(int(shard["rows"]) for shard in shards),
            "failed": self._failed,
            "shard_size": self._shard_size,
            "shards": shards,
            "failures": FAILURES,
        }
        write_atomically(self._path(MANIFEST), folder.manifest_bytes(manifest), sync)


def _lines(paths: list[str]) -> bytes:
    return "".join(path + "\n" for path in paths).encode("utf-8", "surrogateescape")


def _shard_names(number: int) -> dict[str, str]:
    return {
        "embeddings": f"embeddings-{number:05d}.npy",
        "paths": f"paths-{number:05d}.txt",
        "files": f"files-{number:05d}.tsv",
    }


def _fact_lines(facts: Sequence[Facts]) -> bytes:
    """files-NNNNN.tsv: one line per row, `size<TAB>mtime_ns<TAB>sha256` (-1, -1, "" unknown)."""
    return "".join(f"{f.size}\t{f.mtime_ns}\t{f.sha256}\n" for f in facts).encode("ascii")


def refresh_facts(
    output: str, rows: Sequence[Facts], failures: Sequence[Facts], updated: str
) -> None:
    """Record new facts of the same rows and failures in place (an update that found only
    touched files: the same bytes with a new date), without rewriting the embeddings. Each
    file is replaced atomically, the manifest last: a kill leaves every row with either its old
    facts or its new ones, both true of the same bytes."""
    manifest = _manifest(output)
    start = 0
    for shard in manifest["shards"]:
        count = int(shard["rows"])
        if _read_facts(output, shard, count) != list(rows[start : start + count]):
            write_atomically(
                os.path.join(output, shard["files"]), _fact_lines(rows[start : start + count])
            )
        start += count
    records = _failure_records(output)
    if [folder.failure_facts(record) for record in records] != list(failures):
        lines = b"".join(
            folder.failure_line({**record, **found._asdict()})
            for record, found in zip(records, failures, strict=True)
        )
        write_atomically(os.path.join(output, FAILURES), lines)
    manifest["updated"] = updated
    write_atomically(os.path.join(output, MANIFEST), folder.manifest_bytes(manifest))


def _read_facts(output: str, shard: dict[str, Any], rows: int) -> list[Facts]:
    """The first `rows` facts of a shard; unknown where its files-NNNNN.tsv is missing or
    shorter (a shard of efx before 0.4)."""
    found: list[Facts] = []
    path = os.path.join(output, shard.get("files", ""))
    if shard.get("files") and os.path.isfile(path):
        with open(path, "rb") as file:
            for line in file.read().split(b"\n")[:rows]:
                size, mtime, digest = (line.decode("ascii").split("\t") + ["", "", ""])[:3]
                if not size:
                    break
                found.append(Facts(int(size), int(mtime), digest))
    return found + [UNKNOWN] * (rows - len(found))


def _manifest(output: str) -> dict[str, Any]:
    return folder.read_manifest(output, MANIFEST)


def _shard_rows(output: str, shard: dict[str, Any]) -> tuple[list[str], np.ndarray]:
    rows = int(shard["rows"])
    # The file may hold rows past those the manifest lists (written, not yet committed).
    embeddings = np.load(os.path.join(output, shard["embeddings"]), mmap_mode="r")[:rows]
    with open(os.path.join(output, shard["paths"]), "rb") as file:
        lines = file.read().split(b"\n")[:rows]
    return [line.decode("utf-8", "surrogateescape") for line in lines], np.array(embeddings)


def iter_rows(output: str, block: int = 0) -> Iterator[tuple[list[str], np.ndarray]]:
    """The rows, shard by shard (at most --shard-size rows in memory at a time)."""
    for shard in _manifest(output)["shards"]:
        yield _shard_rows(output, shard)


def rows(output: str, indices: list[int]) -> np.ndarray:
    """The embeddings of the rows at `indices` (in that order), reading only their shards."""
    return folder.take_rows(RowReader(output), indices)


class RowReader:
    """Embeddings of chosen rows, each shard memory-mapped once (--update copies the rows it
    keeps in blocks, never the whole output into memory)."""

    def __init__(self, output: str) -> None:
        self._output = output
        self._shards = _manifest(output)["shards"]
        counts = [int(shard["rows"]) for shard in self._shards]
        self._starts = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        self._maps: dict[int, np.ndarray] = {}

    def take(self, indices: np.ndarray) -> np.ndarray:
        indices = np.asarray(indices, dtype=np.int64)
        shard_of = np.searchsorted(self._starts, indices, side="right") - 1
        picked: np.ndarray | None = None
        for shard in np.unique(shard_of):
            if shard not in self._maps:
                name = os.path.join(self._output, self._shards[shard]["embeddings"])
                self._maps[shard] = np.load(name, mmap_mode="r")
            inside = shard_of == shard
            block = self._maps[shard][indices[inside] - self._starts[shard]]
            if picked is None:
                picked = np.zeros((len(indices), block.shape[1]), np.float32)
            picked[inside] = block
        return picked if picked is not None else np.zeros((0, 0), np.float32)

    def columns(self, indices: list[int]) -> dict[str, list[Any]]:
        return {}  # only Parquet outputs hold columns beyond the embeddings and facts

    def close(self) -> None:
        self._maps.clear()


def read(output: str) -> tuple[list[str], np.ndarray]:
    manifest = _manifest(output)
    paths: list[str] = []
    blocks = []
    for shard_paths, embeddings in iter_rows(output):
        paths += shard_paths
        blocks.append(embeddings)
    dim = int(manifest.get("feature_dim", 0))
    embeddings = np.concatenate(blocks) if blocks else np.zeros((0, dim), np.float32)
    return paths, embeddings


def read_failures(output: str, limit: int | None = None) -> list[dict[str, str]]:
    """The committed failures: {"path", "error"} each, as for HDF5."""
    failures = _failure_records(output)[:limit]
    return [{"path": failure["path"], "error": failure["error"]} for failure in failures]


def _failure_records(output: str) -> list[dict[str, Any]]:
    """The committed lines of failures.jsonl (a line being written when a run was killed is not
    one), with the file facts efx 0.4 and later add to each."""
    committed = int(_manifest(output).get("failed", 0))
    return folder.failure_records(os.path.join(output, FAILURES), committed)


def read_state(output: str, facts: bool = False) -> dict[str, Any]:
    """Everything --resume needs: the settings, the paths done and failed, completeness; with
    `facts`, what --update needs too: each row's and failure's facts, and the failures' reasons.
    """
    manifest = _manifest(output)
    paths: list[str] = []
    row_facts: list[Facts] = []
    for shard in manifest["shards"]:
        with open(os.path.join(output, shard["paths"]), "rb") as file:
            lines = file.read().split(b"\n")[: int(shard["rows"])]
        paths += [line.decode("utf-8", "surrogateescape") for line in lines]
        if facts:
            row_facts += _read_facts(output, shard, int(shard["rows"]))
    failures = _failure_records(output)
    state = {
        "attrs": {k: v for k, v in manifest.items() if k not in _LAYOUT_KEYS},
        "paths": paths,
        "failed": [failure["path"] for failure in failures],
        "complete": bool(manifest.get("complete", False)),
        "shard_size": int(manifest.get("shard_size", DEFAULT_SHARD_SIZE)),
    }
    if facts:
        state["facts"] = row_facts
        state["failed_facts"] = [folder.failure_facts(failure) for failure in failures]
        state["reasons"] = [failure["error"] for failure in failures]
        state["has_facts"] = all("files" in shard for shard in manifest["shards"])
    return state


def describe(output: str) -> dict[str, Any]:
    manifest = _manifest(output)
    attrs = {k: v for k, v in manifest.items() if k not in _LAYOUT_KEYS}
    return {
        **attrs,
        "count": int(manifest.get("count", 0)),
        "dtype": "float32",
        "failed": int(manifest.get("failed", 0)),
        "failures": read_failures(output, limit=20),
        "complete": bool(manifest.get("complete", False)),
        "shards": len(manifest.get("shards", [])),
        "file_facts": all("files" in shard for shard in manifest.get("shards", [])),
    }
