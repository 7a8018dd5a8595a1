"""What an existing output holds, as typed records read once: `Recorded` (what it records of
the run that made it: the settings that must match for rows to be comparable) and
`OutputState` (its rows, failures and completeness). --resume, --update, efx merge and
efx similar compare outputs through `Recorded.differences` alone; the keys that must match
are named here and nowhere else. Pure Python, no TensorFlow or numpy.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

from .errors import EfxError
from .facts import Facts

# What makes rows comparable: outputs that differ in any of these cannot be continued or
# merged into one another (a derived key, "numerics", folds precision and backend together).
ROWS = ("model", "image_size", "feature_dim", "resize", "exif_orientation", "numerics")
# ... and what parts of one run share besides: the inputs and which part of a shard is the image.
PARTS = (*ROWS, "inputs_total", "image_column", "image_key", "keep_columns")
# What an output records of the model that made its rows: an update that needs no model keeps
# these from the output whose rows it copies.
MODEL = (
    "model", "standin", "image_size", "feature_dim", "tensorflow_version", "device", "backend",
    "precision", "engine",
)  # fmt: skip


@dataclass(frozen=True)
class Recorded:
    """The settings an output's attributes record (efx.run.record writes them). A field is None
    where the output does not record it (an older efx, or a setting not asked for), as the
    attribute is absent; values keep the types they are stored with."""

    # What ran (known once the model is loaded).
    model: str | None = None  # the model's name
    standin: bool | None = None  # the random-weight stand-in (efx make-standin)
    image_size: int | None = None
    feature_dim: int | None = None
    precision: str | None = None  # what ran: float32 where the CPU lacks what was asked
    backend: str | None = None  # "tensorflow" or "openvino"
    # What was asked (known before the model loads: efx.run.record.planned_attrs).
    model_handle: str | None = None
    resize: str | None = None
    exif_orientation: bool | None = None
    precision_requested: str | None = None
    part: str | None = None  # "I/N"
    inputs_total: int | None = None  # inputs of all the parts
    part_inputs: int | None = None  # inputs of this part
    image_column: str | None = None
    image_key: str | None = None
    keep_columns: list[str] | None = None

    @classmethod
    def of(cls, attrs: Mapping[str, Any]) -> Recorded:
        """The record of an output's attributes (writers.describe, OutputState.attrs, or what a
        run is about to write)."""
        return cls(**{f.name: attrs.get(f.name) for f in fields(cls)})

    @property
    def numerics(self) -> str:
        """How rows were computed, as far as it changes them: float32 is float32 on either
        backend (TensorFlow and OpenVINO agree to ~1e-7); reduced precision differs by
        backend."""
        precision = str(self.precision or "float32")
        if precision == "float32":
            return precision
        return f"{precision} ({self.backend or 'tensorflow'})"

    def asked(self, update: bool = False) -> list[str]:
        """The settings asked for that must match what an earlier run asked for, this record
        being what is asked now: the inputs of all parts only for a part that is resumed (an
        update may change the inputs: that is its point), the image size only when given."""
        keys = ["model_handle", "resize", "exif_orientation", "part", "image_column", "image_key"]
        keys.append("keep_columns")
        if self.part != "0/1" and not update:
            keys.append("inputs_total")
        if self.image_size:
            keys.append("image_size")
        return keys

    def differences(self, other: Recorded, keys: Sequence[str]) -> list[str]:
        """The settings in `keys` on which this record (there) and `other` (here) differ,
        described for a person."""
        found = []
        for key in keys:
            there, here = getattr(self, key), getattr(other, key)
            if there != here:
                label = "precision" if key in ("numerics", "precision_requested") else key
                found.append(f"{label}: {_shown(there)} there, {_shown(here)} here")
        return found

    def check_continued(
        self, output: str, wanted: Recorded, before: bool, update: bool = False
    ) -> None:
        """Refuse to continue (or `update`) `output`, which records this, with settings that
        would give other rows, naming each. Raises EfxError.

        `before` the model loads, what was asked is compared with what was asked (the
        precision asked for, not the one that ran: OpenVINO may have fallen back to float32);
        after, what ran with what ran (`ROWS`).
        """
        if before:
            keys = wanted.asked(update)
            keys += ["precision_requested"] if self.precision_requested is not None else []
        else:
            keys = list(ROWS)
        differences = self.differences(wanted, keys)
        if differences:
            verb = "update" if update else "resume"
            raise EfxError(
                f"cannot {verb} {output}: it was made with other settings ("
                + "; ".join(differences)
                + f"). {verb.capitalize()} with the same settings, or start over with --overwrite."
            )

    def embedding_settings(self, output: str) -> dict[str, Any]:
        """The efx.config.Settings fields that embed an image as the rows of `output`, which
        records this, were (efx similar's queries). Raises EfxError for an output that does not
        record its model."""
        if not self.model_handle:
            raise EfxError(
                f"{output} does not record the model it was made with, so query images cannot be "
                "embedded like its rows; query with paths already in it"
            )
        backend = str(self.backend or "auto")
        return {
            "model": self.model_handle,
            "image_size": self.image_size,
            "resize": self.resize or "squash",
            "exif": True if self.exif_orientation is None else bool(self.exif_orientation),
            "precision": str(self.precision or "float32"),
            "backend": backend if backend in ("tensorflow", "openvino") else "auto",
        }


def _shown(value: Any) -> str:
    return "not given" if value is None else repr(value)


@dataclass(frozen=True)
class OutputState:
    """An existing output as --resume, --update, efx merge and convert read it
    (efx.writers.read_state): rows and failures in order, and with `facts` what --update
    compares."""

    attrs: dict[str, Any]  # its attributes as stored (efx.run.record wrote them)
    paths: list[str]  # its rows' keys, in row order
    failed: list[str]  # its failures' keys, in order
    complete: bool  # False: interrupted, or being written
    shard_size: int | None = None  # rows per file (.npy shards, Parquet); None for HDF5
    # Read with facts=True only (empty otherwise):
    facts: list[Facts] = field(default_factory=list)  # per row
    failed_facts: list[Facts] = field(default_factory=list)  # per failure
    reasons: list[str] = field(default_factory=list)  # per failure
    has_facts: bool = False  # False for outputs of efx before 0.4

    @property
    def recorded(self) -> Recorded:
        return Recorded.of(self.attrs)
