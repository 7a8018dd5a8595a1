"""Rows kept in memory: the writer efx similar (its query images) and efx bench (the pipeline's
speed) give the loop, so that they embed through the same stages as efx extract without a
file. Not an output format: nothing is written anywhere."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ..facts import Facts


class MemoryWriter:
    """The writer interface (efx.writers.Writer) into lists: `paths` and `embeddings()` in row
    order, `failures` as (path, reason) in input order."""

    def __init__(self, feature_dim: int = 0) -> None:
        self.paths: list[str] = []
        self.failures: list[tuple[str, str]] = []
        self._blocks: list[np.ndarray] = []
        self._dim = feature_dim

    def write(
        self,
        paths: list[str],
        embeddings: np.ndarray,
        facts: Sequence[Facts] | None = None,
        columns: Mapping[str, Sequence[Any]] | None = None,
    ) -> None:
        self.paths.extend(paths)
        self._blocks.append(np.array(embeddings, np.float32))  # (a copy: the step's array goes)
        self._dim = int(embeddings.shape[1])

    def fail(self, path: str, reason: str, facts: Facts | None = None) -> None:
        self.failures.append((path, reason))

    def embeddings(self) -> np.ndarray:
        """float32 [rows, feature_dim], row i for paths[i]."""
        if not self._blocks:
            return np.zeros([0, self._dim], np.float32)
        return np.concatenate(self._blocks)

    def flush(self, sync: bool = False) -> None:
        pass

    def close(self) -> None:
        pass

    def abort(self) -> None:
        pass
