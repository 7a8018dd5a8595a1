"""Batches of embeddings made without a tf.data pipeline, and why an input failed: what every
engine shares (the local one, Ray's workers, efx serve), so that none of them imports another.
A batch carries its inputs' positions, the embeddings of those that decoded, and the reasons
of those that did not: the loop downstream never asks an engine why.
"""

from __future__ import annotations

import collections
import itertools
import os
from collections.abc import Iterator, Sequence
from typing import NamedTuple

import numpy as np

from .config import DecodeOptions
from .inputs import Input, fetched
from .model import LoadedModel


class Batch(NamedTuple):
    """Some of an engine's inputs, in order, through the model."""

    positions: np.ndarray  # int64, the inputs' positions in the list the engine was given
    embeddings: np.ndarray  # float32 [ok.sum(), feature_dim]: those that decoded, in order
    ok: np.ndarray  # bool per position: decoded and embedded
    reasons: dict[int, str]  # position -> why it failed, for each position not ok


def with_reasons(
    positions: np.ndarray,
    embeddings: np.ndarray,
    ok: np.ndarray,
    inputs: Sequence[Input],
    options: DecodeOptions,
) -> Batch:
    """A batch, with the reason of each input that failed (`failure_reason`)."""
    failed = positions[~ok].tolist()
    return Batch(positions, embeddings, ok, {p: failure_reason(inputs[p], options) for p in failed})


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
            yield with_reasons(np.arange(start, stop), embeddings, ok, inputs, options)


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
