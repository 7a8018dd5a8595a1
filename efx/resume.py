"""Continuing and combining runs: which inputs an output already holds, which settings must
match, and how inputs split into parts for many machines. Pure Python, no TensorFlow.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, TypeVar

from .errors import EfxError

# What makes rows comparable: outputs that differ in any of these cannot be continued or
# merged into one another.
SETTINGS = ("model", "image_size", "feature_dim", "resize", "exif_orientation", "numerics")


def numerics(attrs: dict[str, Any]) -> str:
    """How rows were computed, as far as it changes them: float32 is float32 on either backend
    (TensorFlow and OpenVINO agree to ~1e-7); reduced precision differs by backend."""
    precision = str(attrs.get("precision", "float32"))
    if precision == "float32":
        return precision
    return f"{precision} ({attrs.get('backend', 'tensorflow')})"


T = TypeVar("T")


def select_part(paths: Sequence[T], index: int, count: int) -> list[T]:
    """Part `index` of `count`: a contiguous block of the ordered files, so that the parts
    concatenated in order are exactly the whole. A shard is one file: never split."""
    total = len(paths)
    return list(paths[total * index // count : total * (index + 1) // count])


def check_settings(
    output: str, stored: dict[str, Any], wanted: dict[str, Any], before: bool, update: bool = False
) -> None:
    """Refuse to continue (or `update`) `output` with settings that would give other rows,
    naming each.

    `before` the model loads, what was asked is compared with what was asked (the precision
    asked for, not the one that ran: OpenVINO may have fallen back to float32); after, what
    ran with what ran (`SETTINGS`). An update may change the number of inputs (that is its
    point); a resumed part may not (the parts' boundaries would move).
    """
    if before:
        keys = before_keys(wanted, update)
        keys += ["precision_requested"] if "precision_requested" in stored else []
    else:
        keys = list(SETTINGS)
    differences = mismatches(stored, wanted, keys)
    if differences:
        verb = "update" if update else "resume"
        raise EfxError(
            f"cannot {verb} {output}: it was made with other settings ("
            + "; ".join(differences)
            + f"). {verb.capitalize()} with the same settings, or start over with --overwrite."
        )


def before_keys(wanted: dict[str, Any], update: bool = False) -> list[str]:
    """The settings asked for that must match what an earlier run asked for (see
    check_settings); "precision_requested" where the earlier output records it."""
    keys = ["model_handle", "resize", "exif_orientation", "part", "image_column", "image_key"]
    keys.append("keep_columns")
    if wanted["part"] != "0/1" and not update:
        keys.append("inputs_total")
    if wanted.get("image_size"):
        keys.append("image_size")
    return keys


def mismatches(stored: dict[str, Any], wanted: dict[str, Any], keys: Sequence[str]) -> list[str]:
    """The settings in `keys` on which two runs differ, described for a person."""
    found = []
    for key in keys:
        there, here = _setting(stored, key), _setting(wanted, key)
        if there != here:
            label = "precision" if key in ("numerics", "precision_requested") else key
            found.append(f"{label}: {_shown(there)} there, {_shown(here)} here")
    return found


def _shown(value: Any) -> str:
    return "not given" if value is None else repr(value)


def _setting(attrs: dict[str, Any], key: str) -> Any:
    return numerics(attrs) if key == "numerics" else attrs.get(key)


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
