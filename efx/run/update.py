"""--update's own steps around the common run, all in this module: one update of an OUTPUT at a
time, the outputs whose rows it may copy (OUTPUT, and what killed updates left beside it), the
nothing-changed path (facts refreshed in place, no model), and the new OUTPUT swapped in. What
each input needs (kept, reused, embedded) is efx.reuse's decision, the same for every run."""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any

import numpy as np

from .. import files, process, reuse, writers
from ..config import Settings
from ..errors import EfxError
from ..recorded import OutputState, Recorded
from .planned import Plan
from .record import planned_attrs
from .summary import Summary, summarise


def one_update_at_a_time(output: str, settings: Settings) -> contextlib.AbstractContextManager[Any]:
    """An update holds `OUTPUT.updating.lock` while it runs: a second update of the same OUTPUT
    (a nightly job meeting a manual run) would take the first one's work for a leftover."""
    if not settings.update or not os.path.isdir(os.path.dirname(os.path.abspath(output))):
        return contextlib.nullcontext()  # (a missing folder is reported by plan_run)
    busy = f"another efx --update of {output} is running; try again once it has finished"
    return files.held_exclusively(f"{os.path.normpath(output)}.updating.lock", busy)


def same_rows(plan: Plan) -> bool:
    """OUTPUT already holds what this update would write, at most with other file dates:
    complete, the same inputs, in the same order, each kept at its own path, and the same part
    boundaries."""
    existing, work = plan.existing, plan.work
    if existing is None or work is None or not existing.complete or not plan.sources:
        return False
    if plan.sources[0].output != plan.output or not existing.has_facts:
        return False
    recorded = existing.recorded
    same_inputs = (recorded.inputs_total, recorded.part_inputs) == (
        plan.inputs_total,
        len(plan.paths),
    )
    return same_inputs and work.unchanged(plan.sources[0], facts=False)


def update_in_place(plan: Plan, settings: Settings, started: float) -> Summary:
    """An update whose every row and failure stays where it is: nothing to do, or at most the
    files' dates changed (touched, copied back, restored from a backup): those are recorded in
    place, nothing is copied, no model is loaded."""
    assert plan.existing is not None and plan.work is not None
    up_to_date = plan.work.unchanged(plan.sources[0])
    if not up_to_date:
        with process.sigterm_stops():
            _refresh_facts(plan)
    reuse.remove_leftovers(plan.output)
    kept = (len(plan.existing.paths), len(plan.existing.failed))
    clock = [started, started, time.monotonic()]
    return summarise(plan, settings, None, kept, clock, up_to_date=up_to_date)


def swap_in_new(plan: Plan) -> None:
    """The updated OUTPUT, built beside it (`plan.target`), put in its place at once; then
    what earlier stopped updates left is removed (efx.files.swap_in, efx.reuse)."""
    files.swap_in(plan.target, plan.output)
    reuse.remove_leftovers(plan.output)


def _refresh_facts(plan: Plan) -> None:
    """Record the new facts of an output's own rows and failures (see `same_rows`)."""
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


def earlier_sources(
    plan: Plan, settings: Settings, on_note: Callable[[str], None] | None
) -> list[reuse.Source]:
    """The outputs --update may copy rows from: OUTPUT first, then what killed updates left
    beside it (`OUTPUT.updating-N`: rows computed before the kill), if made with the same
    settings. One that cannot be read is skipped (and removed once the update is done)."""
    found = []
    if plan.existing is not None:
        found.append(_source(plan.output, plan.existing, on_note))
    planned = Recorded.of(planned_attrs(plan, settings))
    for leftover in reuse.leftovers(plan.output):
        try:
            state = writers.read_state(leftover, facts=True)
        except (EfxError, OSError, ValueError, KeyError):
            continue
        if not state.recorded.differences(planned, planned.asked(update=True)):
            found.append(_source(leftover, state, None))
    return found


def _source(output: str, state: OutputState, on_note: Callable[[str], None] | None) -> reuse.Source:
    trusted = None
    if not state.has_facts:
        trusted = reuse.trusted_before(state.attrs)
        if on_note is not None:
            since = state.attrs.get("created", "its start")
            on_note(
                f"{output} was written by efx {state.attrs.get('efx_version', '< 0.4')}, "
                "which did not record each file's size, date and checksum: efx reads every "
                "file once to record them, keeping the rows of files not modified since "
                f"{since} and embedding the others again"
            )
    return reuse.Source(
        output, state.paths, state.facts, state.failed, state.failed_facts,
        state.reasons, trusted, state.attrs,
    )  # fmt: skip
