"""Output formats: one writer class per format with the same small interface, chosen by name.

Every writer is built the same way, `Writer(output, attrs, *, inputs, shard_size, keep)`: `attrs`
holds the run's metadata (model, image_size, feature_dim, versions, created), `inputs` every
path the run may write (HDF5 sizes its text fields by them), `shard_size` the rows per .npy
shard. It offers:
- `write(paths, embeddings, facts)`: append rows, in order, with each file's `efx.facts.Facts`
  (size, mtime_ns, sha256: what --update compares; unknown if not given);
- `fail(path, reason, facts)`: record an input that could not be embedded;
- `flush(sync)`: commit what was written (it then survives kill -9; with sync, power loss);
- `close()`: finish, marking the output complete; `abort()`: flush, leaving it marked incomplete.

Constructed with `keep=(rows, failures)`, a writer reopens an interrupted output and continues
after that many rows and failures (`--resume`).

Each format module also has `read`, `iter_rows`, `rows`, `RowReader`, `read_failures`,
`read_state` (what --resume and --update need) and `describe`, which import neither
TensorFlow nor anything slow.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Protocol

import numpy as np

from ..config import DEFAULT_SHARD_SIZE
from ..errors import EfxError
from ..facts import Facts
from ..formats import DEFAULT_STREAM, FILE_FORMATS, NAMES, STREAM_FORMATS, named_by
from ..formats import FORMATS as REGISTRY
from ..recorded import OutputState
from . import hdf5, npy, parquet
from .stream import STDOUT

# Every list of formats comes from the registry (efx.formats).
WRITERS = {name: f.writer_class() for name, f in REGISTRY.items()}
FORMATS = NAMES
_MODULES: dict[str, Any] = {name: REGISTRY[name].code() for name in FILE_FORMATS}


class Writer(Protocol):
    def write(
        self,
        paths: list[str],
        embeddings: np.ndarray,
        facts: Sequence[Facts] | None = None,
        columns: Mapping[str, Sequence[Any]] | None = None,
    ) -> None: ...
    def fail(self, path: str, reason: str, facts: Facts | None = None) -> None: ...
    def flush(self, sync: bool = False) -> None: ...
    def close(self) -> None: ...
    def abort(self) -> None: ...


def format_for(output: str, override: str | None = None) -> str:
    """The output format: --format if given, else for OUTPUT - JSON Lines, for .h5/.hdf5 paths
    HDF5, for .parquet a folder of Parquet files, else .npy shards. A file format for -, or a
    stream format for a file, is refused."""
    if override and override not in WRITERS:
        raise EfxError(f"--format must be one of {', '.join(FORMATS)}. Received: {override!r}")
    if output == STDOUT:
        if override in FILE_FORMATS:
            raise EfxError(
                f"OUTPUT - is standard output, which takes --format {' or '.join(STREAM_FORMATS)}"
                f". Received: --format {override}"
            )
        return override or DEFAULT_STREAM
    if override in STREAM_FORMATS:
        raise EfxError(
            f"--format {override} streams to standard output: give - as OUTPUT. "
            f"Received: OUTPUT {output}"
        )
    return override or named_by(output)


def check_output(output: str, fmt: str, overwrite: bool, resumable: bool = False) -> None:
    """Refuse, before any work, an output that exists (without --overwrite) or cannot be written.
    `resumable`: an unfinished one is refused saying that --resume finishes it (efx extract)."""
    if fmt in STREAM_FORMATS:
        return  # standard output: nothing to check
    if resumable and not overwrite and os.path.exists(output) and not _finished(output):
        raise EfxError(
            f"OUTPUT {output} already exists, unfinished (the run that wrote it was stopped): "
            "pass --resume to finish it, or --overwrite to replace it"
        )
    parent = os.path.dirname(os.path.abspath(output))
    if not os.path.isdir(parent):
        raise EfxError(f"the folder for OUTPUT does not exist: {parent}")
    if not os.access(parent, os.W_OK):
        raise EfxError(f"cannot write to the folder for OUTPUT (permission denied): {parent}")
    _MODULES[fmt].check_target(output, overwrite)


def _finished(output: str) -> bool:
    """False for an efx output marked incomplete; True otherwise (not an efx output, or not
    readable: the format's own check says what it is)."""
    try:
        return bool(describe(output).get("complete", True))
    except (EfxError, OSError):
        return True


def open_writer(
    fmt: str,
    output: str,
    attrs: dict[str, Any],
    *,
    inputs: Sequence[str] = (),
    shard_size: int = DEFAULT_SHARD_SIZE,
    keep: tuple[int, int] | None = None,
) -> Writer:
    kind: Any = WRITERS[fmt]  # either class: the same constructor
    writer: Writer = kind(output, attrs, inputs=inputs, shard_size=shard_size, keep=keep)
    return writer


def read_state(output: str, facts: bool = False) -> OutputState:
    """An existing output's attributes, rows, failures and completeness; with `facts`, also
    each row's and failure's efx.facts.Facts and each failure's reason (efx.recorded)."""
    return OutputState(**_MODULES[detect_format(output)].read_state(output, facts))


class RowReader(Protocol):
    def take(self, indices: np.ndarray) -> np.ndarray: ...
    def columns(self, indices: list[int]) -> dict[str, list[Any]]: ...
    def close(self) -> None: ...


def open_rows(output: str) -> RowReader:
    """A reader of chosen rows' embeddings, kept open between reads."""
    reader: RowReader = _MODULES[detect_format(output)].RowReader(output)
    return reader


def iter_table(
    output: str, block: int = 10_000
) -> Iterator[tuple[list[str], np.ndarray, dict[str, list[Any]]]]:
    """(paths, embeddings, other columns) blocks in row order: the other columns are those only
    Parquet outputs hold (`shard`, `key`, columns kept from the sources; none for the others)."""
    if detect_format(output) == "parquet":
        yield from parquet.iter_table(output)
        return
    for paths, embeddings in iter_rows(output, block):
        yield paths, embeddings, {}


def columns_of(output: str) -> list[str]:
    """The columns beyond path, embedding and the file facts that hold a value in some row of
    OUTPUT (only Parquet outputs have any)."""
    if detect_format(output) != "parquet":
        return []
    return parquet.filled_columns(output)


def iter_rows(output: str, block: int = 10_000) -> Iterator[tuple[list[str], np.ndarray]]:
    """(paths, embeddings) blocks of an output of either format, in row order."""
    rows: Iterator[tuple[list[str], np.ndarray]] = _MODULES[detect_format(output)].iter_rows(
        output, block
    )
    return rows


def rows(output: str, indices: list[int]) -> np.ndarray:
    """The embeddings of the rows at `indices`, in that order, without reading the others."""
    picked: np.ndarray = _MODULES[detect_format(output)].rows(output, indices)
    return picked


def read_failures(output: str) -> list[dict[str, str]]:
    failures: list[dict[str, str]] = _MODULES[detect_format(output)].read_failures(output)
    return failures


def refresh_facts(
    output: str, rows: Sequence[Facts], failures: Sequence[Facts], updated: str
) -> None:
    """Replace the recorded facts of OUTPUT's rows and failures (same count, same order) in
    place, and its `updated` attribute; the embeddings are not touched."""
    _MODULES[detect_format(output)].refresh_facts(output, rows, failures, updated)


def unstorable(fmt: str, path: str) -> str | None:
    """Why format `fmt` cannot store `path` as a row, or None."""
    if fmt in STREAM_FORMATS:
        return None  # JSON and Arrow hold any name
    return _MODULES[fmt].unstorable(path)  # type: ignore[no-any-return]


def detect_format(output: str) -> str:
    """The format of an existing output, or EfxError if it is not one."""
    if os.path.isdir(output):
        above = os.path.dirname(os.path.abspath(output))
        if os.path.basename(os.path.abspath(output)) == parquet.META and parquet.is_output(above):
            raise EfxError(
                f"{output} is where the Parquet output {above} keeps its metadata: name {above}"
            )
        if os.path.isfile(os.path.join(output, npy.MANIFEST)):
            return "npy"
        if parquet.is_output(output):
            return "parquet"
        raise EfxError(
            f"not an efx output: folder {output} has neither {npy.MANIFEST} (.npy shards) nor "
            f"{parquet.MANIFEST} (Parquet)"
        )
    if os.path.isfile(output):
        if hdf5.is_hdf5(output):
            return "hdf5"
        raise EfxError(
            f"not an efx output: {output} is a file but not HDF5 (.npy shards and Parquet "
            "outputs are folders)"
        )
    raise EfxError(f"output not found: {output}")


def read(output: str) -> tuple[list[str], np.ndarray]:
    return _MODULES[detect_format(output)].read(output)  # type: ignore[no-any-return]


def describe(output: str) -> dict[str, Any]:
    fmt = detect_format(output)
    info: dict[str, Any] = {"output": output, "format": fmt}
    info.update(_MODULES[fmt].describe(output))
    return info
