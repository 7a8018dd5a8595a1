"""`efx merge`: the outputs of `--shard I/N` runs, combined into exactly the output of one run
over all the inputs; `efx convert`: one output written in another format. Reads and writes
through the writers only: no TensorFlow.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable
from dataclasses import asdict, dataclass, replace
from datetime import datetime, timezone
from typing import Any

from . import remote, writers
from .config import DEFAULT_SHARD_SIZE, check_positive, parse_part
from .errors import EfxError
from .formats import FORMATS
from .names import escape
from .recorded import PARTS, Recorded
from .writers import bucket

# What a merged output keeps of its parts' metadata (the rest is per part).
_MERGED_ATTRS = (
    "model",
    "model_handle",
    "standin",
    "image_size",
    "feature_dim",
    "resize",
    "exif_orientation",
    "precision",
    "precision_requested",
    "backend",
    "efx_version",
    "tensorflow_version",
    "device",
    "inputs_total",
    "image_column",
    "image_key",
    "keep_columns",
    "keep_column_types",
)


@dataclass
class MergeSummary:
    output: str
    format: str
    parts: int
    embedded: int
    failed: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def merge(
    parts: Iterable[str],
    output: str,
    *,
    format: str | None = None,  # noqa: A002 - mirrors --format
    shard_size: int | None = None,  # None: DEFAULT_SHARD_SIZE
    overwrite: bool = False,
    storage_options: dict[str, Any] | None = None,
) -> MergeSummary:
    """Combine the outputs of `--shard I/N` runs (either format) into `output` (either format):
    exactly the rows, failures and order of one run over all the inputs. Parts and `output`
    may be URLs of outputs in a bucket (efx.writers.bucket), `storage_options` going to their
    fsspec filesystems as efx.extract takes them."""
    with remote.using(storage_options):
        return _merge(list(parts), output, format, shard_size, overwrite)


def _merge(
    parts: list[str],
    output: str,
    format: str | None,
    shard_size: int | None,
    overwrite: bool,  # noqa: A002
) -> MergeSummary:
    fmt = writers.format_for(output, format)
    if remote.is_url(output):
        with bucket.written(output, fmt, overwrite) as local:
            done = _merge(parts, local, fmt, shard_size, True)
        return replace(done, output=output)
    parts = [bucket.reading(part) for part in parts]
    check_positive("--shard-size", shard_size)
    if not parts:
        raise EfxError("name the PART outputs to merge")
    for part in parts:
        if os.path.abspath(part) == os.path.abspath(output):
            raise EfxError(f"OUTPUT {output} is also one of the parts")
    writers.check_output(output, fmt, overwrite)
    described = {part: writers.describe(part) for part in parts}
    ordered, inputs = _check_parts(parts, described)
    try:
        writer = writers.open_writer(
            fmt, output, _merged_attrs([described[p] for p in ordered]),
            inputs=inputs, shard_size=shard_size or DEFAULT_SHARD_SIZE,
        )  # fmt: skip
    except OSError as error:
        raise EfxError(f"cannot create OUTPUT {output}: {error.strerror or error}") from error
    embedded, failed = _copy(ordered, writer, output)
    return MergeSummary(output, fmt, len(ordered), embedded, failed)


def convert(
    source: str,
    output: str,
    *,
    format: str | None = None,  # noqa: A002 - mirrors --format
    shard_size: int | None = None,  # None: the source's own, else DEFAULT_SHARD_SIZE
    overwrite: bool = False,
    storage_options: dict[str, Any] | None = None,
) -> ConvertSummary:
    """Write an output of one format (HDF5, .npy shards, Parquet) as another: the same rows,
    embeddings bit for bit, file facts, failures and settings. No model. Columns only Parquet
    holds (shard, key, kept source columns) are listed in `dropped` when OUTPUT cannot hold
    them; a finished SOURCE only. Either may be the URL of an output in a bucket
    (`storage_options` as efx.extract takes them)."""
    with remote.using(storage_options):
        return _convert(source, output, format, shard_size, overwrite)


def _convert(
    source: str,
    output: str,
    format: str | None,
    shard_size: int | None,
    overwrite: bool,  # noqa: A002
) -> ConvertSummary:
    fmt = writers.format_for(output, format)
    if remote.is_url(output) and fmt not in writers.STREAM_FORMATS:
        with bucket.written(output, fmt, overwrite) as local:
            done = _convert(source, local, fmt, shard_size, True)
        return replace(done, source=source, output=output)
    source = bucket.reading(source)
    if fmt in writers.STREAM_FORMATS:
        raise EfxError(f"efx convert writes a file format: {', '.join(writers.FILE_FORMATS)}")
    check_positive("--shard-size", shard_size)
    if os.path.abspath(source) == os.path.abspath(output):
        raise EfxError(f"OUTPUT {output} is SOURCE itself: name a new OUTPUT")
    writers.check_output(output, fmt, overwrite)
    described = writers.describe(source)
    if not described.get("complete"):
        raise EfxError(f"{source} is unfinished: finish it with efx extract --resume first")
    state = writers.read_state(source)
    for path in state.paths + state.failed:
        if (why := writers.unstorable(fmt, path)) is not None:
            raise EfxError(f"{fmt} cannot hold a row of {source}: {escape(path)}: {why}")
    layout = ("output", "format", "count", "dtype", "failed", "failures", "complete", "shards")
    attrs = {
        k: v
        for k, v in described.items()
        if k not in (*layout, "parts", "file_facts", "shard_size")
    }
    dropped = [] if FORMATS[fmt].columns else writers.columns_of(source)
    if not FORMATS[fmt].columns:
        attrs.pop("keep_columns", None)
        attrs.pop("keep_column_types", None)
    try:
        writer = writers.open_writer(
            fmt, output, attrs, inputs=state.paths + state.failed,
            shard_size=shard_size or int(state.shard_size or DEFAULT_SHARD_SIZE),
        )  # fmt: skip
    except OSError as error:
        raise EfxError(f"cannot create OUTPUT {output}: {error.strerror or error}") from error
    embedded, failed = _copy([source], writer, output)
    return ConvertSummary(source, output, fmt, embedded, failed, dropped)


@dataclass
class ConvertSummary:
    source: str
    output: str
    format: str
    embedded: int
    failed: int
    dropped: list[str]  # columns OUTPUT's format cannot hold

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _copy(outputs: list[str], writer: writers.Writer, output: str) -> tuple[int, int]:
    """Every row (with its facts and Parquet columns) and failure of `outputs`, in order, into
    `writer`, then closed; left marked incomplete on any stop. Returns (rows, failures)."""
    embedded = failed = 0
    try:
        for part in outputs:
            state = writers.read_state(part, facts=True)  # each file's facts go along
            start = 0
            for paths, embeddings, columns in writers.iter_table(part):
                facts = state.facts[start : start + len(paths)]
                writer.write(paths, embeddings, facts, columns)
                start += len(paths)
                embedded += len(paths)
                writer.flush()
            for path, reason, known in zip(
                state.failed, state.reasons, state.failed_facts, strict=True
            ):
                writer.fail(path, reason, known)
                failed += 1
        writer.close()
    except BaseException as error:
        with contextlib.suppress(Exception):  # a second failure must not hide the first
            writer.abort()
        if isinstance(error, OSError) and not isinstance(error, BrokenPipeError):
            raise EfxError(
                f"writing {output} failed: {error.strerror or error} (disk full?)"
            ) from error
        raise
    return embedded, failed


def _merged_attrs(described: list[dict[str, Any]]) -> dict[str, Any]:
    first = described[0]
    attrs = {k: v for k, v in first.items() if k in _MERGED_ATTRS}
    backends = sorted({str(d.get("backend", "tensorflow")) for d in described})
    attrs.update(
        backend=", ".join(backends),  # float32 parts of either backend merge
        part="0/1",
        # The inputs of all the parts: shards count as one file in inputs_total, not here.
        part_inputs=sum(int(d.get("part_inputs") or 0) for d in described)
        or first.get("inputs_total"),
        merged_from=len(described),
        created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
    )
    return attrs


def _check_parts(
    parts: list[str], described: dict[str, dict[str, Any]]
) -> tuple[list[str], list[str]]:
    """The parts in order, after making sure they add up to exactly one whole run, and every
    input they hold (embedded or failed)."""
    numbered = []
    for part in parts:
        info = described[part]
        if not info.get("complete"):
            raise EfxError(f"part {part} is unfinished: finish it with --resume first")
        differences = Recorded.of(described[parts[0]]).differences(Recorded.of(info), PARTS)
        if differences:
            raise EfxError(
                f"{part} was made with other settings or inputs than {parts[0]}: "
                + "; ".join(differences)
            )
        numbered.append((parse_part(str(info.get("part", "0/1"))), part))
    counts = sorted({count for (_, count), _ in numbered})
    if len(counts) > 1:
        raise EfxError(f"the parts split the inputs differently: into {counts} parts")
    count = counts[0]
    by_index: dict[int, str] = {}
    for (index, _), part in numbered:
        if index in by_index:
            raise EfxError(f"{by_index[index]} and {part} are both part {index}/{count}")
        by_index[index] = part
    missing = [f"{i}/{count}" for i in range(count) if i not in by_index]
    if missing:
        raise EfxError(f"part(s) {', '.join(missing)} missing: all {count} parts are needed")
    ordered = [by_index[i] for i in range(count)]
    seen: dict[str, str] = {}
    for part in ordered:
        state = writers.read_state(part)
        for path in state.paths + state.failed:
            if path in seen and seen[path] != part:
                raise EfxError(f"{seen[path]} and {part} overlap: both hold {path}")
            seen[path] = part
    return ordered, list(seen)
