"""--update's own steps around the common run: one update of an OUTPUT at a time, the
nothing-changed path (facts refreshed in place, no model), and the facts it records."""

from __future__ import annotations

import contextlib
import os
import time
from datetime import datetime, timezone
from typing import Any

import numpy as np

from .. import files, process, reuse, writers
from ..config import Settings
from ..errors import EfxError
from .planned import Plan
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
