"""Continuing and combining runs: which inputs an output already holds, and how inputs split
into parts for many machines (the settings that must match: efx.recorded). Pure functions, no
TensorFlow.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

T = TypeVar("T")


def select_part(paths: Sequence[T], index: int, count: int) -> list[T]:
    """Part `index` of `count`: a contiguous block of the ordered files, so that the parts
    concatenated in order are exactly the whole. A shard is one file: never split."""
    total = len(paths)
    return list(paths[total * index // count : total * (index + 1) // count])


def done_prefix(
    inputs: Sequence[str], embedded: Sequence[str], failed: Sequence[str]
) -> tuple[int, int, int]:
    """How far an interrupted output got: (inputs done, rows to keep, failures to keep).

    Rows and failures are both written in input order, so walking the inputs alongside them
    finds the longest prefix of the inputs that the output accounts for. Anything after it
    (a batch cut short, inputs that changed since) is dropped and done again, so the resumed
    output is exactly what one uninterrupted run writes.
    """
    row = fail = 0
    for done, path in enumerate(inputs):
        if row < len(embedded) and embedded[row] == path:
            row += 1
        elif fail < len(failed) and failed[fail] == path:
            fail += 1
        else:
            return done, row, fail
    return len(inputs), row, fail
