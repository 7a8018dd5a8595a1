"""Rows copied from earlier outputs, a producer beside the engine: the embeddings (and the
Parquet columns) of inputs efx.reuse marked COPY (--update's unchanged files, moved and copied
files, rows an interrupted update left), read from the output that holds them. Each output is
opened once, when its first row is needed, and read a step at a time: memory does not grow
with the output."""

from __future__ import annotations

from collections.abc import Sequence
from types import TracebackType
from typing import Any

import numpy as np

from .. import reuse, writers


class Copies:
    """The copied rows of a run's inputs, by their positions among the inputs."""

    def __init__(self, work: reuse.Work, sources: list[reuse.Source]) -> None:
        self._work, self._sources = work, sources
        self._readers: dict[int, writers.RowReader] = {}

    def rows(self, start: int, stop: int) -> dict[int, np.ndarray]:
        """The embeddings of the copied inputs among [start, stop): position - start -> row."""
        work = self._work
        copied = work.kind[start:stop] == reuse.COPY
        source = work.source[start:stop]
        found: dict[int, np.ndarray] = {}
        for number in np.unique(source[copied]).tolist():
            at = np.flatnonzero(copied & (source == number))
            rows = self._reader(number).take(work.index[start + at])
            found.update(zip(at.tolist(), rows, strict=True))
        return found

    def columns(self, positions: Sequence[int]) -> dict[int, dict[str, Any]]:
        """The columns beyond the embedding that the earlier output holds (a Parquet output's
        shard, key and kept source columns) for the copied inputs at `positions`: position ->
        {name: value}."""
        work = self._work
        found: dict[int, dict[str, Any]] = {}
        for number in sorted({int(work.source[p]) for p in positions}):
            mine = [p for p in positions if int(work.source[p]) == number]
            copied = self._reader(number).columns([int(work.index[p]) for p in mine])
            for name, values in copied.items():
                for position, value in zip(mine, values, strict=True):
                    found.setdefault(position, {})[name] = value
        return found

    def _reader(self, number: int) -> writers.RowReader:
        if number not in self._readers:
            self._readers[number] = writers.open_rows(self._sources[number].output)
        return self._readers[number]

    def close(self) -> None:
        for reader in self._readers.values():
            reader.close()
        self._readers.clear()

    def __enter__(self) -> Copies:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
