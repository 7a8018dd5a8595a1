"""Engines: where decoding and the model run. Each loads the model and turns a list of inputs
(efx.inputs) into batches of (positions in the list, embeddings of the images that decoded, ok
flags), in input order; `api.stream` writes them, whichever engine made them.

local: the tf.data pipeline and the model in this process. ray: Ray Data actors (ray_engine.py).
"""

from __future__ import annotations

import collections
import contextlib
import functools
import itertools
import os
import threading
from collections.abc import Iterator, Sequence
from typing import Protocol

import numpy as np

from . import timeline
from .config import DecodeOptions, Settings
from .inputs import Input, fetched
from .model import LoadedModel, ModelSpec, load_model, tensorflow

Batch = tuple[np.ndarray, np.ndarray, np.ndarray]  # positions, embeddings of the ok, ok


class Engine(Protocol):
    def load_model(
        self, spec: ModelSpec, settings: Settings, images: int | None = None
    ) -> LoadedModel: ...
    def batches(
        self, inputs: Sequence[Input], options: DecodeOptions, loaded: LoadedModel
    ) -> Iterator[Batch]: ...
    def reason(self, inp: Input, options: DecodeOptions) -> str: ...
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
        """The pipeline drops inputs that fail to decode; the gaps in its indices are those.
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
            yield positions, loaded.embed(images), np.isin(positions, index)
        if expected < len(inputs):  # the last inputs all failed
            positions = np.arange(expected, len(inputs))
            empty = np.zeros([0, loaded.feature_dim], np.float32)
            yield positions, empty, np.zeros(len(positions), bool)

    def reason(self, inp: Input, options: DecodeOptions) -> str:
        return failure_reason(inp, options)

    def close(self) -> None:
        pass


def direct_batches(
    inputs: Sequence[Input], options: DecodeOptions, loaded: LoadedModel
) -> Iterator[Batch]:
    """The batches `LocalEngine.batches` gives, decoded without a tf.data pipeline: the same
    decode function (efx.decode.pipeline.file_decoder) called on a few threads, in order. A
    pipeline instantiates its decode function anew for every iterator (0.5-0.7 s measured);
    a process that answers many small requests (efx serve) keeps one instantiation."""
    from concurrent.futures import Future, ThreadPoolExecutor

    from . import sources
    from .decode.pipeline import file_decoder

    decode = file_decoder(options)

    def image(inp: Input, data: bytes | BaseException) -> np.ndarray | None:
        if isinstance(data, BaseException):
            return None
        return decode(b"" if fetched(inp) else os.fsencode(inp.path), data)

    pending: collections.deque[Future[np.ndarray | None]] = collections.deque()
    ahead = 2 * loaded.batch_size  # decoded ahead of the model, as the pipeline's prefetch
    with ThreadPoolExecutor(max(2, os.cpu_count() or 2)) as pool:
        read = zip(inputs, sources.read_inputs(inputs), strict=True)
        for start in range(0, len(inputs), loaded.batch_size):
            stop = min(len(inputs), start + loaded.batch_size)
            for inp, data in itertools.islice(read, stop + ahead - start - len(pending)):
                pending.append(pool.submit(image, inp, data))
            images = [pending.popleft().result() for _ in range(stop - start)]
            ok = np.array([one is not None for one in images])
            found = [one for one in images if one is not None]
            embeddings = (
                loaded.embed(np.stack(found))
                if found
                else np.zeros([0, loaded.feature_dim], np.float32)
            )
            yield np.arange(start, stop), embeddings, ok


def failure_reason(inp: Input, options: DecodeOptions) -> str:
    """Why an input the pipeline dropped could not be embedded: read and decoded again, alone,
    to say so (efx.decode.pipeline.failure_reason). Rare: only failed inputs come here."""
    from . import sources
    from .decode.pipeline import failure_reason as decoding_failure

    if not fetched(inp):
        return decoding_failure(inp.path, options)
    data = sources.read_one(inp)
    if inp.member is None:  # an object by URL: its reasons are a file's
        if isinstance(data, OSError):
            from .decode.reasons import os_reason

            return os_reason(data)
        if not data:
            return "empty file"
    if isinstance(data, BaseException):
        return sources.read_reason(data)
    return decoding_failure(inp.key, options, data)


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
