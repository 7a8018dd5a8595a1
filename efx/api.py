"""The library entry points: `extract` (the loop joining the stages), `merge` (parts of a run
into one output) and `load` (the reader).

Data flows one way: discover (paths) -> decode (tf.data) -> model (embeddings) -> writers.
Everything before the model load is checked without importing TensorFlow.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from typing import Any, BinaryIO

import numpy as np

from . import resume as resume_
from . import writers
from .config import BACKENDS, DEFAULT_MAX_PIXELS, ENGINES, PRECISIONS, DecodeOptions
from .discover import check_sources, find_images
from .errors import EfxError
from .model import DEFAULT_MODEL, LoadedModel, load_model, resolve_model

DEFAULT_SHARD_SIZE = 10_000
MAX_IMAGE_SIZE = 2048


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


def extract(
    sources: str | Iterable[str],
    output: str,
    *,
    model: str | None = None,
    image_size: int | None = None,
    batch_size: int | None = None,
    format: str | None = None,  # noqa: A002 - mirrors --format
    resize: str = "squash",
    exif: bool = True,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    precision: str = "float32",
    backend: str = "auto",
    engine: str = "local",
    ray_address: str | None = None,
    shard_size: int = DEFAULT_SHARD_SIZE,
    overwrite: bool = False,
    resume: bool = False,
    part: str | None = None,
    null: bool = False,
    stdin: BinaryIO | None = None,
    progress: bool = False,
    on_note: Callable[[str], None] | None = None,
    verbose: bool = False,
) -> Summary:
    """Embed every image of `sources` into `output` (HDF5 file or folder of .npy shards).

    `sources` are folders (walked recursively), image files, or "-" for paths read from `stdin`.
    Images that cannot be read or decoded are recorded as failures; the run goes on.
    `resume` continues an interrupted output; `part="I/N"` embeds only the I-th of N parts.
    `backend` picks what runs the model (auto, tensorflow, openvino); `engine` where the work
    runs: "local" (tf.data in this process) or "ray" (a Ray cluster at `ray_address`, or a local
    Ray instance). `on_note` is called with anything the user should know as soon as it is
    known (say, OpenVINO could not be used); `verbose` lets the engine's own logs through.
    """
    sources = [sources] if isinstance(sources, str) else list(sources)
    check_sources(sources)
    fmt = writers.format_for(output, format)
    _check_positive("--batch-size", batch_size)
    _check_positive("--image-size", image_size, MAX_IMAGE_SIZE)
    _check_positive("--shard-size", shard_size)
    options = DecodeOptions(image_size or 1, resize=resize, exif=exif, max_pixels=max_pixels)
    index, count = resume_.parse_part(part) if part else (0, 1)
    if precision not in PRECISIONS:
        raise EfxError(
            f"--precision must be one of {', '.join(PRECISIONS)}. Received: {precision!r}"
        )
    if backend not in BACKENDS:
        raise EfxError(f"--backend must be one of {', '.join(BACKENDS)}. Received: {backend!r}")
    if engine not in ENGINES:
        raise EfxError(f"--engine must be one of {', '.join(ENGINES)}. Received: {engine!r}")
    if ray_address and engine != "ray":
        raise EfxError("--ray-address is for --engine ray")
    if resume and overwrite:
        raise EfxError("--resume continues OUTPUT and --overwrite replaces it: choose one")
    state = _resumable_state(output, fmt) if resume else None
    if state is None:
        writers.check_output(output, fmt, overwrite)
    spec = resolve_model(model or os.environ.get("EFX_MODEL") or DEFAULT_MODEL)
    everything = find_images(sources, stdin=stdin, null=null)
    if not everything:
        raise EfxError(
            f"no images found in {', '.join(sources)} "
            "(folders are searched for .jpg .jpeg .png .gif .bmp .webp files)"
        )
    paths = resume_.select_part(everything, index, count)
    run = {
        "model_handle": spec.handle,
        "resize": options.resize,
        "exif_orientation": options.exif,
        "precision": precision,
        "part": f"{index}/{count}",
        "inputs_total": len(everything),
        "part_inputs": len(paths),
    }
    done = kept_rows = kept_failures = 0
    if state is not None:
        keys = ["model_handle", "resize", "exif_orientation", "precision", "part"]
        keys += ["inputs_total"] if count > 1 else []  # the parts' boundaries depend on it
        keys += ["image_size"] if image_size else []
        _check_resumable(output, state["attrs"], {**run, "image_size": image_size}, keys)
        if state["complete"]:
            return _already_complete(output, fmt, state)
        done, kept_rows, kept_failures = resume_.done_prefix(paths, state["paths"], state["failed"])

    started = time.monotonic()
    if progress:  # the load takes seconds to minutes (a first run downloads): say what is going on
        print(f"efx: loading {spec.handle} ...", file=sys.stderr, flush=True)
    runner = None
    batches: Batches = local_batches
    try:
        if engine == "ray":
            from .ray_engine import RayEngine

            runner = RayEngine(ray_address, verbose)
            loaded = runner.load_model(spec, image_size, batch_size, precision, backend)
            batches = runner.batches
        else:
            loaded = load_model(spec, image_size, batch_size, precision, backend)
        if on_note is not None:
            for note in loaded.notes:
                on_note(note)
        loaded_at = time.monotonic()
        options = replace(options, image_size=loaded.image_size)
        attrs = {
            "model": loaded.name,
            **run,
            "standin": loaded.standin,
            "image_size": loaded.image_size,
            "feature_dim": loaded.feature_dim,
            "efx_version": _version(),
            "tensorflow_version": _tf_version(),
            "device": loaded.device,
            "backend": loaded.backend,
            "precision": loaded.precision,  # float32 where the CPU lacks the precision asked for
            "engine": engine,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }
        writer_options = _writer_options(fmt, shard_size, paths)
        if state is not None:
            _check_resumable(output, state["attrs"], attrs, resume_.SETTINGS)
            writer_options["keep"] = (kept_rows, kept_failures)
        try:
            writer = writers.open_writer(fmt, output, attrs, **writer_options)
        except OSError as error:
            raise EfxError(f"cannot create OUTPUT {output}: {error.strerror or error}") from error
        try:
            with _progress_bar(len(paths), done, progress) as bar:
                embedded, failed = stream(paths[done:], fmt, options, loaded, writer, bar, batches)
            writer.close()
        except OSError as error:
            _abort(writer)
            raise EfxError(
                f"writing {output} failed: {error.strerror or error} (disk full?). The rows "
                "written so far are kept and the output is marked incomplete: free some space, "
                "then run the same command with --resume."
            ) from error
        except BaseException:
            _abort(writer)
            raise
    finally:
        if runner is not None:
            runner.close()

    finished = time.monotonic()
    streaming = finished - loaded_at
    return Summary(
        output=output,
        format=fmt,
        model=loaded.name,
        standin=loaded.standin,
        device=loaded.device,
        image_size=loaded.image_size,
        feature_dim=loaded.feature_dim,
        batch_size=loaded.batch_size,
        precision=loaded.precision,
        backend=loaded.backend,
        engine=engine,
        part=f"{index}/{count}",
        images=len(paths),
        embedded=kept_rows + embedded,
        failed=kept_failures + failed,
        resumed=done,
        seconds=round(finished - started, 3),
        load_seconds=round(loaded_at - started, 3),
        images_per_second=round(embedded / streaming, 3) if streaming > 0 else 0.0,
        complete=True,
        notes=loaded.notes,
    )


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


def _check_resumable(
    output: str, stored: dict[str, Any], wanted: dict[str, Any], keys: Iterable[str]
) -> None:
    differences = resume_.mismatches(stored, wanted, list(keys))
    if differences:
        raise EfxError(
            f"cannot resume {output}: it was made with other settings ("
            + "; ".join(differences)
            + "). Resume with the same settings, or start over with --overwrite."
        )


def _already_complete(output: str, fmt: str, state: dict[str, Any]) -> Summary:
    attrs = state["attrs"]
    return Summary(
        output=output,
        format=fmt,
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
        images=len(state["paths"]) + len(state["failed"]),
        embedded=len(state["paths"]),
        failed=len(state["failed"]),
        resumed=len(state["paths"]) + len(state["failed"]),
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
    batches: Batches | None = None,
) -> tuple[int, int]:
    """The loop: embedded batches -> writer. Rows and failures are each written in input order
    (what --resume relies on), and committed after every batch.

    `batches(paths, options, loaded)` is the engine: it yields (positions in `paths`,
    embeddings of the ok images, ok flags) in input order. Default: the local tf.data engine.
    """
    from . import decode  # imports TensorFlow; deferred so that the checks stay instant

    embedded = failed = 0
    unstorable = {i: why for i, p in enumerate(paths) if (why := writers.unstorable(fmt, p))}
    storable = [i for i in range(len(paths)) if i not in unstorable]
    waiting = sorted(unstorable, reverse=True)  # failures known upfront, recorded in turn

    def fail(position: int, reason: str) -> None:
        nonlocal failed
        while waiting and waiting[-1] < position:
            earlier = waiting.pop()
            writer.fail(paths[earlier], unstorable[earlier])
            failed += 1
            bar.update(1)
        if position < len(paths):
            writer.fail(paths[position], reason)
            failed += 1

    sync = _SyncClock()
    engine = batches or local_batches
    with _SignalsBetweenBatches(after_bar=not getattr(bar, "disable", True)) as signals:
        for index, embeddings, ok in engine([paths[i] for i in storable], options, loaded):
            positions = [storable[i] for i in index]
            if ok.any():
                writer.write([paths[storable[i]] for i in index[ok]], embeddings)
                embedded += int(ok.sum())
            for position, fine in zip(positions, ok, strict=True):
                if not fine:
                    fail(position, decode.failure_reason(paths[position], options))
            writer.flush(sync=sync.due(len(index)))
            bar.update(len(index))
            signals.deliver()  # a Ctrl-C or SIGTERM that came during this batch acts now
        fail(len(paths), "")  # the failures known upfront that come after the last batch
    return embedded, failed


class _SignalsBetweenBatches:
    """Ctrl-C and SIGTERM while streaming take effect once the batch in flight is written.

    Python runs a signal's handler at whatever bytecode the main thread is on: the
    KeyboardInterrupt it raises could land inside h5py's, tf.data's or OpenVINO's Python code
    between two native calls, and the abort that follows then calls into a library left half-way
    (a SIGTERM'd run under load died of SIGSEGV that way). Here a first signal is only recorded
    and delivered to the handler that was there before (KeyboardInterrupt, or death by SIGTERM)
    after the batch is committed -- which costs no time: the main thread spends a batch inside
    the model's native call, where no handler runs anyway. A second signal is delivered at once.
    Signals that are ignored (SIG_IGN: a background job) stay ignored; outside the main thread
    (where handlers cannot be set) nothing changes.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, after_bar: bool = False) -> None:
        self._after_bar = after_bar  # a progress bar holds the line: start the note on a new one
        self._previous: dict[int, Any] = {}
        self._pending: int | None = None
        self._stderr_fd: int | None = None  # sys.stderr's, which the CLI moves off fd 2

    def __enter__(self) -> _SignalsBetweenBatches:
        with contextlib.suppress(AttributeError, OSError, ValueError):
            sys.stderr.flush()
            self._stderr_fd = sys.stderr.fileno()
        if threading.current_thread() is threading.main_thread():
            for signum in self.SIGNALS:
                handler = signal.getsignal(signum)
                if handler not in (signal.SIG_IGN, None):
                    self._previous[signum] = handler
                    signal.signal(signum, self._record)
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        if exc_type is None:
            self.deliver()  # one that came after the last batch's check is not lost
        self._restore()

    def _record(self, signum: int, frame: Any) -> None:
        if self._pending is not None:
            self._pending = signum
            self.deliver()  # the second: stop now
            return
        self._pending = signum
        again = "press Ctrl-C again" if signum == signal.SIGINT else "send another signal"
        note = f"efx: stopping once the batch in flight is written ({again} to stop at once)\n"
        note = ("\n" if self._after_bar else "") + note
        with contextlib.suppress(Exception):
            if self._stderr_fd is not None:  # os.write: a handler must not re-enter sys.stderr
                os.write(self._stderr_fd, note.encode())
            else:
                sys.stderr.write(note)  # captured in memory (a test): nothing to re-enter

    def deliver(self) -> None:
        """Hand a recorded signal to the handler it was meant for (raises KeyboardInterrupt)."""
        if self._pending is None:
            return
        signum, self._pending = self._pending, None
        self._restore()
        signal.raise_signal(signum)  # the restored Python handler runs before this returns

    def _restore(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()


# An engine: (paths, options, model) -> batches of (positions, embeddings of the ok, ok).
Batches = Callable[
    [list[str], DecodeOptions, LoadedModel], Iterable[tuple[np.ndarray, np.ndarray, np.ndarray]]
]


def local_batches(
    paths: list[str], options: DecodeOptions, loaded: LoadedModel
) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """The local engine: the tf.data pipeline (parallel read + decode) into the model. The
    pipeline drops files that fail to decode; the gaps in its indices are those files."""
    from . import decode

    expected = 0  # the next index not yet accounted for
    for index, images in decode.image_batches(paths, options, loaded.batch_size):
        index = index.numpy()
        positions = np.arange(expected, index[-1] + 1)
        expected = int(index[-1]) + 1
        yield positions, loaded.embed(images), np.isin(positions, index)
    if expected < len(paths):  # the last files all failed
        positions = np.arange(expected, len(paths))
        yield (
            positions,
            np.zeros([0, loaded.feature_dim], np.float32),
            np.zeros(len(positions), bool),
        )


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
    shard_size: int = DEFAULT_SHARD_SIZE,
    overwrite: bool = False,
) -> MergeSummary:
    """Combine the outputs of `--shard I/N` runs (either format) into `output` (either format):
    exactly the rows, failures and order of one run over all the inputs."""
    parts = list(parts)
    fmt = writers.format_for(output, format)
    _check_positive("--shard-size", shard_size)
    if not parts:
        raise EfxError("name the PART outputs to merge")
    for part in parts:
        if os.path.abspath(part) == os.path.abspath(output):
            raise EfxError(f"OUTPUT {output} is also one of the parts")
    writers.check_output(output, fmt, overwrite)
    ordered, inputs = _check_parts(parts)

    first = writers.describe(ordered[0])
    attrs = {k: v for k, v in first.items() if k in _MERGED_ATTRS}
    backends = sorted({str(writers.describe(p).get("backend", "tensorflow")) for p in ordered})
    attrs.update(
        backend=", ".join(backends),  # float32 parts of either backend merge
        part="0/1",
        part_inputs=first.get("inputs_total"),
        merged_from=len(ordered),
        created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
    )
    options = _writer_options(fmt, shard_size, inputs)
    try:
        writer = writers.open_writer(fmt, output, attrs, **options)
    except OSError as error:
        raise EfxError(f"cannot create OUTPUT {output}: {error.strerror or error}") from error
    embedded = failed = 0
    try:
        for part in ordered:
            for paths, embeddings in writers.iter_rows(part):
                writer.write(paths, embeddings)
                embedded += len(paths)
                writer.flush()
            for failure in writers.read_failures(part):
                writer.fail(failure["path"], failure["error"])
                failed += 1
        writer.close()
    except OSError as error:
        _abort(writer)
        raise EfxError(
            f"writing {output} failed: {error.strerror or error} (disk full?)"
        ) from error
    except BaseException:
        _abort(writer)
        raise
    return MergeSummary(output, fmt, len(ordered), embedded, failed)


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
    "backend",
    "efx_version",
    "tensorflow_version",
    "device",
    "inputs_total",
)


def _check_parts(parts: list[str]) -> tuple[list[str], list[str]]:
    """The parts in order, after making sure they add up to exactly one whole run, and every
    input they hold (embedded or failed)."""
    described = {part: writers.describe(part) for part in parts}
    numbered = []
    for part in parts:
        info = described[part]
        if not info.get("complete"):
            raise EfxError(f"part {part} is unfinished: finish it with --resume first")
        differences = resume_.mismatches(
            described[parts[0]], info, [*resume_.SETTINGS, "inputs_total"]
        )
        if differences:
            raise EfxError(
                f"{part} was made with other settings or inputs than {parts[0]}: "
                + "; ".join(differences)
            )
        numbered.append((resume_.parse_part(str(info.get("part", "0/1"))), part))
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
        for path in state["paths"] + state["failed"]:
            if path in seen and seen[path] != part:
                raise EfxError(f"{seen[path]} and {part} overlap: both hold {path}")
            seen[path] = part
    return ordered, list(seen)


def _writer_options(fmt: str, shard_size: int, paths: list[str]) -> dict[str, Any]:
    """npy: rows per shard; HDF5: the width of its paths fields, enough for every input."""
    if fmt == "npy":
        return {"shard_size": shard_size}
    return {"path_bytes": writers.hdf5.path_bytes(paths)}


def _abort(writer: writers.Writer) -> None:
    """Leave the output marked incomplete; a second failure here must not hide the first."""
    with contextlib.suppress(Exception):
        writer.abort()


def load(output: str) -> tuple[list[str], np.ndarray]:
    """Read an efx output of either format: (paths, float32 embeddings), row i with path i."""
    return writers.read(output)


def _check_positive(flag: str, value: int | None, limit: int | None = None) -> None:
    if value is None:
        return
    if not isinstance(value, int) or value < 1:
        raise EfxError(f"{flag} must be a positive integer. Received: {value!r}")
    if limit is not None and value > limit:
        raise EfxError(f"{flag} must be at most {limit}. Received: {value}")


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
