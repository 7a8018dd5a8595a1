"""Planning a run, before any model loads: sources -> files -> this run's part -> inputs
(shards listed) -> what an earlier output holds -> per input, copy or embed (efx.reuse).
Every check that needs no model is made here; TensorFlow is not imported."""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import replace
from typing import BinaryIO

from .. import facts as facts_
from .. import process, reuse, writers
from .. import resume as resume_
from .. import sources as sources_
from ..config import Settings
from ..discover import check_sources, find_files
from ..errors import EfxError
from ..facts import Facts
from ..formats import FORMATS
from ..inputs import Input
from ..model import ModelSpec, asked_model, check_precision
from ..recorded import OutputState, Recorded
from .planned import Plan
from .record import planned_attrs
from .update import earlier_sources


def plan_run(
    sources: str | Iterable[str],
    output: str,
    settings: Settings,
    stdin: BinaryIO | None,
    progress: bool = False,
    on_note: Callable[[str], None] | None = None,
) -> Plan:
    """Every check that needs no model, then the inputs of this run, what of them an
    interrupted output already holds (--resume), and what each input needs (efx.reuse):
    copied from an earlier output, or embedded."""
    started = time.monotonic()
    sources = [sources] if isinstance(sources, str) else list(sources)
    fmt, existing, spec = _checked(sources, output, settings)
    with interrupted_while(output, "listing the images"):
        everything = find_files(sources, stdin=stdin, null=settings.null)
    if not everything:
        raise EfxError(f"no images found in {', '.join(sources)} ({_NOTHING_HERE})")
    index, count = settings.part_of
    files_ = resume_.select_part(everything, index, count)  # whole files: shards stay whole
    plan = Plan(
        output, fmt, spec, f"{index}/{count}", len(everything), [], existing, target=output,
        shard_options=_shard_options(settings, existing),
    )  # fmt: skip
    if existing is not None:
        planned = Recorded.of(planned_attrs(plan, settings))
        existing.recorded.check_continued(output, planned, True, settings.update)
    if settings.resume and existing is not None and existing.complete:
        return plan  # nothing to do: not even the shards are listed
    earlier = earlier_sources(plan, settings, on_note) if settings.update else []
    with interrupted_while(output, "reading the shards"):
        inputs = _list_inputs(
            plan, files_, settings, earlier[:1] if existing else [], on_note, progress
        )
    _check_inputs(sources, inputs, plan.shard_options, count)
    plan = replace(plan, inputs=inputs, paths=[inp.key for inp in inputs])
    if settings.resume and existing is not None:
        done, rows, failures = resume_.done_prefix(plan.paths, existing.paths, existing.failed)
        plan = replace(plan, done=done, keep=(rows, failures))
    with interrupted_while(output, "reading the files"):
        work = _work(plan, earlier, settings, progress)
    target = reuse.scratch_name(output) if settings.update else output
    return replace(
        plan, work=work, sources=earlier, target=target,
        checked_seconds=time.monotonic() - started,
    )  # fmt: skip


def _checked(
    sources: list[str], output: str, settings: Settings
) -> tuple[str, OutputState | None, ModelSpec]:
    """The checks that need neither the inputs nor the model: (OUTPUT's format, the output to
    continue or update if there is one, the model)."""
    check_sources(sources)
    fmt = writers.format_for(output, settings.format)
    if settings.keep_columns and not FORMATS[fmt].columns:
        raise EfxError(
            "--keep-columns carries source columns into a Parquet output (OUTPUT ending in "
            f".parquet, or --format parquet). Received: OUTPUT {output} ({fmt})"
        )
    existing = None
    if settings.resume or settings.update:
        existing = existing_output(output, fmt, "update" if settings.update else "resume")
    if existing is None or settings.update:
        writers.check_output(output, fmt, settings.overwrite or existing is not None, True)
    spec = asked_model(settings.model)
    check_precision(settings.precision, settings.backend)
    return fmt, existing, spec


def _check_inputs(
    sources: list[str], inputs: list[Input], options: sources_.ShardOptions, count: int
) -> None:
    """Inputs were found, and --keep-columns names what their shards hold; for a part of the
    inputs (`count` parts), neither: a part of a few large shards may well be empty, or hold
    only some of the columns' sources."""
    if count != 1:
        return
    if not inputs:
        raise EfxError(
            f"no images found in {', '.join(sources)}: the shards there hold no samples (an "
            "empty tar, Parquet or TFRecord file), or only metadata"
        )
    _check_kept_columns(options.keep_columns, inputs)


def _work(
    plan: Plan, earlier: list[reuse.Source], settings: Settings, progress: bool
) -> reuse.Work:
    """What each input not yet done needs (efx.reuse): copied from an earlier output, embedded,
    or failed before the model (a key OUTPUT's format cannot hold, a file that is no image)."""
    todo = plan.inputs[plan.done :]
    unstorable = {
        i: why for i, inp in enumerate(todo) if (why := writers.unstorable(plan.format, inp.key))
    }
    return reuse.plan(
        todo, earlier, unstorable=unstorable, checksum=settings.checksum,
        retry_failed=settings.retry_failed, hash_files=_hashing(progress),
    )  # fmt: skip


_NOTHING_HERE = (
    "folders are searched for .jpg .jpeg .jpe .png .gif .bmp .webp files and for .tar .tgz "
    ".tar.gz .parquet .tfrecord .tfrecords .tfrecord.gz shards"
)


def _check_kept_columns(names: tuple[str, ...], inputs: list[Input]) -> None:
    """--keep-columns names what the shards read in this run hold (a typo would give a column
    of nulls)."""
    read = [inp for inp in inputs if inp.member is not None]
    if not names or any(inp.kept for inp in inputs):
        return  # an update keeping unread shards: the output it updates was checked
    if not read:
        raise EfxError(
            "--keep-columns carries columns of shards (WebDataset tar, Parquet, TFRecord) into "
            f"the output: these sources hold only image files. Received: {', '.join(names)}"
        )
    missing = [n for n in names if not any(inp.columns and n in inp.columns for inp in read)]
    if missing:
        raise EfxError(
            f"--keep-columns: no sample in the shards has {', '.join(missing)} (a Parquet "
            "shard's columns, a WebDataset sample's member extensions such as txt or json, a "
            f"TFRecord's bytes features). Received: {', '.join(names)}"
        )


def _shard_options(settings: Settings, existing: OutputState | None) -> sources_.ShardOptions:
    """What decides a shard's image: as asked, else as the output to continue records (as
    --image-size is)."""
    stored = existing.recorded if existing is not None else Recorded()
    return sources_.ShardOptions(
        settings.image_column or stored.image_column,
        settings.image_key or stored.image_key,
        settings.keep_columns or tuple(stored.keep_columns or ()),
    )


def _list_inputs(
    plan: Plan,
    files_: list[tuple[str, bool]],
    settings: Settings,
    output: list[reuse.Source],
    on_note: Callable[[str], None] | None,
    progress: bool,
) -> list[Input]:
    """The inputs of `files_`: shards listed (and their images hashed) by efx.sources, those
    that OUTPUT holds unchanged (--update) taken from it unread."""
    from tqdm import tqdm

    shards = [path for path, _ in files_ if sources_.may_be_shard(path)]
    kept = reuse.kept_shards(
        output[0] if output else None, settings.checksum, settings.retry_failed, shards
    )
    options = plan.shard_options
    with tqdm(
        unit="shard", desc="efx: reading shards", disable=not progress, file=sys.stderr,
        dynamic_ncols=True, leave=False, delay=1.0,
    ) as bar:  # fmt: skip
        return sources_.list_inputs(files_, options, kept, on_note, bar.update)


def check_stream(settings: Settings) -> None:
    """What OUTPUT - (standard output) cannot do: whatever needs an output to read back."""
    needs_file = {
        "--resume": (settings.resume, "continues an output it reads back"),
        "--update": (settings.update, "compares with an output it reads back"),
        "--shard": (settings.part is not None, "writes parts that efx merge reads back"),
        "--overwrite": (settings.overwrite, "replaces an output file"),
    }
    for flag, (given, why) in needs_file.items():
        if given:
            raise EfxError(
                f"{flag} {why}: it needs an OUTPUT file, not - (standard output). "
                f"Write to out.h5 or a folder instead."
            )
    if getattr(sys.stdout, "buffer", None) is None:  # a notebook's stdout takes text only
        raise EfxError(
            "OUTPUT - writes the rows to standard output as bytes, and this one takes text "
            "only (a notebook?): write OUTPUT to a file and read it with efx.load"
        )


@contextlib.contextmanager
def interrupted_while(output: str, doing: str) -> Iterator[None]:
    """A Ctrl-C (or SIGTERM) during planning: nothing was written; say what was under way."""
    try:
        yield
    except KeyboardInterrupt:
        raise process.Interrupted(output, wrote=False, phase=doing) from None


def _hashing(progress: bool) -> Callable[..., list[Facts]]:
    """efx.facts.hash_files, with a bar on stderr when there are many files to read."""

    def hash_files(paths: Sequence[str], heads: list[bytes | None] | None = None) -> list[Facts]:
        from tqdm import tqdm

        show = progress and len(paths) >= 200
        with tqdm(
            total=len(paths), unit="file", desc="efx: reading", disable=not show,
            file=sys.stderr, dynamic_ncols=True, leave=False,
        ) as bar:  # fmt: skip
            return facts_.hash_files(paths, bar.update, heads)

    return hash_files


def existing_output(output: str, fmt: str, verb: str) -> OutputState | None:
    """The output to continue or update, or None when there is none yet."""
    if not os.path.lexists(output):
        return None
    if os.path.isdir(output) and not os.listdir(output):
        return None
    found = writers.detect_format(output)
    if found != fmt:
        raise EfxError(f"cannot {verb} {output}: it is {found} output, not {fmt}")
    return writers.read_state(output, facts=verb == "update")
