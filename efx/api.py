"""The library entry points: `extract` (the loop joining the stages), `load` and `info` (readers).

`extract` reads like the data flow: plan (sources -> paths, the part, what an interrupted output
already holds; every check that needs no model) -> load the model -> stream batches to the
writer -> summary. Everything before the model load runs without importing TensorFlow.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from typing import Any, BinaryIO

import numpy as np

from . import process, writers
from . import resume as resume_
from .config import DecodeOptions, Settings
from .discover import check_sources, find_images
from .engine import Batch, Engine, open_engine
from .errors import EfxError
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
    images_per_second: float  # images embedded by this run per second of streaming
    complete: bool
    already_complete: bool = False  # --resume found nothing left to do
    notes: list[str] = field(default_factory=list)  # what the user should know (a fallback)

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
    paths: list[str]  # this run's inputs, in row order
    state: dict[str, Any] | None = None  # the output to continue (--resume)
    done: int = 0  # inputs that output already accounts for
    keep: tuple[int, int] = (0, 0)  # its rows and failures that stay


def extract(
    sources: str | Iterable[str],
    output: str,
    *,
    stdin: BinaryIO | None = None,
    progress: bool = False,
    on_note: Callable[[str], None] | None = None,
    verbose: bool = False,
    **options: Any,
) -> Summary:
    """Embed every image of `sources` into `output` (HDF5 file or folder of .npy shards).

    `sources` are folders (walked recursively), image files, or "-" for paths read from `stdin`.
    Images that cannot be read or decoded are recorded as failures; the run goes on.
    `options` are the fields of `efx.config.Settings`, the CLI's options by their Python names:
    model, image_size, batch_size, format, resize, exif, max_pixels, precision, backend,
    engine, ray_address, shard_size, overwrite, resume, part ("I/N"), null.
    `on_note(text)` hears what the user should know as soon as it is known (say, OpenVINO could
    not be used); `verbose` lets the engine's own logs through; `progress` shows a bar on stderr.
    Raises EfxError for anything the user can fix, and `efx.Interrupted` (a
    KeyboardInterrupt) on Ctrl-C or SIGTERM, after marking the output incomplete.
    """
    settings = Settings(**options)
    plan = plan_run(sources, output, settings, stdin)
    if plan.state is not None and plan.state["complete"]:
        return _already_complete(plan)
    with process.sigterm_stops(), process.tensorflow_options_restored():
        clock = [time.monotonic()]  # started, model loaded, finished
        if progress:  # the load takes seconds to minutes (a first run downloads): say so
            print(f"efx: loading {plan.spec.handle} ...", file=sys.stderr, flush=True)
        engine = open_engine(settings, verbose)
        try:
            try:
                loaded = _load(engine, plan, settings, on_note)
            except KeyboardInterrupt:
                raise process.Interrupted(output, wrote=False) from None
            clock.append(time.monotonic())
            counts = _write(plan, settings, loaded, engine, progress)
        finally:
            engine.close()
    clock.append(time.monotonic())
    return _summary(plan, settings, loaded, counts, clock)


def _summary(
    plan: Plan, settings: Settings, loaded: LoadedModel, counts: tuple[int, int], clock: list[float]
) -> Summary:
    started, loaded_at, finished = clock
    embedded, failed = counts
    streaming = finished - loaded_at
    return Summary(
        output=plan.output,
        format=plan.format,
        model=loaded.name,
        standin=loaded.standin,
        device=loaded.device,
        image_size=loaded.image_size,
        feature_dim=loaded.feature_dim,
        batch_size=loaded.batch_size,
        precision=loaded.precision,
        backend=loaded.backend,
        engine=settings.engine,
        part=plan.part,
        images=len(plan.paths),
        embedded=plan.keep[0] + embedded,
        failed=plan.keep[1] + failed,
        resumed=plan.done,
        seconds=round(finished - started, 3),
        load_seconds=round(loaded_at - started, 3),
        images_per_second=round(embedded / streaming, 3) if streaming > 0 else 0.0,
        complete=True,
        notes=loaded.notes,
    )


def plan_run(
    sources: str | Iterable[str], output: str, settings: Settings, stdin: BinaryIO | None
) -> Plan:
    """Every check that needs no model, then the inputs of this run and what of them an
    interrupted output already holds (--resume)."""
    sources = [sources] if isinstance(sources, str) else list(sources)
    check_sources(sources)
    fmt = writers.format_for(output, settings.format)
    state = _resumable_state(output, fmt) if settings.resume else None
    if state is None:
        writers.check_output(output, fmt, settings.overwrite)
    spec = resolve_model(settings.model or os.environ.get("EFX_MODEL") or DEFAULT_MODEL)
    check_precision(settings.precision, settings.backend)
    everything = find_images(sources, stdin=stdin, null=settings.null)
    if not everything:
        raise EfxError(
            f"no images found in {', '.join(sources)} "
            "(folders are searched for .jpg .jpeg .png .gif .bmp .webp files)"
        )
    index, count = settings.part_of
    plan = Plan(
        output, fmt, spec, f"{index}/{count}", len(everything),
        resume_.select_part(everything, index, count), state,
    )  # fmt: skip
    if state is None:
        return plan
    resume_.check_settings(output, state["attrs"], _planned_attrs(plan, settings), before=True)
    if state["complete"]:
        return plan
    done, rows, failures = resume_.done_prefix(plan.paths, state["paths"], state["failed"])
    return replace(plan, done=done, keep=(rows, failures))


def _load(
    engine: Engine, plan: Plan, settings: Settings, on_note: Callable[[str], None] | None
) -> LoadedModel:
    loaded = engine.load_model(plan.spec, settings)
    if on_note is not None:
        for note in loaded.notes:
            on_note(note)
    if plan.state is not None:  # what ran against what ran
        attrs = _attrs(plan, settings, loaded)
        resume_.check_settings(plan.output, plan.state["attrs"], attrs, before=False)
    return loaded


def _write(
    plan: Plan, settings: Settings, loaded: LoadedModel, engine: Engine, progress: bool
) -> tuple[int, int]:
    """Open (or reopen) OUTPUT, stream every batch into it, and mark it complete. On any stop
    it is left marked incomplete, with every batch written so far."""
    try:
        writer = writers.open_writer(
            plan.format, plan.output, _attrs(plan, settings, loaded),
            inputs=plan.paths, shard_size=settings.shard_size,
            keep=plan.keep if plan.state is not None else None,
        )  # fmt: skip
    except OSError as error:
        raise EfxError(f"cannot create OUTPUT {plan.output}: {error.strerror or error}") from error
    try:
        options = settings.decode_options(loaded.image_size)
        with _progress_bar(len(plan.paths), plan.done, progress) as bar:
            todo = plan.paths[plan.done :]
            counts = stream(todo, plan.format, options, loaded, writer, bar, engine)
        writer.close()
    except OSError as error:
        _abort(writer)
        raise EfxError(
            f"writing {plan.output} failed: {error.strerror or error} (disk full?). The rows "
            "written so far are kept and the output is marked incomplete: free some space, "
            "then run the same command with --resume."
        ) from error
    except KeyboardInterrupt:
        _abort(writer)
        raise process.Interrupted(plan.output, wrote=True) from None
    except BaseException:
        _abort(writer)
        raise
    return counts


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
    }


def _attrs(plan: Plan, settings: Settings, loaded: LoadedModel) -> dict[str, Any]:
    """Everything the output records of the run."""
    return {
        "model": loaded.name,
        **_planned_attrs(plan, settings),
        "standin": loaded.standin,
        "image_size": loaded.image_size,
        "feature_dim": loaded.feature_dim,
        "efx_version": _version(),
        "tensorflow_version": _tf_version(),
        "device": loaded.device,
        "backend": loaded.backend,
        "precision": loaded.precision,  # float32 where the CPU lacks the precision asked for
        "engine": settings.engine,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def _resumable_state(output: str, fmt: str) -> dict[str, Any] | None:
    """The state of the output to continue, or None when there is none yet (start afresh)."""
    if not os.path.lexists(output):
        return None
    if os.path.isdir(output) and not os.listdir(output):
        return None
    found = writers.detect_format(output)
    if found != fmt:
        raise EfxError(f"cannot resume {output}: it is {found} output, not {fmt}")
    return writers.read_state(output)


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
    )


def stream(
    paths: list[str],
    fmt: str,
    options: DecodeOptions,
    loaded: LoadedModel,
    writer: writers.Writer,
    bar: Any,
    engine: Engine,
) -> tuple[int, int]:
    """The loop: the engine's batches -> writer. Rows and failures are each written in input
    order (what --resume relies on), and committed after every batch. Returns (embedded, failed).
    """
    from .decode.pipeline import failure_reason  # imports TensorFlow, as the engine already has

    unstorable = {i: why for i, p in enumerate(paths) if (why := writers.unstorable(fmt, p))}
    storable = [i for i in range(len(paths)) if i not in unstorable]
    batches = engine.batches([paths[i] for i in storable], options, loaded)
    embedded = failed = 0
    sync = _SyncClock()
    with process.SignalsBetweenBatches(after_bar=not getattr(bar, "disable", True)) as signals:
        for positions, embeddings, ok in _in_input_order(batches, storable, sorted(unstorable)):
            if ok.any():
                writer.write([paths[p] for p in positions[ok]], embeddings)
            for position in positions[~ok]:
                reason = unstorable.get(position) or failure_reason(paths[position], options)
                writer.fail(paths[position], reason)
            embedded, failed = embedded + int(ok.sum()), failed + int((~ok).sum())
            writer.flush(sync=sync.due(len(positions)))
            bar.update(len(positions))
            signals.deliver()  # a Ctrl-C or SIGTERM that came during this batch acts now
    return embedded, failed


def _in_input_order(
    batches: Iterable[Batch], storable: list[int], unstorable: list[int]
) -> Iterator[Batch]:
    """The engine's batches, in positions among all the paths, with the paths that the format
    cannot store (failures known before any decoding) slotted in where they belong."""
    to_position = np.asarray(storable, dtype=np.int64)
    waiting = np.asarray(unstorable, dtype=np.int64)
    for index, embeddings, ok in batches:
        positions = to_position[index]
        early, waiting = waiting[waiting < positions[-1]], waiting[waiting >= positions[-1]]
        merged = np.concatenate([early, positions])
        order = np.argsort(merged, kind="stable")
        yield merged[order], embeddings, np.concatenate([np.zeros(len(early), bool), ok])[order]
    if len(waiting):
        yield waiting, np.zeros([0, 0], np.float32), np.zeros(len(waiting), bool)


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
    """Read an efx output of either format: (paths, float32 embeddings), row i with path i."""
    return writers.read(output)


def info(output: str) -> dict[str, Any]:
    """What `efx info --json` prints: an output's settings, counts, first failures, complete."""
    return writers.describe(output)


def _progress_bar(total: int, done: int, enabled: bool) -> Any:
    from tqdm import tqdm

    return tqdm(
        total=total,
        initial=done,
        unit="img",
        disable=not enabled,
        file=sys.stderr,
        dynamic_ncols=True,
        desc="efx",
        smoothing=0.1,
    )


def _version() -> str:
    from . import __version__

    return __version__


def _tf_version() -> str:
    import tensorflow as tf

    return str(tf.__version__)
