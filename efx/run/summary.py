"""A run's summary: what `efx extract --json` prints and `efx.extract` returns."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from .. import writers
from ..config import Settings
from ..model import LoadedModel
from .planned import Plan
from .record import output_attrs


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
    images_per_second: float  # images the model embedded per second of streaming
    complete: bool
    already_complete: bool = False  # --resume found nothing left to do
    notes: list[str] = field(default_factory=list)  # what the user should know (a fallback)
    # How each input's row was made (see efx.reuse): the model ran for `computed` of them.
    computed: int = 0  # new + changed + retried: inputs the model was given
    kept: int = 0  # --update: unchanged files, rows (and failures) copied from OUTPUT
    new: int = 0  # --update: inputs OUTPUT did not hold
    changed: int = 0  # --update: inputs whose bytes changed
    retried: int = 0  # --update --retry-failed: failures tried again
    reused: int = 0  # moved or copied files, and repeats of the same bytes: rows copied
    removed: int = 0  # --update: rows and failures of files that are gone
    model_loaded: bool = True
    up_to_date: bool = False  # --update found nothing changed: OUTPUT left untouched
    # The output's first failures ({"path", "error"}; at most FIRST_FAILURES): what efx extract
    # lists on stderr, without opening OUTPUT again (`efx info` lists them all).
    failures: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def summarise(
    plan: Plan,
    settings: Settings,
    loaded: LoadedModel | None,
    counts: tuple[int, int],
    clock: list[float],
    up_to_date: bool = False,
) -> Summary:
    started, loaded_at, finished = clock
    rows, failed = counts
    work = plan.work
    assert work is not None
    streaming = finished - loaded_at
    computed = len(work.to_embed)
    attrs = output_attrs(plan, settings, loaded)
    return Summary(
        output=plan.output,
        format=plan.format,
        model=str(attrs["model"]),
        standin=bool(attrs["standin"]),
        device=str(attrs["device"]),
        image_size=int(attrs["image_size"]),
        feature_dim=int(attrs["feature_dim"]),
        batch_size=loaded.batch_size if loaded else 0,
        precision=str(attrs["precision"]),
        backend=str(attrs["backend"]),
        engine=settings.engine,
        part=plan.part,
        images=len(plan.paths),
        embedded=plan.keep[0] + rows,
        failed=plan.keep[1] + failed,
        resumed=plan.done,
        seconds=round(finished - started, 3),
        load_seconds=round(loaded_at - started - plan.checked_seconds, 3) if loaded else 0.0,
        images_per_second=round(computed / streaming, 3) if computed and streaming > 0 else 0.0,
        complete=True,
        notes=loaded.notes if loaded else [],
        computed=computed,
        **{name: getattr(work.counts, name) for name in _COUNTS},
        model_loaded=loaded is not None,
        up_to_date=up_to_date,
        failures=first_failures(plan.output) if plan.keep[1] + failed else [],
    )


FIRST_FAILURES = 10


def first_failures(output: str) -> list[dict[str, Any]]:
    """The first failures OUTPUT holds (kept and new alike), in order; none for a stream."""
    if output == writers.STDOUT:
        return []
    return [
        {"path": f["path"], "error": f["error"]}
        for f in writers.describe(output)["failures"][:FIRST_FAILURES]
    ]


_COUNTS = ("kept", "new", "changed", "retried", "reused", "removed")


def already_complete(plan: Plan) -> Summary:
    assert plan.existing is not None
    existing = plan.existing
    attrs = existing.attrs
    done = len(existing.paths) + len(existing.failed)
    return Summary(
        output=plan.output,
        format=plan.format,
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
        images=done,
        embedded=len(existing.paths),
        failed=len(existing.failed),
        resumed=done,
        seconds=0.0,
        load_seconds=0.0,
        images_per_second=0.0,
        complete=True,
        already_complete=True,
        model_loaded=False,
    )
