"""Engines: where decoding and the model run. Each loads the model and turns a list of paths into
batches of (positions in the list, embeddings of the images that decoded, ok flags), in input
order; `api.stream` writes them, whichever engine made them.

local: the tf.data pipeline and the model in this process. ray: Ray Data actors (ray_engine.py).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Protocol

import numpy as np

from .config import DecodeOptions, Settings
from .model import LoadedModel, ModelSpec, load_model

Batch = tuple[np.ndarray, np.ndarray, np.ndarray]  # positions, embeddings of the ok, ok


class Engine(Protocol):
    def load_model(self, spec: ModelSpec, settings: Settings) -> LoadedModel: ...
    def batches(
        self, paths: Sequence[str], options: DecodeOptions, loaded: LoadedModel
    ) -> Iterator[Batch]: ...
    def close(self) -> None: ...


def open_engine(settings: Settings, verbose: bool = False) -> Engine:
    if settings.engine == "ray":
        from .ray_engine import RayEngine

        return RayEngine(settings.ray_address, verbose)
    return LocalEngine()


class LocalEngine:
    """tf.data (parallel read + decode) into the model, in this process."""

    def load_model(self, spec: ModelSpec, settings: Settings) -> LoadedModel:
        return load_model(
            spec, settings.image_size, settings.batch_size, settings.precision, settings.backend
        )

    def batches(
        self, paths: Sequence[str], options: DecodeOptions, loaded: LoadedModel
    ) -> Iterator[Batch]:
        """The pipeline drops files that fail to decode; the gaps in its indices are those."""
        from .decode import pipeline  # imports TensorFlow: only once there is work

        if not paths:
            return
        expected = 0  # the next index not yet accounted for
        for index, images in pipeline.image_batches(paths, options, loaded.batch_size):
            index = index.numpy()
            positions = np.arange(expected, index[-1] + 1)
            expected = int(index[-1]) + 1
            yield positions, loaded.embed(images), np.isin(positions, index)
        if expected < len(paths):  # the last files all failed
            positions = np.arange(expected, len(paths))
            empty = np.zeros([0, loaded.feature_dim], np.float32)
            yield positions, empty, np.zeros(len(positions), bool)

    def close(self) -> None:
        pass
