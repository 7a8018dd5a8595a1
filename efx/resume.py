"""Continuing and combining runs: which inputs an output already holds, which settings must
match, and how inputs split into parts for many machines. Pure Python, no TensorFlow.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .errors import EfxError

# What makes rows comparable: outputs that differ in any of these cannot be continued or
# merged into one another.
SETTINGS = ("model", "image_size", "feature_dim", "resize", "exif_orientation", "precision")


def parse_part(text: str) -> tuple[int, int]:
    """ "I/N" -> (I, N), with 0 <= I < N."""
    index, slash, count = text.partition("/")
    try:
        part = (int(index), int(count))
    except ValueError:
        part = (-1, 0)
    if not slash or not 0 <= part[0] < part[1]:
        raise EfxError(f"--shard must be I/N with 0 <= I < N, e.g. 0/4. Received: {text!r}")
    return part


def select_part(paths: Sequence[str], index: int, count: int) -> list[str]:
    """Part `index` of `count`: a contiguous block of the ordered inputs, so that the parts
    concatenated in order are exactly the whole."""
    total = len(paths)
    return list(paths[total * index // count : total * (index + 1) // count])


def mismatches(stored: dict[str, Any], wanted: dict[str, Any], keys: Sequence[str]) -> list[str]:
    """The settings in `keys` on which two runs differ, described for a person."""
    found = []
    for key in keys:
        if stored.get(key) != wanted.get(key):
            found.append(f"{key}: {stored.get(key)!r} there, {wanted.get(key)!r} here")
    return found


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
