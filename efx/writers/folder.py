"""What the two folder formats (.npy shards, Parquet) share: a JSON manifest replaced atomically
that says which rows and failures are committed, and a failure log (JSON Lines) appended to,
of which the manifest counts the committed lines. No TensorFlow, no pyarrow."""

from __future__ import annotations

import fnmatch
import json
import os
from collections.abc import Callable
from typing import Any, Protocol

import numpy as np

from ..errors import EfxError
from ..facts import Facts
from ..names import to_json


def check_target(output: str, overwrite: bool, manifest: str, a_file: str) -> None:
    """Refuse a file where the folder goes (`a_file` says what to do), a folder holding other
    things than an efx output (one with `manifest`, a path inside it), or an existing output
    without --overwrite."""
    if os.path.isfile(output):
        raise EfxError(f"OUTPUT {output} is a file; {a_file}")
    if not os.path.isdir(output) or not os.listdir(output):
        return
    if not os.path.isfile(os.path.join(output, manifest)):
        raise EfxError(
            f"OUTPUT folder {output} is not empty and is not an efx output; "
            "choose a new or empty folder"
        )
    if not overwrite:
        raise EfxError(f"OUTPUT {output} already exists; pass --overwrite to replace it")


def close_all(*closes: Callable[[], object]) -> None:
    """Call every close, each even where one before it failed, then raise the first failure.

    On a full disk, closing a file fails to write what its buffer holds, and closes the file all
    the same (io.BufferedWriter.close); the files after it must be closed too, or a run that
    failed leaves them open in the process (an API caller's, `efx serve`'s) until it exits.
    """
    first: BaseException | None = None
    for close in closes:
        try:
            close()
        except Exception as error:
            first = first or error
    if first is not None:
        raise first


def own_files(folder: str, pattern: str) -> list[str]:
    """The paths of the files directly in `folder` whose names match `pattern` (`part-*.parquet`).

    The folder is listed and its names filtered: never `glob(folder + pattern)`, which reads
    `[`, `*` and `?` in an OUTPUT such as `emb[v1].parquet` as a pattern, matching other
    folders beside it (whose files a clean-up would delete) and missing this one's own files.
    """
    try:
        names = sorted(os.listdir(folder))
    except (FileNotFoundError, NotADirectoryError):
        return []
    return [os.path.join(folder, name) for name in names if fnmatch.fnmatchcase(name, pattern)]


def read_manifest(output: str, name: str) -> dict[str, Any]:
    try:
        with open(os.path.join(output, name), encoding="utf-8") as file:
            manifest: dict[str, Any] = json.load(file)
    except (OSError, ValueError) as error:
        raise EfxError(f"cannot read {name} in {output}: {error}") from error
    return manifest


def manifest_bytes(manifest: dict[str, Any]) -> bytes:
    return (to_json(manifest, indent=2) + "\n").encode("utf-8")


def failure_line(record: dict[str, Any]) -> bytes:
    """One line of the failure log: any name, exactly (efx.names.to_json), valid UTF-8."""
    return (to_json(record) + "\n").encode("utf-8")


def failure_records(path: str, committed: int) -> list[dict[str, Any]]:
    """The first `committed` lines of a failure log (a line being written when a run was
    killed is not one: it has no newline yet)."""
    if not os.path.exists(path):
        return []
    with open(path, "rb") as file:
        lines = file.read().split(b"\n")[:-1][:committed]
    return [json.loads(line) for line in lines]


def failure_facts(failure: dict[str, Any]) -> Facts:
    """A failure record's file facts (unknown in a record of efx before 0.4)."""
    return Facts(
        int(failure.get("size", -1)), int(failure.get("mtime_ns", -1)), failure.get("sha256", "")
    )


class _Reader(Protocol):
    def take(self, indices: np.ndarray) -> np.ndarray: ...
    def close(self) -> None: ...


def take_rows(reader: _Reader, indices: list[int]) -> np.ndarray:
    """The embeddings of the rows at `indices` (in that order) from a format's RowReader,
    closed after."""
    if not indices:
        reader.close()
        return np.zeros((0, 0), np.float32)
    try:
        return reader.take(np.asarray(indices, np.int64))
    finally:
        reader.close()
