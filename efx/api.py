"""The library entry points: `extract` (the loop joining the stages), `load` and `info` (readers).

`extract` reads like the data flow: plan (sources -> paths, the part, what an interrupted output
already holds; every check that needs no model) -> load the model -> stream batches to the
writer -> summary. Everything before the model load runs without importing TensorFlow.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from typing import Any, BinaryIO

import numpy as np

from . import facts as facts_
from . import files, process, remote, reuse, timeline, writers
from . import resume as resume_
from . import sources as sources_
from .config import DEFAULT_SHARD_SIZE, DecodeOptions, Settings
from .discover import check_sources, find_files
from .engine import Batch, Engine, open_engine
from .errors import EfxError
from .facts import Facts
from .formats import FORMATS
from .inputs import Input
from .model import DEFAULT_MODEL, LoadedModel, ModelSpec, check_precision, resolve_model

# Rows reach the OS (and survive kill -9) after every batch; they are synced to the disk (and
# survive power loss) at least every SYNC_ROWS images or SYNC_SECONDS seconds.
SYNC_ROWS = 1000
SYNC_SECONDS = 30.0


@dataclass
class Summary:
    """What a run did; `efx extract --json` prints exactly this."""

    output: str
    format: str
    model: str
    standin: bool
    device: str
    image_size: int
    feature_dim: int
    batch_size: int
    precision: str
    backend: str  # what ran the model: "tensorflow" or "openvino"
    engine: str  # where: "local" (tf.data in this process) or "ray"
    part: str  # "I/N": this run's part of the inputs ("0/1": all of them)
    images: int  # inputs of this run (its part)
    embedded: int  # rows in the output
    failed: int  # failures in the output
    resumed: int  # inputs already done by an earlier run (--resume)
    seconds: float  # the whole run
    load_seconds: float  # of which loading the model (download, restore, first call)
    images_per_second: float  # images the model embedded per second of streaming
    complete: bool
    already_complete: bool = False  # --resume found nothing left to do
    notes: list[str] = field(default_factory=list)  # what the user should know (a fallback)
    # How each input's row was made (see efx.reuse): the model ran for `computed` of them.
    computed: int = 0  # new + changed + retried: inputs the model was given
    kept: int = 0  # --update: unchanged files, rows (and failures) copied from OUTPUT
    new: int = 0  # --update: inputs OUTPUT did not hold
    changed: int = 0  # --update: inputs whose bytes changed
    retried: int = 0  # --update --retry-failed: failures tried again
    reused: int = 0  # moved or copied files, and repeats of the same bytes: rows copied
    removed: int = 0  # --update: rows and failures of files that are gone
    model_loaded: bool = True
    up_to_date: bool = False  # --update found nothing changed: OUTPUT left untouched

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Plan:
    """What a run will do, decided before the model loads."""

    output: str
    format: str
    spec: ModelSpec
    part: str  # "I/N"
    inputs_total: int  # inputs of all the parts
    paths: list[str]  # the keys of this run's inputs, in row order
    state: dict[str, Any] | None = None  # the output to continue (--resume) or update
    done: int = 0  # inputs that output already accounts for (--resume)
    keep: tuple[int, int] = (0, 0)  # its rows and failures that stay (--resume)
    work: reuse.Work | None = None  # what each input of paths[done:] needs
    sources: list[reuse.Source] = field(default_factory=list)  # rows that may be copied
    target: str = ""  # where rows are written: OUTPUT, or for --update OUTPUT.updating-N
    checked_seconds: float = 0.0  # planning: walk, stat, hashing
    inputs: list[Input] = field(default_factory=list)  # this run's inputs (keys: `paths`)
    # --image-column/--image-key as asked, else as the output to continue or update records.
    shard_options: sources_.ShardOptions = sources_.ShardOptions()


def extract(
    sources: str | Iterable[str],
    output: str,
    *,
    stdin: BinaryIO | None = None,
    progress: bool = False,
    on_note: Callable[[str], None] | None = None,
    verbose: bool = False,
    storage_options: dict[str, Any] | None = None,
    **options: Any,
) -> Summary:
    """Embed every image of `sources` into `output` (HDF5, .npy shards or Parquet).

    `sources` are folders (walked recursively), image files, shards of images (WebDataset tar,
    Parquet, TFRecord: efx.sources; each image in one is a row named SHARD/KEY), or "-" for
    paths read from `stdin`; any but "-" may be a URL (efx.remote), and `output` an output in a
    bucket (efx.writers.bucket), `storage_options` going to their fsspec filesystems (None:
    those set before). Images that cannot be read or decoded are recorded as failures; the
    run goes on. `options` are the fields of `efx.config.Settings` (the CLI's options by their
    Python names). `on_note(text)` hears what the user should know as soon as it is known;
    `verbose` lets TensorFlow's C++ log lines through to stderr (hidden otherwise, by pointing
    file descriptor 2 at /dev/null during the call); `progress` shows a bar on stderr.
    Raises EfxError for anything the user can fix, and `efx.Interrupted` (a KeyboardInterrupt)
    on Ctrl-C or SIGTERM, after marking the output incomplete.
    """
    remote.configure(storage_options)
    if remote.is_url(output):
        return _extract_to_bucket(sources, output, stdin, progress, on_note, verbose, options)
    started = time.monotonic()
    settings = Settings(**options)
    if output == writers.STDOUT:
        _check_stream(settings)
    # TensorFlow's C++ lines (CUDA probes, oneDNN, libpng warnings) stay off stderr unless
    # `verbose`, as they do for the command: the same redirection, for this call only.
    hidden = process.native_logs_hidden(verbose, whole_process=False)
    with hidden, _one_update_at_a_time(output, settings):
        with process.sigterm_stops():  # Ctrl-C and SIGTERM stop the walk and the reading alike
            plan = plan_run(sources, output, settings, stdin, progress, on_note)
        timeline.mark("planned")
        if settings.resume and plan.state is not None and plan.state["complete"]:
            return _already_complete(plan)
        assert plan.work is not None
        if settings.update and _same_rows(plan):
            return _update_in_place(plan, settings, started)
        # The model is loaded for inputs to embed, or to describe an output no earlier one can.
        needs_model = len(plan.work.to_embed) > 0 or "feature_dim" not in _earlier_attrs(plan)
        with process.sigterm_stops(), process.tensorflow_options_restored():
            clock = [started]  # started, model loaded, finished
            engine: Engine | None = None
            loaded: LoadedModel | None = None
            try:
                if needs_model:
                    # The load takes seconds to minutes (a first run downloads): say so.
                    if progress:
                        print(f"efx: loading {plan.spec.handle} ...", file=sys.stderr, flush=True)
                    engine = open_engine(settings, verbose, plan.spec)
                    try:
                        loaded = _load(engine, plan, settings, on_note)
                    except KeyboardInterrupt:
                        phase = "loading the model"
                        raise process.Interrupted(output, wrote=False, phase=phase) from None
                clock.append(time.monotonic())
                timeline.mark("model loaded")
                counts = _write(plan, settings, loaded, engine, progress)
            finally:
                if engine is not None:
                    engine.close()
        if settings.update:
            files.swap_in(plan.target, output)
            reuse.remove_leftovers(output)
        clock.append(time.monotonic())
        timeline.mark("written")
        return _summary(plan, settings, loaded, counts, clock)


def _extract_to_bucket(
    sources: str | Iterable[str],
    url: str,
    stdin: BinaryIO | None,
    progress: bool,
    on_note: Callable[[str], None] | None,
    verbose: bool,
    options: dict[str, Any],
) -> Summary:
    """`extract` into a working copy mirrored to the bucket (efx.writers.bucket): synced while
    the run writes, and at its end however it ends. Messages name the URL."""
    from .writers.bucket import Bucket

    settings = Settings(**options)
    bucket = Bucket(url, writers.format_for(url, settings.format))
    modes = [("update", settings.update), ("resume", settings.resume)]
    mode = next((m for m, on in modes if on), "overwrite" if settings.overwrite else "new")
    with _phase(url, "reading the bucket"):
        local = bucket.prepare(mode)
    try:
        with bucket.mirrored(live=not settings.update):
            summary = extract(
                sources, local, stdin=stdin, progress=progress, on_note=on_note, verbose=verbose,
                storage_options=remote.storage_options(), **options,
            )  # fmt: skip
    except EfxError as error:
        raise EfxError(str(error).replace(local, url)) from None
    except process.Interrupted as stop:
        raise process.Interrupted(url, stop.wrote, None, stop.phase) from None
    except OSError as error:  # an upload that failed
        raise EfxError(f"{error} (the working copy is kept: run again with --resume)") from None
    return replace(summary, output=url)


def _one_update_at_a_time(
    output: str, settings: Settings
) -> contextlib.AbstractContextManager[Any]:
    """An update holds `OUTPUT.updating.lock` while it runs: a second update of the same OUTPUT
    (a nightly job meeting a manual run) would take the first one's work for a leftover."""
    if not settings.update or not os.path.isdir(os.path.dirname(os.path.abspath(output))):
        return contextlib.nullcontext()  # (a missing folder is reported by plan_run)
    busy = f"another efx --update of {output} is running; try again once it has finished"
    return files.held_exclusively(f"{os.path.normpath(output)}.updating.lock", busy)


def _summary(
    plan: Plan,
    settings: Settings,
    loaded: LoadedModel | None,
    counts: tuple[int, int],
    clock: list[float],
    up_to_date: bool = False,
) -> Summary:
    started, loaded_at, finished = clock
    rows, failed = counts
    work = plan.work
    assert work is not None
    streaming = finished - loaded_at
    computed = len(work.to_embed)
    attrs = _attrs(plan, settings, loaded)
    return Summary(
        output=plan.output,
        format=plan.format,
        model=str(attrs["model"]),
        standin=bool(attrs["standin"]),
        device=str(attrs["device"]),
        image_size=int(attrs["image_size"]),
        feature_dim=int(attrs["feature_dim"]),
        batch_size=loaded.batch_size if loaded else 0,
        precision=str(attrs["precision"]),
        backend=str(attrs["backend"]),
        engine=settings.engine,
        part=plan.part,
        images=len(plan.paths),
        embedded=plan.keep[0] + rows,
        failed=plan.keep[1] + failed,
        resumed=plan.done,
        seconds=round(finished - started, 3),
        load_seconds=round(loaded_at - started - plan.checked_seconds, 3) if loaded else 0.0,
        images_per_second=round(computed / streaming, 3) if computed and streaming > 0 else 0.0,
        complete=True,
        notes=loaded.notes if loaded else [],
        computed=computed,
        **{name: getattr(work.counts, name) for name in _COUNTS},
        model_loaded=loaded is not None,
        up_to_date=up_to_date,
    )


_COUNTS = ("kept", "new", "changed", "retried", "reused", "removed")


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
    check_sources(sources)
    fmt = writers.format_for(output, settings.format)
    if settings.keep_columns and not FORMATS[fmt].columns:
        raise EfxError(
            "--keep-columns carries source columns into a Parquet output (OUTPUT ending in "
            f".parquet, or --format parquet). Received: OUTPUT {output} ({fmt})"
        )
    state = None
    if settings.resume or settings.update:
        state = _existing_state(output, fmt, "update" if settings.update else "resume")
    if state is None or settings.update:
        writers.check_output(output, fmt, settings.overwrite or state is not None, True)
    spec = resolve_model(settings.model or os.environ.get("EFX_MODEL") or DEFAULT_MODEL)
    check_precision(settings.precision, settings.backend)
    with _phase(output, "listing the images"):
        everything = find_files(sources, stdin=stdin, null=settings.null)
    if not everything:
        raise EfxError(f"no images found in {', '.join(sources)} ({_NOTHING_HERE})")
    index, count = settings.part_of
    files_ = resume_.select_part(everything, index, count)  # whole files: shards stay whole
    plan = Plan(
        output, fmt, spec, f"{index}/{count}", len(everything), [], state, target=output,
        shard_options=_shard_options(settings, state),
    )  # fmt: skip
    if state is not None:
        planned = _planned_attrs(plan, settings)
        resume_.check_settings(output, state["attrs"], planned, True, settings.update)
    if settings.resume and state is not None and state["complete"]:
        return plan  # nothing to do: not even the shards are listed
    earlier = _sources(plan, settings, on_note) if settings.update else []
    with _phase(output, "reading the shards"):
        inputs = _list_inputs(
            plan, files_, settings, earlier[:1] if state else [], on_note, progress
        )
    if not inputs and count == 1:  # (a part of a few large shards may well be empty)
        raise EfxError(
            f"no images found in {', '.join(sources)}: the shards there hold no samples (an "
            "empty tar, Parquet or TFRecord file), or only metadata"
        )
    if count == 1:  # (one part may hold no shard, or only some of the columns' sources)
        _check_kept_columns(plan.shard_options.keep_columns, inputs)
    plan = replace(plan, inputs=inputs, paths=[inp.key for inp in inputs])
    if settings.resume and state is not None:
        done, rows, failures = resume_.done_prefix(plan.paths, state["paths"], state["failed"])
        plan = replace(plan, done=done, keep=(rows, failures))
    todo = plan.inputs[plan.done :]
    unstorable = {i: w for i, inp in enumerate(todo) if (w := writers.unstorable(fmt, inp.key))}
    with _phase(output, "reading the files"):
        work = reuse.plan(
            todo, earlier, unstorable=unstorable, checksum=settings.checksum,
            retry_failed=settings.retry_failed, hash_files=_hashing(progress),
        )  # fmt: skip
    target = reuse.scratch_name(output) if settings.update else output
    return replace(
        plan, work=work, sources=earlier, target=target,
        checked_seconds=time.monotonic() - started,
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


def _shard_options(settings: Settings, state: dict[str, Any] | None) -> sources_.ShardOptions:
    """What decides a shard's image: as asked, else as the output to continue records (as
    --image-size is)."""
    stored = state["attrs"] if state is not None else {}
    return sources_.ShardOptions(
        settings.image_column or stored.get("image_column"),
        settings.image_key or stored.get("image_key"),
        settings.keep_columns or tuple(stored.get("keep_columns") or ()),
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

    kept = reuse.kept_shards(
        output[0] if output else None, settings.checksum, settings.retry_failed
    )
    options = plan.shard_options
    with tqdm(
        unit="shard", desc="efx: reading shards", disable=not progress, file=sys.stderr,
        dynamic_ncols=True, leave=False, delay=1.0,
    ) as bar:  # fmt: skip
        return sources_.list_inputs(files_, options, kept, on_note, bar.update)


def _check_stream(settings: Settings) -> None:
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
def _phase(output: str, doing: str) -> Iterator[None]:
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


def _sources(
    plan: Plan, settings: Settings, on_note: Callable[[str], None] | None
) -> list[reuse.Source]:
    """The outputs --update may copy rows from: OUTPUT first, then what killed updates left
    beside it (`OUTPUT.updating-N`: rows computed before the kill), if made with the same
    settings. One that cannot be read is skipped (and removed once the update is done)."""
    found = []
    if plan.state is not None:
        found.append(_source(plan.output, plan.state, on_note))
    planned = _planned_attrs(plan, settings)
    for leftover in reuse.leftovers(plan.output):
        try:
            state = writers.read_state(leftover, facts=True)
        except (EfxError, OSError, ValueError, KeyError):
            continue
        keys = resume_.before_keys(planned, update=True)
        if not resume_.mismatches(state["attrs"], planned, keys):
            found.append(_source(leftover, state, None))
    return found


def _source(
    output: str, state: dict[str, Any], on_note: Callable[[str], None] | None
) -> reuse.Source:
    trusted = None
    if not state["has_facts"]:
        trusted = reuse.trusted_before(state["attrs"])
        if on_note is not None:
            since = state["attrs"].get("created", "its start")
            on_note(
                f"{output} was written by efx {state['attrs'].get('efx_version', '< 0.4')}, "
                "which did not record each file's size, date and checksum: efx reads every "
                "file once to record them, keeping the rows of files not modified since "
                f"{since} and embedding the others again"
            )
    return reuse.Source(
        output, state["paths"], state["facts"], state["failed"], state["failed_facts"],
        state["reasons"], trusted, state["attrs"],
    )  # fmt: skip


def _same_rows(plan: Plan) -> bool:
    """OUTPUT already holds what this update would write, at most with other file dates:
    complete, the same inputs, in the same order, each kept at its own path, and the same part
    boundaries."""
    state, work = plan.state, plan.work
    if state is None or work is None or not state["complete"] or not plan.sources:
        return False
    if plan.sources[0].output != plan.output or not state.get("has_facts"):
        return False
    attrs = state["attrs"]
    same_inputs = (attrs.get("inputs_total"), attrs.get("part_inputs")) == (
        plan.inputs_total,
        len(plan.paths),
    )
    return same_inputs and work.unchanged(plan.sources[0], facts=False)


def _update_in_place(plan: Plan, settings: Settings, started: float) -> Summary:
    """An update whose every row and failure stays where it is: nothing to do, or at most the
    files' dates changed (touched, copied back, restored from a backup): those are recorded in
    place, nothing is copied, no model is loaded."""
    assert plan.state is not None and plan.work is not None
    up_to_date = plan.work.unchanged(plan.sources[0])
    if not up_to_date:
        with process.sigterm_stops():
            _refresh_facts(plan)
    reuse.remove_leftovers(plan.output)
    kept = (len(plan.state["paths"]), len(plan.state["failed"]))
    clock = [started, started, time.monotonic()]
    return _summary(plan, settings, None, kept, clock, up_to_date=up_to_date)


def _refresh_facts(plan: Plan) -> None:
    """Record the new facts of an output's own rows and failures (see `_same_rows`)."""
    assert plan.work is not None
    work = plan.work
    rows = [work.facts[i] for i in np.flatnonzero(work.kind == reuse.COPY)]
    failures = [work.facts[i] for i in np.flatnonzero(work.kind == reuse.FAILED)]
    now = datetime.now(timezone.utc).isoformat(timespec="seconds")
    try:
        writers.refresh_facts(plan.output, rows, failures, updated=now)
    except OSError as error:
        raise EfxError(
            f"updating the file dates in {plan.output} failed: {error.strerror or error}. "
            "Its rows are as they were; run the same command again."
        ) from error


def _load(
    engine: Engine, plan: Plan, settings: Settings, on_note: Callable[[str], None] | None
) -> LoadedModel:
    assert plan.work is not None
    loaded = engine.load_model(plan.spec, settings, len(plan.work.to_embed))
    if on_note is not None:
        for note in loaded.notes:
            on_note(note)
    if plan.state is not None:  # what ran against what ran
        attrs = _attrs(plan, settings, loaded)
        resume_.check_settings(plan.output, plan.state["attrs"], attrs, False, settings.update)
    return loaded


def _write(
    plan: Plan,
    settings: Settings,
    loaded: LoadedModel | None,
    engine: Engine | None,
    progress: bool,
) -> tuple[int, int]:
    """Open (or reopen) the target, stream every input's row into it, and mark it complete.
    On any stop it is left marked incomplete, with every batch written so far."""
    assert plan.work is not None
    resuming = settings.resume and plan.state is not None
    try:
        writer = writers.open_writer(
            plan.format, plan.target, _attrs(plan, settings, loaded),
            inputs=plan.paths, shard_size=_shard_size(plan, settings),
            keep=plan.keep if resuming else None,
        )  # fmt: skip
    except OSError as error:
        raise EfxError(f"cannot create OUTPUT {plan.target}: {error.strerror or error}") from error
    try:
        options = settings.decode_options(loaded.image_size) if loaded else None
        with _progress_bar(len(plan.work.to_embed), progress) as bar:
            feed = _Feed(engine, options, loaded)
            counts = stream(plan.inputs[plan.done :], plan.work, plan.sources, writer, bar, feed)
        writer.close()
    except BrokenPipeError:
        raise  # OUTPUT - and its reader stopped reading: the caller ends quietly (the CLI: 141)
    except OSError as error:
        _abort(writer)
        if settings.update:
            raise EfxError(
                f"writing {plan.target} failed: {error.strerror or error} (disk full?). "
                f"{plan.output} is as it was; free some space, then run the same command: it "
                f"continues from what {plan.target} holds."
            ) from error
        raise EfxError(
            f"writing {plan.output} failed: {error.strerror or error} (disk full?). The rows "
            "written so far are kept and the output is marked incomplete: free some space, "
            "then run the same command with --resume."
        ) from error
    except KeyboardInterrupt:
        _abort(writer)
        scratch = plan.target if settings.update else None
        raise process.Interrupted(plan.output, wrote=True, scratch=scratch) from None
    except BaseException:
        _abort(writer)
        raise
    return counts


def _shard_size(plan: Plan, settings: Settings) -> int:
    """Rows per .npy shard: as asked, else the layout of the output this run continues or
    updates (an update rewrites OUTPUT: a nightly job must not reshard it), else the default."""
    earlier = plan.state.get("shard_size") if plan.state is not None else None
    return settings.shard_size or earlier or DEFAULT_SHARD_SIZE


def _planned_attrs(plan: Plan, settings: Settings) -> dict[str, Any]:
    """What the output records of the run that is known before the model loads."""
    return {
        "model_handle": plan.spec.handle,
        "resize": settings.resize,
        "exif_orientation": settings.exif,
        "precision_requested": settings.precision,
        "part": plan.part,
        "inputs_total": plan.inputs_total,
        "part_inputs": len(plan.paths),
        "image_size": settings.image_size,
        # Which part of a shard's samples is the image, and the source columns kept: recorded
        # only when asked for.
        **{
            k: list(v) if isinstance(v, tuple) else v
            for k, v in plan.shard_options._asdict().items()
            if v
        },
    }


# What an output records of the model that made its rows: an update that needs no model keeps
# these from the output whose rows it copies.
_MODEL_ATTRS = (
    "model", "standin", "image_size", "feature_dim", "tensorflow_version", "device", "backend",
    "precision", "engine",
)  # fmt: skip


def _attrs(plan: Plan, settings: Settings, loaded: LoadedModel | None) -> dict[str, Any]:
    """Everything the output records of the run."""
    now = datetime.now(timezone.utc).isoformat(timespec="seconds")
    earlier = _earlier_attrs(plan)
    attrs: dict[str, Any] = {
        **_planned_attrs(plan, settings),
        "efx_version": _version(),
        "created": earlier.get("created", now),  # when the first of its rows was computed
    }
    if settings.update:
        attrs["updated"] = now
    if plan.shard_options.keep_columns:
        attrs["keep_column_types"] = _column_types(plan, earlier)
    if loaded is None:
        return {**attrs, **{key: earlier[key] for key in _MODEL_ATTRS if key in earlier}}
    return {
        "model": loaded.name,
        **attrs,
        "standin": loaded.standin,
        "image_size": loaded.image_size,
        "feature_dim": loaded.feature_dim,
        "tensorflow_version": loaded.tensorflow_version,
        "device": loaded.device,
        "backend": loaded.backend,
        "precision": loaded.precision,  # float32 where the CPU lacks the precision asked for
        "engine": settings.engine,
    }


def _column_types(plan: Plan, earlier: dict[str, Any]) -> list[str]:
    """The Arrow type of each kept column (efx.writers.parquet.schema): as the output this run
    continues or updates has it, else that of the first value the sources hold."""
    names = plan.shard_options.keep_columns
    names_before = earlier.get("keep_columns") or []
    before = dict(zip(names_before, earlier.get("keep_column_types") or [], strict=False))
    types = []
    for name in names:
        kind = before.get(name)
        if kind is None:
            value = next(
                (c[name] for inp in plan.inputs if (c := inp.columns) and c.get(name) is not None),
                None,
            )
            kind = _ARROW_TYPES.get(type(value), "string")
        types.append(kind)
    return types


_ARROW_TYPES = {str: "string", bool: "bool", int: "int64", float: "double", bytes: "binary"}


def _earlier_attrs(plan: Plan) -> dict[str, Any]:
    """What the output whose rows this run copies (or continues) records."""
    if plan.sources:
        return plan.sources[0].attrs
    return plan.state["attrs"] if plan.state is not None else {}


def _existing_state(output: str, fmt: str, verb: str) -> dict[str, Any] | None:
    """The state of the output to continue or update, or None when there is none yet."""
    if not os.path.lexists(output):
        return None
    if os.path.isdir(output) and not os.listdir(output):
        return None
    found = writers.detect_format(output)
    if found != fmt:
        raise EfxError(f"cannot {verb} {output}: it is {found} output, not {fmt}")
    return writers.read_state(output, facts=verb == "update")


def _already_complete(plan: Plan) -> Summary:
    assert plan.state is not None
    attrs, state = plan.state["attrs"], plan.state
    done = len(state["paths"]) + len(state["failed"])
    return Summary(
        output=plan.output,
        format=plan.format,
        model=str(attrs.get("model")),
        standin=bool(attrs.get("standin")),
        device=str(attrs.get("device")),
        image_size=int(attrs.get("image_size", 0)),
        feature_dim=int(attrs.get("feature_dim", 0)),
        batch_size=0,
        precision=str(attrs.get("precision", "float32")),
        backend=str(attrs.get("backend", "tensorflow")),
        engine=str(attrs.get("engine", "local")),
        part=str(attrs.get("part", "0/1")),
        images=done,
        embedded=len(state["paths"]),
        failed=len(state["failed"]),
        resumed=done,
        seconds=0.0,
        load_seconds=0.0,
        images_per_second=0.0,
        complete=True,
        already_complete=True,
        model_loaded=False,
    )


# Rows are assembled and written in steps of at most this many inputs: kept rows are copied
# from the earlier output in blocks this size, so memory does not grow with the output.
STEP_ROWS = 1024


@dataclass
class _Feed:
    """What the model stage needs: the engine, its decode options and the loaded model
    (None, None, None when no input needs the model)."""

    engine: Engine | None
    options: DecodeOptions | None
    loaded: LoadedModel | None

    def batches(self, inputs: list[Input]) -> Iterator[Batch]:
        if not inputs:
            return iter(())
        assert self.engine is not None and self.options is not None and self.loaded is not None
        return self.engine.batches(inputs, self.options, self.loaded)

    def reason(self, inp: Input) -> str:
        assert self.engine is not None and self.options is not None
        return self.engine.reason(inp, self.options)


def stream(
    inputs: list[Input],
    work: reuse.Work,
    sources: list[reuse.Source],
    writer: writers.Writer,
    bar: Any,
    feed: _Feed,
) -> tuple[int, int]:
    """The loop: each input's row, in input order, into the writer: copied from an earlier
    output, or from the engine's batches (which see only the inputs that need the model).
    Rows and failures are each written in input order (what --resume relies on), and
    committed after every step. Returns (rows, failures) written."""
    embed_at = work.to_embed
    paths = [inp.key for inp in inputs]
    # Each input with the facts the plan found (an object by URL's SHA-256, when it was
    # hashed): what the engine reads is checked against them (efx.sources._as_listed).
    batches = feed.batches(
        [
            inputs[i] if inputs[i].facts else inputs[i]._replace(facts=work.facts[i])
            for i in embed_at
        ]
    )
    readers: dict[int, writers.RowReader] = {}
    held: dict[int, np.ndarray | str] = {}  # embedded once, repeated later (SAME_AS)
    repeated = set(work.index[work.kind == reuse.SAME_AS].tolist())
    rows = failed = 0
    sync = _SyncClock()
    try:
        with process.SignalsBetweenBatches(after_bar=not getattr(bar, "disable", True)) as signals:
            for start, stop, computed in _steps(len(paths), embed_at, batches):
                step = _Step(inputs, work, start, stop, computed)
                embeddings, reasons = step.assemble(sources, readers, held, feed)
                ok = step.ok(reasons)
                # In input order, runs of rows and failures alternating: a file format keeps
                # them apart anyway, a stream (OUTPUT -) gives one record per input in order.
                for first, last, good in _runs(ok):
                    if good:
                        positions = np.arange(start + first, start + last)
                        writer.write(
                            [paths[p] for p in positions], embeddings[first:last],
                            step.facts(positions), step.columns(positions, readers),
                        )  # fmt: skip
                        continue
                    for position in range(start + first, start + last):
                        writer.fail(paths[position], reasons[position], work.facts[position])
                for position in repeated.intersection(range(start, stop)):
                    kept = reasons.get(position)
                    # A copy: a view would keep this whole step's array alive.
                    held[position] = (
                        kept if kept is not None else embeddings[position - start].copy()
                    )
                rows, failed = rows + int(ok.sum()), failed + len(reasons)
                writer.flush(sync=sync.due(stop - start))
                timeline.mark("first rows written")
                bar.update(int((work.kind[start:stop] == reuse.EMBED).sum()))
                signals.deliver()  # a Ctrl-C or SIGTERM that came during this step acts now
    finally:
        for reader in readers.values():
            reader.close()
    return rows, failed


def _runs(flags: np.ndarray) -> Iterator[tuple[int, int, bool]]:
    """[first, last) spans of equal flags, in order, with their flag."""
    if not len(flags):
        return
    edges = [0, *(np.flatnonzero(np.diff(flags.astype(np.int8))) + 1).tolist(), len(flags)]
    for first, last in itertools.pairwise(edges):
        yield first, last, bool(flags[first])


def _steps(
    count: int, embed_at: np.ndarray, batches: Iterable[Batch]
) -> Iterator[tuple[int, int, tuple[np.ndarray, np.ndarray, np.ndarray] | None]]:
    """Spans [start, stop) of the inputs in order, each with what the engine returned for the
    inputs in it (positions among all the inputs, embeddings of the ok ones, ok), at most
    STEP_ROWS inputs per span: an engine batch, or copied rows between two of them."""
    cursor = 0
    for index, embeddings, ok in batches:
        positions = embed_at[index]
        done = np.flatnonzero(ok)
        last = int(positions[-1]) + 1
        while cursor < last:
            stop = min(last, cursor + STEP_ROWS)
            inside = (positions >= cursor) & (positions < stop)
            rows = np.searchsorted(done, np.flatnonzero(inside & ok))  # their embeddings' rows
            yield cursor, stop, (positions[inside], embeddings[rows], ok[inside])
            cursor = stop
    while cursor < count:
        stop = min(count, cursor + STEP_ROWS)
        yield cursor, stop, None
        cursor = stop


class _Step:
    """One span of inputs: each one's embedding (copied, computed, or repeated) or failure."""

    def __init__(
        self,
        inputs: list[Input],
        work: reuse.Work,
        start: int,
        stop: int,
        computed: tuple[np.ndarray, np.ndarray, np.ndarray] | None,
    ) -> None:
        self.inputs, self.work, self.start, self.stop = inputs, work, start, stop
        self.computed = computed

    def assemble(
        self,
        sources: list[reuse.Source],
        readers: dict[int, writers.RowReader],
        held: dict[int, np.ndarray | str],
        feed: _Feed,
    ) -> tuple[np.ndarray, dict[int, str]]:
        """(embeddings, one row per input of the span; failures: position -> reason)."""
        work, start, stop = self.work, self.start, self.stop
        kind = work.kind[start:stop]
        blocks: dict[int, np.ndarray] = {}  # position - start -> embedding
        reasons: dict[int, str] = {}
        for number in np.unique(work.source[start:stop][kind == reuse.COPY]):
            at = np.flatnonzero((kind == reuse.COPY) & (work.source[start:stop] == number))
            if number not in readers:
                readers[number] = writers.open_rows(sources[number].output)
            for i, row in zip(at, readers[number].take(work.index[start + at]), strict=True):
                blocks[int(i)] = row
        if self.computed is not None:
            positions, embeddings, ok = self.computed
            for i, row in zip(positions[ok] - start, embeddings, strict=True):
                blocks[int(i)] = row
            for position in positions[~ok]:
                reasons[int(position)] = feed.reason(self.inputs[position])
        for i in np.flatnonzero(kind == reuse.SAME_AS):
            original = int(work.index[start + i])
            first: np.ndarray | str | None = held.get(original)
            if start <= original < stop:  # embedded earlier in this very span
                first = reasons.get(original, blocks.get(original - start))
            assert first is not None
            if isinstance(first, str):
                reasons[start + int(i)] = first
            else:
                blocks[int(i)] = first
        for known in np.flatnonzero((kind == reuse.FAILED) | (kind == reuse.REFUSED)):
            reasons[start + int(known)] = work.reasons[start + int(known)]
        dim = next(iter(blocks.values())).shape[-1] if blocks else 0
        embeddings = np.zeros((stop - start, dim), np.float32)
        for slot, row in blocks.items():
            embeddings[slot] = row
        return embeddings, reasons

    def ok(self, reasons: dict[int, str]) -> np.ndarray:
        ok = np.ones(self.stop - self.start, bool)
        ok[[p - self.start for p in reasons]] = False
        return ok

    def columns(
        self, positions: np.ndarray, readers: dict[int, writers.RowReader]
    ) -> dict[str, list[Any]]:
        """The columns beyond the embedding and facts that Parquet outputs store: each row's
        shard and dataset key, from its input; for rows an unchanged shard keeps unread, from
        the earlier output's rows."""
        pairs = [sources_.dataset_key(self.inputs[p]) for p in positions]
        found: dict[str, list[Any]] = {"shard": [s for s, _ in pairs], "key": [k for _, k in pairs]}
        kept = [self.inputs[p].columns or {} for p in positions]
        for name in {name for values in kept for name in values}:
            found[name] = [values.get(name) for values in kept]
        work = self.work
        unread = [
            i
            for i, p in enumerate(positions)
            if self.inputs[p].member is None and self.inputs[p].key != self.inputs[p].path
            and work.kind[p] == reuse.COPY and int(work.source[p]) in readers
        ]  # fmt: skip
        for number in {int(work.source[positions[i]]) for i in unread}:
            mine = [i for i in unread if int(work.source[positions[i]]) == number]
            copied = readers[number].columns([int(work.index[positions[i]]) for i in mine])
            for name, values in copied.items():
                column = found.setdefault(name, [None] * len(positions))
                for i, value in zip(mine, values, strict=True):
                    column[i] = value
        return found

    def facts(self, positions: np.ndarray) -> list[Facts]:
        """Each row's file facts. A file the model read that changed since it was hashed is
        stored without its hash, so that the next update embeds it again."""
        found = []
        for position in positions:
            planned = self.work.facts[position]
            if (
                self.work.kind[position] == reuse.EMBED
                and facts_.stat(self.inputs[position].path)[:2] != planned[:2]
            ):
                planned = planned._replace(sha256="")
            found.append(planned)
        return found


class _SyncClock:
    """Says when the rows written since the last sync are worth an fsync."""

    def __init__(self) -> None:
        self._rows = 0
        self._last = time.monotonic()

    def due(self, rows: int) -> bool:
        self._rows += rows
        if self._rows >= SYNC_ROWS or time.monotonic() - self._last >= SYNC_SECONDS:
            self._rows, self._last = 0, time.monotonic()
            return True
        return False


def _abort(writer: writers.Writer) -> None:
    """Leave the output marked incomplete; a second failure here must not hide the first."""
    with contextlib.suppress(Exception):
        writer.abort()


def load(output: str) -> tuple[list[str], np.ndarray]:
    """Read an efx output of any format: (paths, float32 embeddings), row i with path i. A URL
    of an output in a bucket is read from its working copy (efx.writers.bucket)."""
    from .writers.bucket import reading

    return writers.read(reading(output))


def info(output: str) -> dict[str, Any]:
    """What `efx info --json` prints: an output's settings, counts, first failures, complete."""
    from .writers.bucket import reading

    described = writers.describe(reading(output))
    return {**described, "output": output} if remote.is_url(output) else described


def _progress_bar(total: int, enabled: bool) -> Any:
    """Counts the images the model embeds (the work that takes time), nothing else."""
    from tqdm import tqdm

    return tqdm(
        total=total,
        unit="img",
        disable=not enabled,
        file=sys.stderr,
        dynamic_ncols=True,
        desc="efx",
        smoothing=0.1,
    )


def _version() -> str:
    from .version import __version__

    return __version__
