"""Engines: where decoding and the model run. Each loads the model and turns a list of inputs
(efx.inputs) into batches of (positions in the list, embeddings of the images that decoded, ok
flags), in input order; `efx.run.loop.stream` writes them, whichever engine made them.

local: the tf.data pipeline and the model in this process. ray: Ray Data actors (ray_engine.py).
"""

from __future__ import annotations

import contextlib
import functools
import threading
from collections.abc import Iterator, Sequence
from typing import Protocol

import numpy as np

from . import timeline
from .batches import Batch, with_reasons
from .config import DecodeOptions, Settings
from .importing import tensorflow
from .inputs import Input, fetched
from .model import LoadedModel, ModelSpec, load_model


class Engine(Protocol):
    def load_model(
        self, spec: ModelSpec, settings: Settings, images: int | None = None
    ) -> LoadedModel: ...
    def batches(
        self, inputs: Sequence[Input], options: DecodeOptions, loaded: LoadedModel
    ) -> Iterator[Batch]: ...
    def close(self) -> None: ...


def open_engine(settings: Settings, verbose: bool = False, spec: ModelSpec | None = None) -> Engine:
    """Ray; else an `efx serve` running this model (efx.serve), else this process."""
    if settings.engine == "ray":
        from .ray_engine import RayEngine

        return RayEngine(settings.ray_address, verbose)
    if spec is not None:
        from . import serve

        served, why = serve.connect(spec, settings)
        if served is not None:
            return served
        return LocalEngine([why] if why else [])
    return LocalEngine()


class LocalEngine:
    """tf.data (parallel read + decode) into the model, in this process."""

    def __init__(self, notes: Sequence[str] = ()) -> None:
        self._notes = list(notes)  # said with the model's own (why a server was not used)

    def load_model(
        self, spec: ModelSpec, settings: Settings, images: int | None = None
    ) -> LoadedModel:
        """The model, loaded while another thread imports TensorFlow and the decoders: on a
        CPU with OpenVINO and its converted model cached, the two do not wait for each other
        (a one-image run's start-up: README, Interactive use)."""
        threading.Thread(target=_import_decoders, name="efx-import", daemon=True).start()
        loaded = load_model(
            spec, settings.image_size, settings.batch_size, settings.precision,
            settings.backend, images,
        )  # fmt: skip
        loaded.notes[:0] = self._notes
        return loaded

    def batches(
        self, inputs: Sequence[Input], options: DecodeOptions, loaded: LoadedModel
    ) -> Iterator[Batch]:
        """The pipeline drops inputs that fail to decode; the gaps in its indices are those
        (each read and decoded again, alone, to say why: efx.batches.failure_reason).
        Images inside shards and objects by URL reach it as bytes, read ahead by efx.sources;
        files of their own are read by the pipeline's decoders."""
        from .decode import pipeline  # imports TensorFlow: only once there is work

        if not inputs:
            return
        paths = ["" if fetched(inp) else inp.path for inp in inputs]
        members = None
        if any(fetched(inp) for inp in inputs):
            members = functools.partial(_member_bytes, inputs)
        expected = 0  # the next index not yet accounted for
        batches = pipeline.image_batches(paths, options, loaded.batch_size, members)
        timeline.mark("pipeline built")
        for index, images in batches:
            timeline.mark("first images decoded")
            index = index.numpy()
            positions = np.arange(expected, index[-1] + 1)
            expected = int(index[-1]) + 1
            embeddings, ok = loaded.embed(images), np.isin(positions, index)
            yield with_reasons(positions, embeddings, ok, inputs, options)
        if expected < len(inputs):  # the last inputs all failed
            positions = np.arange(expected, len(inputs))
            empty = np.zeros([0, loaded.feature_dim], np.float32)
            yield with_reasons(positions, empty, np.zeros(len(positions), bool), inputs, options)

    def close(self) -> None:
        pass


def _import_decoders() -> None:
    """Import the tf.data pipeline (and TensorFlow) ahead of its first use; a failure here is
    met again, and reported, where the pipeline is used."""
    with contextlib.suppress(Exception):
        tensorflow()
        from .decode import pipeline  # noqa: F401
    timeline.mark("decoders imported")


def _member_bytes(inputs: Sequence[Input]) -> Iterator[bytes]:
    """The bytes of the images inside shards and of objects by URL, in order; b"" for one that
    cannot be read (the decoder then fails on it, and its failure's reason reads it again)."""
    from . import sources

    for data in sources.read_ahead(inputs):
        yield b"" if isinstance(data, BaseException) else data
