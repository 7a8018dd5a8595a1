"""A folder of Parquet files, read as one table by pyarrow, pandas, Polars, DuckDB, Spark,
Hugging Face datasets and autofaiss:

    OUT/part-00000.parquet   rows 0 .. N-1 (N = --shard-size), then part-00001.parquet …
    OUT/.efx/manifest.json   the run's settings, the parts and their rows, complete or not
    OUT/.efx/failures.pq     the inputs that could not be embedded (Parquet): path, error, facts

Nothing but the parts is visible to readers: pyarrow's dataset discovery (and so pandas) and
Hugging Face datasets skip names starting with `.` (as Hive and Spark do), and nothing in `.efx/`
is named `*.parquet`, so the recursive globs of DuckDB (`OUT/**/*.parquet`) and of autofaiss'
embedding_reader do not take it for data (with `_efx/failures.parquet` they did: DuckDB counted
the failures as rows, autofaiss stopped with KeyError 'embedding'; Hugging Face datasets read
`_efx/`'s files). Polars' scan of a folder takes every file below it: give it the glob
`OUT/*.parquet`. Zero-padded names make lexicographic order row order.

Columns of a part: `path` (the row's name: the image file's path, or SHARD/NAME for an image in a
shard, as in the other formats), `embedding` (fixed_size_list<float32>[D]), the file facts
--update compares (`size` bytes, `mtime_ns`, `sha256` hex; null where unknown), and for an image
in a shard the `shard` (its file) and `key` (the dataset's own key: a WebDataset sample's
`__key__`, a Parquet source's key column or row number, a TFRecord's record number; null for a
loose file), then any source columns kept with --keep-columns. Each file's key-value metadata
`efx` holds the run's settings (JSON) as the manifest does.

Parquet files cannot be appended to, so crash safety is built around them: the rows of the file
being filled go to an Arrow IPC stream in `.efx/` (appended to and committed at every flush, as
.npy shards are); when it holds N rows they are written to a Parquet file beside it, which is
then renamed into place, and the manifest records it. A kill at any instant loses at most the
rows since the last flush; readers only ever see whole files; `complete` is true only once the
last (short) file is in place.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, BinaryIO

import numpy as np

from ..config import DEFAULT_SHARD_SIZE
from ..errors import EfxError
from ..facts import UNKNOWN, Facts
from ..files import replace, write_atomically
from ..names import readable, to_json
from . import folder

META = ".efx"
MANIFEST = f"{META}/manifest.json"
FAILURES = f"{META}/failures.pq"  # not *.parquet: see above
_FAILURE_LOG = f"{META}/failures.jsonl"  # efx's own, committed line by line
LAYOUT = "efx-parquet/1"
# Rows per row group (the unit a reader fetches: efx similar reads only the row groups of the
# rows it shows), the codec, and the embedding floats' encoding: chosen by
# scripts/bench_parquet.py (README: "Parquet output, measured"). BYTE_STREAM_SPLIT stores each
# byte of the floats apart, which zstd then compresses: dense rows 84% of raw against 92% with
# zstd alone, real (Lite0) features 58% against 59%, at the same write time.
ROW_GROUP_ROWS = 1024
COMPRESSION = "zstd"
BYTE_STREAM_SPLIT = True
_FACT_COLUMNS = ("size", "mtime_ns", "sha256")
SOURCE_COLUMNS = ("shard", "key")
_LAYOUT_KEYS = frozenset(
    {"format", "complete", "count", "failed", "shard_size", "parts", "filling", "next_filling"}
)


def pyarrow() -> Any:
    try:
        import pyarrow as pa
        import pyarrow.ipc  # noqa: F401
        import pyarrow.parquet  # noqa: F401
    except ImportError:
        raise EfxError("Parquet output needs pyarrow: pip install 'efx[parquet]'") from None
    return pa


def is_output(output: str) -> bool:
    return os.path.isfile(os.path.join(output, MANIFEST))


def check_target(output: str, overwrite: bool) -> None:
    pyarrow()  # refused before any work when it is missing
    a_file = "Parquet output is a folder of part-NNNNN.parquet files: name a new folder"
    folder.check_target(output, overwrite, MANIFEST, a_file)


def unstorable(path: str) -> str | None:
    """Why a Parquet file cannot store `path` as a row's name (its strings are UTF-8), or None."""
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        return "name is not valid UTF-8, which Parquet strings cannot hold (use .h5)"
    return None


def part_name(number: int) -> str:
    return f"part-{number:05d}.parquet"


def schema(dim: int, attrs: dict[str, Any]) -> Any:
    """The parts' Arrow schema; `attrs` go in its metadata, under `efx`, as JSON. Kept source
    columns (`keep_columns`) have the types `keep_column_types` names."""
    pa = pyarrow()
    names, types = attrs.get("keep_columns") or [], attrs.get("keep_column_types") or []
    kinds = [*types, *["string"] * (len(names) - len(types))]
    kept = [pa.field(name, _type(kind)) for name, kind in zip(names, kinds, strict=True)]
    return pa.schema(
        [
            pa.field("path", pa.string(), nullable=False),
            pa.field("embedding", pa.list_(pa.float32(), dim), nullable=False),
            pa.field("size", pa.int64()),
            pa.field("mtime_ns", pa.int64()),
            pa.field("sha256", pa.string()),
            pa.field("shard", pa.string()),
            pa.field("key", pa.string()),
            *kept,
        ],
        metadata={"efx": to_json(attrs)},
    )


def _type(kind: str) -> Any:
    """An Arrow type from its name as `str(type)` writes it (the kept columns' types)."""
    pa = pyarrow()
    try:
        return pa.type_for_alias(kind)
    except ValueError:
        return pa.string()  # nested or unusual types are kept as their JSON text


def _failure_schema() -> Any:
    pa = pyarrow()
    return pa.schema(
        [
            pa.field("path", pa.string(), nullable=False),
            pa.field("error", pa.string(), nullable=False),
            pa.field("size", pa.int64()),
            pa.field("mtime_ns", pa.int64()),
            pa.field("sha256", pa.string()),
        ]
    )


def _remove_previous(output: str) -> None:
    """Delete an earlier efx output's own files (and nothing else) from `output`."""
    for path in folder.own_files(output, "part-*.parquet"):
        os.remove(path)
    for path in folder.own_files(os.path.join(output, META), "*"):
        os.remove(path)


class ParquetWriter:
    """Appends rows to the file being filled (an Arrow IPC stream in `.efx/`), commits them at
    each `flush` (the manifest, replaced atomically, records how many), and turns every N rows
    into a Parquet file renamed into place. See the module docstring for the layout.

    With `keep=(rows, failures)` it reopens an interrupted output and continues after that many
    rows and failures (`--resume`), dropping anything past them.
    """

    def __init__(
        self,
        output: str,
        attrs: dict[str, Any],
        *,
        inputs: Sequence[str] = (),  # HDF5's; Parquet takes names of any length
        shard_size: int = DEFAULT_SHARD_SIZE,
        keep: tuple[int, int] | None = None,
    ) -> None:
        if shard_size < 1:
            raise EfxError(f"--shard-size must be at least 1. Received: {shard_size}")
        self._pa = pyarrow()
        self._output = output
        self._dim = int(attrs["feature_dim"])
        self._parts: list[dict[str, Any]] = []  # finished: {"file", "rows"}
        self._failed = 0
        self._sink: BinaryIO | None = None
        self._stream: Any = None
        self._written = 0  # rows handed to the file being filled
        self._committed = 0  # of them, those the manifest counts
        if keep is None:
            os.makedirs(os.path.join(output, META), exist_ok=True)
            _remove_previous(output)
            self._attrs = dict(attrs)
            self._shard_size = shard_size
            self._next = 0
            self._schema = schema(self._dim, self._attrs)
            self._failures = open(self._path(_FAILURE_LOG), "wb")  # noqa: SIM115
            self._start_filling([])
        else:
            manifest = _manifest(output)
            self._attrs = {k: v for k, v in manifest.items() if k not in _LAYOUT_KEYS}
            self._attrs.update({k: v for k, v in attrs.items() if k != "created"})
            if "keep_column_types" in manifest:  # the rows kept have them: so do the next
                self._attrs["keep_column_types"] = manifest["keep_column_types"]
            self._shard_size = int(manifest["shard_size"])  # the same layout as before
            self._next = int(manifest.get("next_filling", 0))
            self._schema = schema(self._dim, self._attrs)
            self._keep(manifest, *keep)
        self._write_manifest(complete=False)
        self._remove_strays()

    def write(
        self,
        paths: list[str],
        embeddings: np.ndarray,
        facts: Sequence[Facts] | None = None,
        columns: Mapping[str, Sequence[Any]] | None = None,
    ) -> None:
        """Append rows; `columns` gives other columns of the schema (`shard`, `key`, kept
        source columns) a value per row, null where absent."""
        batch = self._batch(paths, embeddings, facts, columns or {})
        start = 0
        while start < batch.num_rows:
            take = min(batch.num_rows - start, self._shard_size - self._written)
            self._stream.write_batch(batch.slice(start, take))
            self._written += take
            start += take
            if self._written == self._shard_size:
                self._finish_part()

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
        if self._written or not self._parts:
            # The last file, short; or, for a run without rows, an empty one: readers then
            # see the columns and no rows, rather than no table at all.
            self._finish_part()
        self._write_failures()
        self._failures.close()
        self._close_filling()
        self._write_manifest(complete=True)
        self._remove_strays()

    def abort(self) -> None:
        """Leave the output incomplete, holding the rows committed so far; every file is closed,
        even where committing more fails (a full disk), and the manifest is then left as the
        last commit wrote it."""
        if self._failures.closed:
            return
        try:
            self._commit(sync=True)
            self._write_failures()
        finally:
            folder.close_all(self._failures.close, self._close_filling)
        self._write_manifest(complete=False)

    def _batch(
        self,
        paths: list[str],
        embeddings: np.ndarray,
        facts: Sequence[Facts] | None,
        columns: Mapping[str, Sequence[Any]],
    ) -> Any:
        pa = self._pa
        facts = facts or [UNKNOWN] * len(paths)
        values = pa.array(np.ascontiguousarray(embeddings, np.float32).reshape(-1))
        arrays = [
            pa.array(paths, pa.string()),
            pa.FixedSizeListArray.from_arrays(values, self._dim),
            *_fact_arrays(pa, facts),
        ]
        for field in list(self._schema)[len(arrays) :]:
            given = columns.get(field.name)
            arrays.append(pa.array(given if given is not None else [None] * len(paths)))
            if arrays[-1].type != field.type:
                arrays[-1] = arrays[-1].cast(field.type)
        return pa.record_batch(arrays, schema=self._schema)

    def _start_filling(self, batches: list[Any]) -> None:
        """A new file to fill, holding `batches` (the rows kept by --resume), committed."""
        self._filling = f"{META}/filling-{self._next:05d}.arrows"
        self._next += 1
        self._sink = open(self._path(self._filling), "wb")  # noqa: SIM115
        self._stream = self._pa.ipc.new_stream(self._sink, self._schema)
        for batch in batches:
            self._stream.write_batch(batch)
        self._written = sum(batch.num_rows for batch in batches)
        self._commit(sync=True)

    def _commit(self, sync: bool) -> None:
        self._failures.flush()
        if sync:
            os.fsync(self._failures.fileno())
        if self._sink is not None:
            self._sink.flush()
            if sync:
                os.fsync(self._sink.fileno())
        self._committed = self._written

    def _finish_part(self) -> None:
        """The file being filled becomes part-NNNNN.parquet: written in `.efx/`, renamed into
        place, then the manifest lists it and a new file is filled."""
        self._commit(sync=True)
        self._close_filling()
        name = part_name(len(self._parts))
        scratch = self._path(f"{META}/{name}.partial")
        with self._pa.OSFile(self._path(self._filling)) as source:  # read, not mapped: a row
            reader = self._pa.ipc.open_stream(source)  # group at a time in memory
            write_part(_first_rows(reader, self._committed), self._schema, scratch)
        replace(scratch, self._path(name))
        self._parts.append({"file": name, "rows": self._committed})
        done = self._filling
        self._start_filling([])
        self._write_failures()
        self._write_manifest(complete=False)
        os.remove(self._path(done))

    def _close_filling(self) -> None:
        stream, sink = self._stream, self._sink
        self._stream = self._sink = None
        folder.close_all(*(each.close for each in (stream, sink) if each is not None))

    def _keep(self, manifest: dict[str, Any], rows: int, failures: int) -> None:
        """Reopen for --resume: keep the first `rows` rows and `failures` failures. A file cut
        short becomes the one being filled, under a new name: until the manifest says so, the
        old one stays as it was."""
        left, batches = rows, []
        for part in manifest["parts"]:
            take = min(left, int(part["rows"]))
            left -= take
            if take == int(part["rows"]):
                self._parts.append(part)
            elif take > 0:
                batches = _part_table(self._output, part).slice(0, take).to_batches()
        filling = manifest.get("filling")
        if left > 0 and filling:
            batches = _read_filling(self._output, filling["file"], left).to_batches()
        kept = _failure_records(self._output, int(manifest.get("failed", 0)))[:failures]
        lines = b"".join(folder.failure_line(record) for record in kept)
        write_atomically(self._path(_FAILURE_LOG), lines)
        self._failures = open(self._path(_FAILURE_LOG), "ab")  # noqa: SIM115
        self._failed = len(kept)
        self._start_filling(batches)
        if self._written == self._shard_size:
            self._finish_part()

    def _write_failures(self) -> None:
        """failures.pq: every committed failure, replaced whole."""
        self._failures.flush()
        records = _failure_records(self._output, self._failed)
        table = _failures_table(records)
        scratch = self._path(FAILURES + ".partial")
        self._pa.parquet.write_table(table, scratch, compression=COMPRESSION)
        replace(scratch, self._path(FAILURES))

    def _write_manifest(self, complete: bool, sync: bool = True) -> None:
        manifest = {
            **self._attrs,
            "format": LAYOUT,
            "complete": complete,
            "count": sum(int(part["rows"]) for part in self._parts) + self._committed,
            "failed": self._failed,
            "shard_size": self._shard_size,
            "parts": self._parts,
            "filling": {"file": self._filling, "rows": self._committed} if not complete else None,
            "next_filling": self._next,
        }
        write_atomically(self._path(MANIFEST), folder.manifest_bytes(manifest), sync)

    def _remove_strays(self) -> None:
        """What a killed run left that the manifest does not list: a part renamed into place
        just before the kill (its rows are still in the file being filled), an older file being
        filled, scratch files."""
        listed = {part["file"] for part in self._parts}
        for path in folder.own_files(self._output, "part-*.parquet"):
            if os.path.basename(path) not in listed:
                os.remove(path)
        current = self._path(self._filling) if self._stream is not None else None
        for path in folder.own_files(os.path.join(self._output, META), "filling-*.arrows"):
            if path != current:
                os.remove(path)
        for path in folder.own_files(os.path.join(self._output, META), "*.partial"):
            os.remove(path)

    def _path(self, name: str) -> str:
        return os.path.join(self._output, name)


def write_part(batches: Iterator[Any], schema: Any, path: str) -> None:
    """One Parquet file of the rows of `batches`, in row groups of ROW_GROUP_ROWS, fsync'ed;
    one row group in memory at a time. The embedding floats are neither dictionary-encoded nor
    given min/max statistics (neither helps a vector)."""
    pa = pyarrow()
    names = [name for name in schema.names if name != "embedding"]
    options: dict[str, Any] = {}
    if BYTE_STREAM_SPLIT:  # Parquet's name for the list's floats
        options["use_byte_stream_split"] = ["embedding.list.element"]
    with open(path, "wb") as file:
        writer = pa.parquet.ParquetWriter(
            file, schema, compression=COMPRESSION, use_dictionary=["shard"],
            write_statistics=names, **options,
        )  # fmt: skip
        for group in _row_groups(batches, schema):
            writer.write_table(group, row_group_size=ROW_GROUP_ROWS)
        writer.close()
        file.flush()
        os.fsync(file.fileno())


def _row_groups(batches: Iterator[Any], schema: Any) -> Iterator[Any]:
    """Tables of ROW_GROUP_ROWS rows (the last one shorter) from batches of any size."""
    pa = pyarrow()
    held: list[Any] = []
    count = 0
    for batch in batches:
        held.append(batch)
        count += batch.num_rows
        while count >= ROW_GROUP_ROWS:
            table = pa.Table.from_batches(held, schema=schema)
            yield table.slice(0, ROW_GROUP_ROWS)
            held = table.slice(ROW_GROUP_ROWS).to_batches()
            count -= ROW_GROUP_ROWS
    if count:
        yield pa.Table.from_batches(held, schema=schema)


def _first_rows(reader: Any, rows: int) -> Iterator[Any]:
    """The record batches of an IPC stream up to `rows` rows (the last one cut to fit)."""
    have = 0
    while have < rows:
        batch = reader.read_next_batch()
        batch = batch.slice(0, rows - have)
        have += batch.num_rows
        yield batch


def _fact_arrays(pa: Any, facts: Sequence[Facts]) -> list[Any]:
    sizes = np.array([f.size for f in facts], np.int64)
    dates = np.array([f.mtime_ns for f in facts], np.int64)
    return [
        pa.array(sizes, mask=sizes < 0),
        pa.array(dates, mask=sizes < 0),
        pa.array([f.sha256 or None for f in facts], pa.string()),
    ]


def _facts_of(table: Any) -> list[Facts]:
    sizes = table.column("size").to_pylist()
    dates = table.column("mtime_ns").to_pylist()
    digests = table.column("sha256").to_pylist()
    return [
        Facts(-1 if s is None else s, -1 if m is None else m, d or "")
        for s, m, d in zip(sizes, dates, digests, strict=True)
    ]


def _failures_table(records: list[dict[str, Any]]) -> Any:
    pa = pyarrow()
    facts = [folder.failure_facts(record) for record in records]
    return pa.table(
        [
            # A name that is not UTF-8 (it can only fail here) with its bytes escaped.
            pa.array([readable(r["path"]) for r in records], pa.string()),
            pa.array([r["error"] for r in records], pa.string()),
            *_fact_arrays(pa, facts),
        ],
        schema=_failure_schema(),
    )


def _failure_records(output: str, committed: int) -> list[dict[str, Any]]:
    return folder.failure_records(os.path.join(output, _FAILURE_LOG), committed)


def _manifest(output: str) -> dict[str, Any]:
    return folder.read_manifest(output, MANIFEST)


def _read_filling(output: str, name: str, rows: int) -> Any:
    """The first `rows` rows of a file being filled (an Arrow IPC stream; memory-mapped, so
    its rows are not copied). Batches past them may be cut short by a kill: never read."""
    pa = pyarrow()
    source = pa.memory_map(os.path.join(output, name))
    reader = pa.ipc.open_stream(source)
    batches, have = [], 0
    while have < rows:
        batch = reader.read_next_batch()
        batches.append(batch.slice(0, rows - have))
        have += batches[-1].num_rows
    return pa.Table.from_batches(batches, schema=reader.schema)


def _part_table(output: str, part: dict[str, Any], columns: list[str] | None = None) -> Any:
    pa = pyarrow()
    return pa.parquet.read_table(os.path.join(output, part["file"]), columns=columns)


def _pieces(output: str) -> tuple[dict[str, Any], list[tuple[Any, int | None]]]:
    """The manifest, and every committed row's row group in row order: (an open ParquetFile,
    its row group number), then (the rows of the file being filled, None). Taken together:
    if a run turns the file being filled into a part (and removes it) between reading the
    manifest and opening the file, the manifest is read again; once open, files may go."""
    pa = pyarrow()
    for attempt in range(50):
        manifest = _manifest(output)
        try:
            pieces: list[tuple[Any, int | None]] = []
            for part in manifest["parts"]:
                file = pa.parquet.ParquetFile(os.path.join(output, part["file"]))
                pieces += [(file, group) for group in range(file.num_row_groups)]
            filling = manifest.get("filling")
            if filling and int(filling["rows"]):
                rows = int(filling["rows"])
                pieces.append((_read_filling(output, filling["file"], rows), None))
            return manifest, pieces
        except FileNotFoundError:
            if attempt == 49:
                raise
    raise AssertionError("unreachable")


def _group(piece: tuple[Any, int | None], columns: list[str] | None = None) -> Any:
    """A row group's table (`columns` only, if given)."""
    source, group = piece
    if group is None:
        return source.select(columns) if columns is not None else source
    return source.read_row_group(group, columns=columns)


def _other_columns(piece: tuple[Any, int | None]) -> list[str]:
    """A row group's columns beyond path, embedding and the file facts (shard, key, kept)."""
    source, group = piece
    schema = source.schema if group is None else source.schema_arrow
    return [n for n in schema.names if n not in ("path", "embedding", *_FACT_COLUMNS)]


def _rows_in(piece: tuple[Any, int | None]) -> int:
    source, group = piece
    return int(source.num_rows if group is None else source.metadata.row_group(group).num_rows)


def embeddings_of(column: Any, dim: int) -> np.ndarray:
    """A fixed_size_list<float32>[D] column as an (n, D) float32 array."""
    pa = pyarrow()
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks() if column.num_chunks else pa.array([], column.type)
    values = column.flatten().to_numpy(zero_copy_only=False)  # flatten honours slices
    return np.asarray(values, np.float32).reshape(-1, dim)


def iter_rows(output: str, block: int = 0) -> Iterator[tuple[list[str], np.ndarray]]:
    """(paths, embeddings) of each row group in order: one row group in memory at a time."""
    manifest, pieces = _pieces(output)
    dim = int(manifest["feature_dim"])
    for piece in pieces:
        table = _group(piece, ["path", "embedding"])
        yield table.column("path").to_pylist(), embeddings_of(table.column("embedding"), dim)


def iter_table(
    output: str,
) -> Iterator[tuple[list[str], np.ndarray, dict[str, list[Any]]]]:
    """(paths, embeddings, the other columns but the facts) a row group at a time: what a merge
    or a conversion carries into another Parquet output."""
    manifest, pieces = _pieces(output)
    dim = int(manifest["feature_dim"])
    for piece in pieces:
        others = _other_columns(piece)
        table = _group(piece, ["path", "embedding", *others])
        yield (
            table.column("path").to_pylist(),
            embeddings_of(table.column("embedding"), dim),
            {n: table.column(n).to_pylist() for n in others},
        )


def read(output: str) -> tuple[list[str], np.ndarray]:
    dim = int(_manifest(output).get("feature_dim", 0))
    paths: list[str] = []
    blocks = []
    for block_paths, embeddings in iter_rows(output):
        paths += block_paths
        blocks.append(embeddings)
    return paths, np.concatenate(blocks) if blocks else np.zeros((0, dim), np.float32)


def rows(output: str, indices: list[int]) -> np.ndarray:
    """The embeddings of the rows at `indices` (in that order), reading only their row groups."""
    return folder.take_rows(RowReader(output), indices)


class RowReader:
    """Embeddings of chosen rows, a row group at a time (the last few kept: --update copies
    rows in order, efx similar reads a handful)."""

    def __init__(self, output: str) -> None:
        manifest, self._pieces = _pieces(output)
        self._dim = int(manifest["feature_dim"])
        counts = [_rows_in(piece) for piece in self._pieces]
        self._starts = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        self._cache: dict[int, np.ndarray] = {}

    def take(self, indices: np.ndarray) -> np.ndarray:
        indices = np.asarray(indices, dtype=np.int64)
        picked = np.zeros((len(indices), self._dim), np.float32)
        piece_of = np.searchsorted(self._starts, indices, side="right") - 1
        for piece in np.unique(piece_of):
            inside = piece_of == piece
            picked[inside] = self._rows(int(piece))[indices[inside] - self._starts[piece]]
        return picked

    def _rows(self, piece: int) -> np.ndarray:
        if piece not in self._cache:
            table = _group(self._pieces[piece], ["embedding"])
            if len(self._cache) >= 4:
                self._cache.pop(next(iter(self._cache)))
            self._cache[piece] = embeddings_of(table.column("embedding"), self._dim)
        return self._cache[piece]

    def columns(self, indices: list[int]) -> dict[str, list[Any]]:
        """The rows' columns beyond path, embedding and the file facts (shard, key, kept source
        columns), each a list in the order of `indices`."""
        at = np.asarray(indices, np.int64)
        piece_of = np.searchsorted(self._starts, at, side="right") - 1
        found: dict[str, list[Any]] = {}
        for piece in np.unique(piece_of):
            names = _other_columns(self._pieces[int(piece)])
            table = _group(self._pieces[int(piece)], names)  # not the embeddings
            inside = np.flatnonzero(piece_of == piece)
            picked = table.take(at[inside] - self._starts[piece])
            for name in names:
                column = found.setdefault(name, [None] * len(indices))
                for i, value in zip(inside, picked.column(name).to_pylist(), strict=True):
                    column[i] = value
        return found

    def close(self) -> None:
        self._pieces.clear()
        self._cache.clear()


def read_failures(output: str, limit: int | None = None) -> list[dict[str, str]]:
    """The committed failures: {"path", "error"} each, as for the other formats."""
    records = _failure_records(output, int(_manifest(output).get("failed", 0)))[:limit]
    return [{"path": record["path"], "error": record["error"]} for record in records]


def read_state(output: str, facts: bool = False) -> dict[str, Any]:
    """Everything --resume needs: the settings, the paths done and failed, completeness; with
    `facts`, what --update needs too: each row's and failure's facts, the failures' reasons."""
    manifest, pieces = _pieces(output)
    paths: list[str] = []
    row_facts: list[Facts] = []
    for piece in pieces:
        table = _group(piece, ["path", *(_FACT_COLUMNS if facts else ())])
        paths += table.column("path").to_pylist()
        if facts:
            row_facts += _facts_of(table)
    failures = _failure_records(output, int(manifest.get("failed", 0)))
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
        state["has_facts"] = True
    return state


def refresh_facts(
    output: str, rows: Sequence[Facts], failures: Sequence[Facts], updated: str
) -> None:
    """Record new facts of the same rows and failures (an update that found only touched files):
    each part whose facts changed is rewritten beside itself and renamed over; the embeddings
    are the same values. A kill leaves every row with its old facts or its new ones."""
    pa = pyarrow()
    manifest = _manifest(output)
    start = 0
    for part in manifest["parts"]:
        count = int(part["rows"])
        new = list(rows[start : start + count])
        start += count
        table = _part_table(output, part)
        if _facts_of(table) == new:
            continue
        for name, array in zip(_FACT_COLUMNS, _fact_arrays(pa, new), strict=True):
            table = table.set_column(table.schema.get_field_index(name), name, array)
        scratch = os.path.join(output, META, part["file"] + ".partial")
        write_part(iter(table.to_batches()), table.schema, scratch)
        replace(scratch, os.path.join(output, part["file"]))
    records = _failure_records(output, int(manifest.get("failed", 0)))
    if [folder.failure_facts(record) for record in records] != list(failures):
        records = [
            {**record, **found._asdict()} for record, found in zip(records, failures, strict=True)
        ]
        lines = b"".join(folder.failure_line(record) for record in records)
        write_atomically(os.path.join(output, _FAILURE_LOG), lines)
        scratch = os.path.join(output, FAILURES + ".partial")
        pa.parquet.write_table(_failures_table(records), scratch, compression=COMPRESSION)
        replace(scratch, os.path.join(output, FAILURES))
    manifest["updated"] = updated
    write_atomically(os.path.join(output, MANIFEST), folder.manifest_bytes(manifest))


def filled_columns(output: str) -> list[str]:
    """The columns beyond path, embedding and the file facts with a value in some row (an
    output of image files only has `shard` and `key` all null)."""
    manifest, pieces = _pieces(output)
    names = [*SOURCE_COLUMNS, *(manifest.get("keep_columns") or [])]
    filled = set()
    for piece in pieces:
        table = _group(piece, names)
        filled |= {n for n in names if table.column(n).null_count < table.num_rows}
    return [name for name in names if name in filled]


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
        "parts": len(manifest.get("parts", [])),
        "shard_size": int(manifest.get("shard_size", DEFAULT_SHARD_SIZE)),
        "file_facts": True,
    }
