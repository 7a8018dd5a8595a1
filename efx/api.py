"""The library entry points: `extract` (joining the stages of efx.run), `load` and `info`
(readers).

`extract` reads like the data flow: plan (efx.run.plan: sources -> inputs, the part, what an
earlier output already holds; every check that needs no model) -> nothing to do? (complete, or
an --update with no change: efx.run.update) -> the engine and the model -> the loop
(efx.run.loop) -> summary (efx.run.summary). Everything before the model load runs without
importing TensorFlow.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from typing import Any, BinaryIO

import numpy as np

from . import process, remote, timeline, writers
from .config import Settings
from .engine import Engine, open_engine
from .errors import EfxError
from .model import LoadedModel
from .recorded import Recorded
from .run.loop import write_rows
from .run.plan import check_stream, interrupted_while, plan_run
from .run.planned import Plan
from .run.record import earlier_attrs, output_attrs
from .run.summary import Summary, already_complete, summarise
from .run.update import one_update_at_a_time, same_rows, swap_in_new, update_in_place


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
    bucket (efx.writers.bucket), `storage_options` going to their fsspec filesystems for this
    call (None: fsspec's own configuration alone). Images that cannot be read or decoded are
    recorded as failures; the run goes on. `options` are the fields of `efx.config.Settings`
    (the CLI's options by their Python names). `on_note(text)` hears what the user should know
    as soon as it is known; `verbose` lets TensorFlow's C++ log lines through to stderr
    (hidden otherwise, by pointing file descriptor 2 at /dev/null during the call); `progress`
    shows a bar on stderr.
    Raises EfxError for anything the user can fix, and `efx.Interrupted` (a KeyboardInterrupt)
    on Ctrl-C or SIGTERM, after marking the output incomplete.
    """
    call = _Call(sources, stdin, progress, on_note, verbose)
    with remote.using(storage_options):
        if remote.is_url(output):
            return _extract_to_bucket(call, output, Settings(**options))
        return _extract(call, output, Settings(**options))


@dataclass(frozen=True)
class _Call:
    """What one `extract` call was given besides the settings: where the inputs come from and
    what the caller hears."""

    sources: str | Iterable[str]
    stdin: BinaryIO | None
    progress: bool
    on_note: Callable[[str], None] | None
    verbose: bool


def _extract(call: _Call, output: str, settings: Settings) -> Summary:
    """`extract` into a local OUTPUT (or stdout): the data flow, stage by stage."""
    started = time.monotonic()
    if output == writers.STDOUT:
        check_stream(settings)
    # TensorFlow's C++ lines (CUDA probes, oneDNN, libpng warnings) stay off stderr unless
    # `verbose`, as they do for the command: the same redirection, for this call only.
    hidden = process.native_logs_hidden(call.verbose, whole_process=False)
    with hidden, one_update_at_a_time(output, settings):
        with process.sigterm_stops():  # Ctrl-C and SIGTERM stop the walk and the reading alike
            plan = plan_run(call.sources, output, settings, call.stdin, call.progress, call.on_note)
        timeline.mark("planned")
        if settings.resume and plan.existing is not None and plan.existing.complete:
            return already_complete(plan)
        assert plan.work is not None
        if settings.update and same_rows(plan):
            return update_in_place(plan, settings, started)
        loaded, counts, loaded_at = _embed(call, plan, settings)
        if settings.update:
            swap_in_new(plan)
        timeline.mark("written")
        return summarise(plan, settings, loaded, counts, [started, loaded_at, time.monotonic()])


def _embed(
    call: _Call, plan: Plan, settings: Settings
) -> tuple[LoadedModel | None, tuple[int, int], float]:
    """Open the engine and load the model (for inputs to embed, or to describe an output no
    earlier one can), then run the loop into the writer: (the loaded model, (rows, failures)
    written, when the model was loaded)."""
    assert plan.work is not None
    needs_model = len(plan.work.to_embed) > 0 or "feature_dim" not in earlier_attrs(plan)
    with process.sigterm_stops(), process.tensorflow_options_restored():
        engine: Engine | None = None
        loaded: LoadedModel | None = None
        try:
            if needs_model:
                # The load takes seconds to minutes (a first run downloads): say so.
                if call.progress:
                    print(f"efx: loading {plan.spec.handle} ...", file=sys.stderr, flush=True)
                engine = open_engine(settings, call.verbose, plan.spec)
                try:
                    loaded = _load(engine, plan, settings, call.on_note)
                except KeyboardInterrupt:
                    phase = "loading the model"
                    raise process.Interrupted(plan.output, wrote=False, phase=phase) from None
            loaded_at = time.monotonic()
            timeline.mark("model loaded")
            return loaded, write_rows(plan, settings, loaded, engine, call.progress), loaded_at
        finally:
            if engine is not None:
                engine.close()


def _extract_to_bucket(call: _Call, url: str, settings: Settings) -> Summary:
    """`extract` into a working copy mirrored to the bucket (efx.writers.bucket): synced while
    the run writes, and at its end however it ends. Messages name the URL."""
    from .writers.bucket import Bucket

    bucket = Bucket(url, writers.format_for(url, settings.format))
    modes = [("update", settings.update), ("resume", settings.resume)]
    mode = next((m for m, on in modes if on), "overwrite" if settings.overwrite else "new")
    with interrupted_while(url, "reading the bucket"):
        local = bucket.prepare(mode)
    try:
        with bucket.mirrored(live=not settings.update):
            summary = _extract(call, local, settings)
    except EfxError as error:
        raise EfxError(str(error).replace(local, url)) from None
    except process.Interrupted as stop:
        raise process.Interrupted(url, stop.wrote, None, stop.phase) from None
    except OSError as error:  # an upload that failed
        raise EfxError(f"{error} (the working copy is kept: run again with --resume)") from None
    return replace(summary, output=url)


def _load(
    engine: Engine, plan: Plan, settings: Settings, on_note: Callable[[str], None] | None
) -> LoadedModel:
    assert plan.work is not None
    loaded = engine.load_model(plan.spec, settings, len(plan.work.to_embed))
    if on_note is not None:
        for note in loaded.notes:
            on_note(note)
    if plan.existing is not None:  # what ran against what ran
        attrs = output_attrs(plan, settings, loaded)
        plan.existing.recorded.check_continued(
            plan.output, Recorded.of(attrs), False, settings.update
        )
    return loaded


def load(
    output: str, *, storage_options: dict[str, Any] | None = None
) -> tuple[list[str], np.ndarray]:
    """Read an efx output of any format: (paths, float32 embeddings [rows, dim]), row i with
    path i. A URL of an output in a bucket is read from its working copy (efx.writers.bucket),
    `storage_options` going to its fsspec filesystem. Raises EfxError for what is not an efx
    output."""
    from .writers.bucket import reading

    with remote.using(storage_options):
        return writers.read(reading(output))


def info(output: str, *, storage_options: dict[str, Any] | None = None) -> dict[str, Any]:
    """What `efx info --json` prints: an output's settings, counts, first failures, complete."""
    from .writers.bucket import reading

    with remote.using(storage_options):
        described = writers.describe(reading(output))
    return {**described, "output": output} if remote.is_url(output) else described
