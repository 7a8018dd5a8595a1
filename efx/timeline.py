"""Where a run's time goes: named moments of this process, for `EFX_TIMINGS=1` (one JSON line
on stderr at exit: {"moment": seconds since the epoch}) and scripts/startup.py, which reads
them to break a one-image run's wall time into its phases. Costs a dict entry per moment."""

from __future__ import annotations

import json
import os
import sys
import time

_moments: dict[str, float] = {}


def mark(moment: str) -> None:
    """Record when `moment` first happened (wall clock, comparable between processes)."""
    _moments.setdefault(moment, time.time())


def report() -> None:
    """Print the moments on stderr when EFX_TIMINGS is set."""
    if os.environ.get("EFX_TIMINGS") and _moments:
        print("efx-timings " + json.dumps(_moments), file=sys.stderr, flush=True)
