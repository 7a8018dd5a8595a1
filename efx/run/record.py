"""What an output records of its run (model, sizes, precision, columns, versions): the
attributes written with it and compared by --resume and --update."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from ..config import DEFAULT_SHARD_SIZE, Settings
from ..model import LoadedModel
from ..recorded import MODEL
from .planned import Plan

_ARROW_TYPES = {str: "string", bool: "bool", int: "int64", float: "double", bytes: "binary"}


def shard_size_of(plan: Plan, settings: Settings) -> int:
    """Rows per .npy shard: as asked, else the layout of the output this run continues or
    updates (an update rewrites OUTPUT: a nightly job must not reshard it), else the default."""
    earlier = plan.existing.shard_size if plan.existing is not None else None
    return settings.shard_size or earlier or DEFAULT_SHARD_SIZE


def planned_attrs(plan: Plan, settings: Settings) -> dict[str, Any]:
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
        # Which part of a shard's samples is the image, and the source columns kept: recorded
        # only when asked for.
        **{
            k: list(v) if isinstance(v, tuple) else v
            for k, v in plan.shard_options._asdict().items()
            if v
        },
    }


def output_attrs(plan: Plan, settings: Settings, loaded: LoadedModel | None) -> dict[str, Any]:
    """Everything the output records of the run."""
    now = datetime.now(timezone.utc).isoformat(timespec="seconds")
    earlier = earlier_attrs(plan)
    attrs: dict[str, Any] = {
        **planned_attrs(plan, settings),
        "efx_version": efx_version(),
        "created": earlier.get("created", now),  # when the first of its rows was computed
    }
    if settings.update:
        attrs["updated"] = now
    if plan.shard_options.keep_columns:
        attrs["keep_column_types"] = column_types(plan, earlier)
    if loaded is None:
        return {**attrs, **{key: earlier[key] for key in MODEL if key in earlier}}
    return {
        "model": loaded.name,
        **attrs,
        "standin": loaded.standin,
        "image_size": loaded.image_size,
        "feature_dim": loaded.feature_dim,
        "tensorflow_version": loaded.tensorflow_version,
        "device": loaded.device,
        "backend": loaded.backend,
        "precision": loaded.precision,  # float32 where the CPU lacks the precision asked for
        "engine": settings.engine,
    }


def column_types(plan: Plan, earlier: dict[str, Any]) -> list[str]:
    """The Arrow type of each kept column (efx.writers.parquet.schema): as the output this run
    continues or updates has it, else that of the first value the sources hold."""
    names = plan.shard_options.keep_columns
    names_before = earlier.get("keep_columns") or []
    before = dict(zip(names_before, earlier.get("keep_column_types") or [], strict=False))
    types = []
    for name in names:
        kind = before.get(name)
        if kind is None:
            value = next(
                (c[name] for inp in plan.inputs if (c := inp.columns) and c.get(name) is not None),
                None,
            )
            kind = _ARROW_TYPES.get(type(value), "string")
        types.append(kind)
    return types


def earlier_attrs(plan: Plan) -> dict[str, Any]:
    """What the output whose rows this run copies (or continues) records."""
    if plan.sources:
        return plan.sources[0].attrs
    return plan.existing.attrs if plan.existing is not None else {}


def efx_version() -> str:
    from ..version import __version__

    return __version__
