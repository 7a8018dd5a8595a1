"""`Plan`: what a run will do, decided before the model loads (efx.run.plan makes it; the
other stages read it)."""

from __future__ import annotations

from dataclasses import dataclass, field

from .. import reuse
from .. import sources as sources_
from ..inputs import Input
from ..model import ModelSpec
from ..recorded import OutputState


@dataclass(frozen=True)
class Plan:
    """What a run will do, decided before the model loads."""

    output: str
    format: str
    spec: ModelSpec
    part: str  # "I/N"
    inputs_total: int  # inputs of all the parts
    paths: list[str]  # the keys of this run's inputs, in row order
    existing: OutputState | None = None  # the output to continue (--resume) or update
    done: int = 0  # inputs that output already accounts for (--resume)
    keep: tuple[int, int] = (0, 0)  # its rows and failures that stay (--resume)
    work: reuse.Work | None = None  # what each input of paths[done:] needs
    sources: list[reuse.Source] = field(default_factory=list)  # rows that may be copied
    target: str = ""  # where rows are written: OUTPUT, or for --update OUTPUT.updating-N
    checked_seconds: float = 0.0  # planning: walk, stat, hashing
    inputs: list[Input] = field(default_factory=list)  # this run's inputs (keys: `paths`)
    # --image-column/--image-key as asked, else as the output to continue or update records.
    shard_options: sources_.ShardOptions = sources_.ShardOptions()
