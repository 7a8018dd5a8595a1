"""Parquet files with a column of encoded images: img2dataset's `jpg` column (binary), Hugging
Face's `Image` feature (a struct `{bytes, path}`), its `Sequence(Image())` (a list of them per
row), or any column of image files, whatever Arrow type holds the bytes (binary, large_binary
as Polars writes, fixed-size, view, dictionary-encoded).

The image column is the one asked for (`--image-column`), else the only column that can hold
images, else the only one holding image files in the first batch of rows where any does (a
null or damaged first image does not decide); several are refused with the choices named. An
input's key is `FILE/KEY` with the file's `key` column of text (img2dataset's; string or
large_string) when it names every row once, else `FILE/ROW` (the row number in the file, from
0); each image of a list column adds its place, `FILE/KEY/I` (I from 0). Read with pyarrow a
row group at a time, in batches of BATCH_ROWS rows: never the whole file, or a whole row group,
in memory.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from ..decode.reasons import NOT_IMAGES, head_reason, sniff_format
from ..errors import EfxError
from ..facts import Facts
from ..inputs import Input, Member
from ..remote import is_url, open_file
from .streams import Ambiguous, NotImages, check_stop, first_line

BATCH_ROWS = 64  # rows decoded from Parquet at a time: a few MB of images
INSTALL_HINT = "pip install 'efx[parquet]'"


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
    # An object by URL: pyarrow reads the footer and row groups by ranges of the file efx
    # opens (from a server without ranges: of a temporary copy, efx.remote.open_file).
    source = open_file(path, whole=True) if is_url(path) else path
    return _pyarrow().ParquetFile(source, pre_buffer=False, buffer_size=1 << 20)


def _unwrapped(kind: Any) -> Any:
    """A dictionary-encoded type's value type (pandas Categorical, `dictionary_encode()`)."""
    import pyarrow as pa

    return kind.value_type if pa.types.is_dictionary(kind) else kind


def is_binary_like(kind: Any) -> bool:
    """Bytes, whatever Arrow type holds them: binary, large, fixed-size, view, dictionary."""
    import pyarrow as pa

    kind = _unwrapped(kind)
    tests = (pa.types.is_binary, pa.types.is_large_binary, pa.types.is_fixed_size_binary)
    return any(test(kind) for test in tests) or _is(pa.types, "is_binary_view", kind)


def is_string_like(kind: Any) -> bool:
    """Text, whatever Arrow type holds it: string, large (Polars), view, dictionary."""
    import pyarrow as pa

    kind = _unwrapped(kind)
    return (
        pa.types.is_string(kind)
        or pa.types.is_large_string(kind)
        or _is(pa.types, "is_string_view", kind)
    )


def _is(types: Any, name: str, kind: Any) -> bool:
    test = getattr(types, name, None)  # (view types: pyarrow 16 and newer)
    return bool(test is not None and test(kind))


def _image_fields(schema: Any) -> dict[str, str]:
    """Column name -> the field that can hold images: `name` (bytes), `name.bytes` (a struct
    with bytes: Hugging Face's Image), `name[]` / `name[].bytes` (a list of either: Hugging
    Face's Sequence(Image()), a row of several images)."""
    import pyarrow as pa

    def field_of(kind: Any) -> str | None:
        kind = _unwrapped(kind)
        if is_binary_like(kind):
            return ""
        if pa.types.is_struct(kind) and kind.get_field_index("bytes") >= 0:
            return ".bytes" if is_binary_like(kind.field("bytes").type) else None
        return None

    lists = ("is_list", "is_large_list", "is_fixed_size_list", "is_list_view", "is_large_list_view")
    fields = {}
    for column in schema:
        kind = _unwrapped(column.type)
        inner = field_of(kind)
        if inner is None and any(_is(pa.types, test, kind) for test in lists):
            item = field_of(kind.value_type)
            inner = None if item is None else f"[]{item}"
        if inner is not None:
            fields[column.name] = f"{column.name}{inner}"
    return fields


def image_field(
    path: str, schema: Any, values: Callable[[list[str]], Iterator[dict[str, list[Any]]]],
    asked: str | None,
) -> str:  # fmt: skip
    """The field (`name`, `name.bytes`, `name[]`, `name[].bytes`: see `_image_fields`) holding
    the images: the one asked for, else the only one that can, else the only one holding image
    files in the first batch of rows where any does (a first row with a null, empty or damaged
    image does not decide a file). `values(fields)` gives each batch's values of `fields`.
    NoImageColumn when no column can hold images, Ambiguous when several do, EfxError for a
    column asked for that cannot."""
    fields = _image_fields(schema)
    names = ", ".join(schema.names)
    if asked is not None:
        field = fields.get(asked.split(".")[0].removesuffix("[]"))
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
    rows = 0
    for batch in values(list(fields.values())):
        rows += len(next(iter(batch.values())))
        images = [name for name, field in fields.items() if any(map(_is_image, batch[field]))]
        if len(images) == 1:
            return fields[images[0]]
        if images:
            break
    if rows == 0:  # no row to read (an empty file): any column gives zero rows
        return next(iter(fields.values()))
    raise Ambiguous(
        f"{path}: several columns of bytes ({', '.join(fields)}) and efx cannot tell which "
        "holds the images: name it with --image-column"
    )


def _is_image(data: Any) -> bool:
    if isinstance(data, list):
        return any(map(_is_image, data))
    return isinstance(data, bytes) and sniff_format(data[:64]) not in NOT_IMAGES


def _values(batch: Any, field: str) -> list[Any]:
    """Each row's value of `field`: bytes or None; for a list field, a list of them (or None)."""
    column = batch.column(field.split(".")[0].removesuffix("[]"))
    values: list[Any] = column.to_pylist()
    if field.endswith(".bytes"):
        inner = field.endswith("[].bytes")
        values = [
            None if v is None else [_bytes_of(i) for i in v] if inner else _bytes_of(v)
            for v in values
        ]
    return values


def _bytes_of(item: dict[str, Any] | None) -> bytes | None:
    return None if item is None else item.get("bytes")


def _batches(
    parquet: Any, fields: list[str], stop: Callable[[], None]
) -> Iterator[dict[str, list[Any]]]:
    """The values of `fields` in each batch of rows, the whole file through (until the caller
    stops: it stops at the first batch that decides)."""
    columns = list(dict.fromkeys(f.split(".")[0].removesuffix("[]") for f in fields))
    for group in range(parquet.metadata.num_row_groups):
        batches = parquet.iter_batches(batch_size=BATCH_ROWS, row_groups=[group], columns=columns)
        try:
            for batch in batches:
                stop()
                values = {field: _values(batch, field) for field in fields}
                yield values
        except (OSError, ValueError):  # a damaged row group decides nothing (scan says why)
            continue


def layout(
    path: str, asked: str | None, stop: Callable[[], None] = check_stop
) -> tuple[str, str | None]:
    """(image field, key column or None) of a Parquet file; NoImageColumn, Ambiguous,
    EfxError, OSError. `stop()` is called between batches (a listing stops on Ctrl-C)."""
    parquet = _open(path)
    schema = parquet.schema_arrow
    field = image_field(path, schema, lambda fields: _batches(parquet, fields, stop), asked)
    named = "key" in schema.names and is_string_like(schema.field("key").type)
    return field, "key" if named else None


def scan(
    path: str, shard: Facts, field: str, key_column: str | None, keep: Sequence[str] = ()
) -> list[Input]:
    """The file's inputs in stored order, one per row (a list field: one per image of the
    row), each with the SHA-256 of its image and its values of the columns in `keep` (those
    the file has). Damage (a row group that cannot be read) fails by the file's name; other
    row groups go on."""
    found: list[Input] = []
    keys: list[tuple[str | None, int, int | None]] = []  # (key column's value, row, item)
    parquet = _open(path)
    kept = [name for name in keep if name in parquet.schema_arrow.names]
    base = field.split(".")[0].removesuffix("[]")
    columns = list(dict.fromkeys([base, *([key_column] if key_column else []), *kept]))
    listed = "[]" in field
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
                    cells = {n: v[i] for n, v in zip(kept, values, strict=True)}
                    empty = listed and value == []
                    for item, data, path_of in _row_images(value, where, listed):
                        inp = _row_input(
                            path, shard, field, group, at, data, path_of, item or 0, empty
                        )
                        keys.append((name, row + at, item))
                        found.append(inp._replace(columns=cells) if kept else inp)
                    at += 1
        except (OSError, ValueError, EfxError) as error:
            lost = f"rows {row + at}-{row + size - 1}" if size - at > 1 else f"row {row + at}"
            reason = f"Parquet row group {group} cannot be read ({first_line(error)}): {lost} lost"
            found.append(Input(path, path, facts=shard, reason=reason))
            keys.append((None, -1, None))
        row += size
    return _named(found, keys, path)


def _row_images(value: Any, stored: Any, listed: bool) -> list[tuple[int | None, Any, Any]]:
    """(place in the row's list, bytes or None, stored path or None) of each image of a row:
    one, placed None, for a plain field or a null or empty list (the row's one failure); for a
    list field, one per item."""
    if not listed:
        return [(None, value, stored)]
    if not value:
        return [(None, None, None)]
    paths = stored if isinstance(stored, list) else [None] * len(value)
    return [
        (item, data, where) for item, (data, where) in enumerate(zip(value, paths, strict=True))
    ]


def _plain(values: list[Any]) -> list[Any]:
    """A kept column's values as Parquet stores scalars; lists and structs as JSON text."""
    import json

    return [json.dumps(v, default=str) if isinstance(v, (list, dict)) else v for v in values]


def _stored_paths(batch: Any, field: str) -> list[Any]:
    """The `path` field of a Hugging Face image struct, per row (a list of them for a list
    field; None elsewhere)."""
    if not field.endswith(".bytes"):
        return [None] * len(batch)
    values = batch.column(field.split(".")[0].removesuffix("[]")).to_pylist()
    if field.endswith("[].bytes"):
        return [None if v is None else [i and i.get("path") for i in v] for v in values]
    return [v and v.get("path") for v in values]


def _row_input(
    path: str, shard: Facts, field: str, group: int, at: int, value: bytes | None,
    stored: str | None = None, item: int = 0, empty_list: bool = False,
) -> Input:  # fmt: skip
    member = Member("parquet", group, at, field, item)
    column = field.split(".")[0].removesuffix("[]")
    if value is None:
        reason = f"no image in this row: its {column} cell is null"
        if empty_list:
            reason = f"no image in this row: its {column} list is empty"
        elif stored:  # Hugging Face's Image feature, pointing at a file outside the dataset
            reason = (
                f"no image bytes in this row: its {column} holds only a path ({stored!r}); "
                "efx embeds images stored in the file"
            )
        return Input(path, path, member, shard, reason=reason)
    facts = shard._replace(sha256=hashlib.sha256(value).hexdigest())
    return Input(path, path, member, facts, reason=head_reason(value[:64]))


def _named(
    found: list[Input], keys: list[tuple[str | None, int, int | None]], path: str
) -> list[Input]:
    """Each row's key: FILE/KEY where the key column names each row once, else FILE/ROW; an
    image of a list field, FILE/KEY/I or FILE/ROW/I (I its place in the row's list)."""
    rows = {row: key for inp, (key, row, _) in zip(found, keys, strict=True) if inp.member}
    names = list(rows.values())
    unique = all(names) and len(set(names)) == len(names)
    named = []
    for inp, (key, row, item) in zip(found, keys, strict=True):
        if inp.member is None:  # a lost row group: the file's own name
            named.append(inp)
            continue
        name = f"{path}/{key if unique else row}"
        named.append(inp._replace(key=name if item is None else f"{name}/{item}"))
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
            BATCH_ROWS, row_groups=[group], columns=[field.split(".")[0].removesuffix("[]")]
        )
        for batch in batches:
            values = None
            while member is not None and member.at == group and member.size < at + len(batch):
                values = values if values is not None else _values(batch, field)
                value = values[member.size - at]
                if isinstance(value, list):
                    value = value[member.item] if member.item < len(value) else None
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
    """Where the image called `name` (its row's key or number; `/I` after it for the I-th
    image of a list field) is in the file."""
    field, key_column = layout(path, asked, stop=lambda: None)
    item = 0
    if "[]" in field:
        name, _, place = name.rpartition("/")
        if not place.isdigit():
            return None
        item = int(place)
    parquet = _open(path)
    sizes = [parquet.metadata.row_group(g).num_rows for g in range(parquet.metadata.num_row_groups)]
    row = int(name) if name.isdigit() else -1
    if key_column is not None:
        keys = parquet.read(columns=[key_column]).column(0).to_pylist()
        if len(set(keys)) == len(keys) and None not in keys:  # the key column names the rows
            row = keys.index(name) if name in keys else -1
    for group, size in enumerate(sizes):
        if 0 <= row < size:
            return Member("parquet", group, row, field, item)
        row -= size
    return None
