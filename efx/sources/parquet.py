"""Parquet files with a column of encoded images: img2dataset's `jpg` column (binary), Hugging
Face's `Image` feature (a struct `{bytes, path}`), or any binary column of image files.

The image column is the one asked for (`--image-column`), else the only binary column (or
struct with a binary `bytes` field), else the only one of several whose first value is an image
file; anything else is refused with the choices named. An input's key is `FILE/KEY` with the
file's string `key` column (img2dataset's) when it names every row once, else `FILE/ROW` (the
row number in the file, from 0). Read with pyarrow a row group at a time, in batches of
BATCH_ROWS rows: never the whole file, or a whole row group, in memory.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from ..decode.reasons import sniff_format
from ..errors import EfxError
from ..facts import Facts
from ..files import open_input
from ..inputs import Input, Member
from ..remote import is_url
from .streams import NotImages, check_stop, first_line

BATCH_ROWS = 64  # rows decoded from Parquet at a time: a few MB of images
INSTALL_HINT = "pip install 'efx[parquet]'"
NOT_IMAGES = (None, "text", "HTML/XML/SVG text", "PDF")


class NoImageColumn(NotImages):
    """A Parquet file without a column of image bytes (img2dataset's metadata files)."""

    def __init__(self, path: str, columns: str) -> None:
        super().__init__(
            f"{path} has no column of image bytes (its columns: {columns}): not an image "
            "source (img2dataset writes such a file of metadata beside each .tar or .tfrecord "
            "shard: give efx the shards)",
            f"{path} has no column of image bytes, its columns being {columns}",
        )


def _pyarrow() -> Any:
    try:
        import pyarrow.parquet as pq
    except ImportError as error:
        raise EfxError(
            f"reading Parquet sources needs pyarrow, which is not installed ({error}): "
            f"{INSTALL_HINT}"
        ) from None
    return pq


def _open(path: str) -> Any:
    # An object by URL: pyarrow reads the footer and row groups by ranges of the file efx opens.
    source = open_input(path) if is_url(path) else path
    return _pyarrow().ParquetFile(source, pre_buffer=False, buffer_size=1 << 20)


def image_field(
    path: str, schema: Any, first: Callable[[], dict[str, bytes]], asked: str | None
) -> str:
    """The column (`name`, or `name.bytes` for a struct) holding the images; NoImageColumn or
    EfxError naming the choices when that cannot be told. `first()` gives the first value of
    each binary column, read only when several could hold the images."""
    import pyarrow as pa

    binary = (pa.types.is_binary, pa.types.is_large_binary, pa.types.is_fixed_size_binary)
    fields = {}
    for column in schema:
        if any(test(column.type) for test in binary):
            fields[column.name] = column.name
        elif pa.types.is_struct(column.type):
            inner = (
                column.type.field("bytes") if column.type.get_field_index("bytes") >= 0 else None
            )
            if inner is not None and any(test(inner.type) for test in binary):
                fields[column.name] = f"{column.name}.bytes"
    names = ", ".join(schema.names)
    if asked is not None:
        field = fields.get(asked.removesuffix(".bytes"))
        if field is None:
            choices = ", ".join(fields) or "none"
            raise EfxError(
                f"{path} has no column {asked!r} of image bytes (binary columns: {choices}; "
                f"all columns: {names}). Received: --image-column {asked}"
            )
        return field
    if not fields:
        raise NoImageColumn(path, names)
    if len(fields) == 1:
        return next(iter(fields.values()))
    values = first()
    images = [name for name, field in fields.items() if _is_image(values.get(field))]
    if len(images) == 1:
        return fields[images[0]]
    raise EfxError(
        f"{path} has several columns of bytes ({', '.join(fields)}) and efx cannot tell which "
        "holds the images: name it with --image-column"
    )


def _is_image(data: bytes | None) -> bool:
    return data is not None and sniff_format(data[:64]) not in NOT_IMAGES


def _values(batch: Any, field: str) -> list[bytes | None]:
    column = batch.column(field.split(".")[0])
    if field.endswith(".bytes") and hasattr(column, "field"):
        column = column.field("bytes")
    values: list[bytes | None] = column.to_pylist()
    return values


def _first_values(parquet: Any) -> dict[str, bytes]:
    """The first non-null value of each binary column (of the first batch), to sniff."""
    import pyarrow as pa

    found: dict[str, bytes] = {}
    if parquet.metadata.num_rows == 0:
        return found
    batch = next(parquet.iter_batches(batch_size=BATCH_ROWS, row_groups=[0]))
    for column in batch.schema:
        kind = column.type
        names = [column.name] if not pa.types.is_struct(kind) else []
        if pa.types.is_struct(kind) and kind.get_field_index("bytes") >= 0:
            names = [f"{column.name}.bytes"]
        for name in names:
            try:
                value = next((v for v in _values(batch, name) if isinstance(v, bytes)), None)
            except (TypeError, ValueError):
                continue
            if value is not None:
                found[name] = value
    return found


def layout(path: str, asked: str | None) -> tuple[str, str | None]:
    """(image column, key column or None) of a Parquet file; NoImageColumn, EfxError, OSError."""
    import pyarrow as pa

    parquet = _open(path)
    schema = parquet.schema_arrow
    field = image_field(path, schema, lambda: _first_values(parquet), asked)
    key = "key" if "key" in schema.names and pa.types.is_string(schema.field("key").type) else None
    return field, key


def scan(
    path: str, shard: Facts, field: str, key_column: str | None, keep: Sequence[str] = ()
) -> list[Input]:
    """The file's inputs, one per row in stored order, each with the SHA-256 of its image and
    its values of the columns in `keep` (those the file has). Damage (a row group that cannot
    be read) fails by the file's name; other row groups go on."""
    found: list[Input] = []
    keys: list[tuple[str | None, int]] = []  # (key column's value, row number)
    parquet = _open(path)
    kept = [name for name in keep if name in parquet.schema_arrow.names]
    columns = list(
        dict.fromkeys([field.split(".")[0], *([key_column] if key_column else []), *kept])
    )
    row = 0
    for group in range(parquet.metadata.num_row_groups):
        size = parquet.metadata.row_group(group).num_rows
        try:
            at = 0
            for batch in parquet.iter_batches(BATCH_ROWS, row_groups=[group], columns=columns):
                check_stop()
                names = batch.column(key_column).to_pylist() if key_column else [None] * len(batch)
                stored = _stored_paths(batch, field)
                values = [_plain(batch.column(name).to_pylist()) for name in kept]
                for i, (value, name, where) in enumerate(
                    zip(_values(batch, field), names, stored, strict=True)
                ):
                    inp = _row_input(path, shard, field, group, at, value, where)
                    if kept:
                        inp = inp._replace(
                            columns={n: v[i] for n, v in zip(kept, values, strict=True)}
                        )
                    found.append(inp)
                    keys.append((name, row + at))
                    at += 1
        except (OSError, ValueError, EfxError) as error:
            lost = f"rows {row + at}-{row + size - 1}" if size - at > 1 else f"row {row + at}"
            reason = f"Parquet row group {group} cannot be read ({first_line(error)}): {lost} lost"
            found.append(Input(path, path, facts=shard, reason=reason))
            keys.append((None, -1))
        row += size
    return _named(found, keys, path)


def _plain(values: list[Any]) -> list[Any]:
    """A kept column's values as Parquet stores scalars; lists and structs as JSON text."""
    import json

    return [json.dumps(v, default=str) if isinstance(v, (list, dict)) else v for v in values]


def _stored_paths(batch: Any, field: str) -> list[str | None]:
    """The `path` field of a Hugging Face image struct, per row (None elsewhere)."""
    column = batch.column(field.split(".")[0])
    struct = field.endswith(".bytes") and hasattr(column, "field")
    if struct and column.type.get_field_index("path") >= 0:
        paths: list[str | None] = column.field("path").to_pylist()
        return paths
    return [None] * len(batch)


def _row_input(
    path: str, shard: Facts, field: str, group: int, at: int, value: bytes | None,
    stored: str | None = None,
) -> Input:  # fmt: skip
    member = Member("parquet", group, at, field)
    column = field.removesuffix(".bytes")
    if value is None:
        reason = f"no image in this row: its {column} cell is null"
        if stored:  # Hugging Face's Image feature, pointing at a file outside the dataset
            reason = (
                f"no image bytes in this row: its {column} holds only a path ({stored!r}); "
                "efx embeds images stored in the file"
            )
        return Input(path, path, member, shard, reason=reason)
    return Input(path, path, member, shard._replace(sha256=hashlib.sha256(value).hexdigest()))


def _named(found: list[Input], keys: list[tuple[str | None, int]], path: str) -> list[Input]:
    """Each row's key: FILE/KEY where the key column names each row once, else FILE/ROW."""
    names = [key for inp, (key, _) in zip(found, keys, strict=True) if inp.member is not None]
    unique = all(names) and len(set(names)) == len(names)
    named = []
    for inp, (key, row) in zip(found, keys, strict=True):
        if inp.member is None:  # a lost row group: the file's own name
            named.append(inp)
        else:
            named.append(inp._replace(key=f"{path}/{key if unique else row}"))
    return named


def read(path: str, members: Sequence[Member]) -> Iterator[bytes]:
    """The image bytes of `members` (ascending), in order; OSError or ValueError if the file
    cannot give them, EOFError for a null cell."""
    parquet = _open(path)
    field = members[0].field if members else ""
    wanted = iter(members)
    member = next(wanted, None)
    while member is not None:
        group = member.at
        at = 0
        batches = parquet.iter_batches(
            BATCH_ROWS, row_groups=[group], columns=[field.split(".")[0]]
        )
        for batch in batches:
            values = None
            while member is not None and member.at == group and member.size < at + len(batch):
                values = values if values is not None else _values(batch, field)
                value = values[member.size - at]
                if value is None:
                    raise EOFError("null image cell")
                yield value
                member = next(wanted, None)
            at += len(batch)
            if member is None or member.at != group:
                break
        else:
            if member is not None and member.at == group:
                raise EOFError(f"row {member.size} of row group {group} is not in the file")


def find(path: str, name: str, asked: str | None = None) -> Member | None:
    """Where the row called `name` (its key, or its number) is in the file."""
    field, key_column = layout(path, asked)
    parquet = _open(path)
    sizes = [parquet.metadata.row_group(g).num_rows for g in range(parquet.metadata.num_row_groups)]
    row = int(name) if name.isdigit() else -1
    if key_column is not None:
        keys = parquet.read(columns=[key_column]).column(0).to_pylist()
        if len(set(keys)) == len(keys) and None not in keys:  # the key column names the rows
            row = keys.index(name) if name in keys else -1
    for group, size in enumerate(sizes):
        if 0 <= row < size:
            return Member("parquet", group, row, field)
        row -= size
    return None
