"""The tf.data pipeline around `decode_image`: parallel read and decode, in input order; the
per-file decoder for engines that schedule files themselves; and `failure_reason`, which
re-decodes a failed file to say why."""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np
import tensorflow as tf

from ..config import DecodeOptions
from .image import decode_image, decode_picture, resize
from .reasons import decode_reason, os_reason, read_head, sniff_format


def _graph_only(function: Callable[..., Any]) -> Callable[..., Any]:
    """Traced as written, without AutoGraph: `decode_image` is plain graph code (tf.cond,
    tf.case, no Python branching on tensors), so converting its source first only costs time:
    measured 2-6 s more for the first pipeline of a process, the same graph (1,347 ops)."""
    return tf.autograph.experimental.do_not_convert(function)


def image_batches(
    paths: Sequence[str],
    options: DecodeOptions,
    batch_size: int,
    member_bytes: Callable[[], Iterable[bytes]] | None = None,
) -> tf.data.Dataset:
    """Batches of (index, image) of the inputs that decode, in input order, read and decoded in
    parallel. An input that cannot be read or decoded is dropped: its index is missing.

    `paths[i]` is a file to read, or "" for an input whose bytes are the next of
    `member_bytes()` (images inside shards, read by efx.sources in order, ahead of the decoders).

    One flat parallel map with `ignore_errors`, no per-file nested datasets: those cost ~0.4 s
    of function instantiation before the first batch of every run (measured: first batch of
    1024x768 JPEGs 0.42 s nested, 0.05 s flat), the same decoding afterwards.
    """
    encoded = [os.fsencode(path) for path in paths]
    if member_bytes is None:
        dataset = tf.data.Dataset.from_tensor_slices(
            (tf.range(len(encoded), dtype=tf.int64), tf.constant(encoded, dtype=tf.string))
        ).map(lambda index, path: (index, path, ""))
    else:
        # In blocks: tf.data calls back into Python once per element of a generator (~0.4 ms
        # each, measured: tiny images went through at half the pace of files), once per
        # block this way.
        dataset = tf.data.Dataset.from_generator(
            lambda: _with_bytes(encoded, member_bytes()),
            output_signature=(
                tf.TensorSpec([None], tf.int64), tf.TensorSpec([None], tf.string),
                tf.TensorSpec([None], tf.string),
            ),
        ).unbatch()  # fmt: skip
    workers = max(2, os.cpu_count() or 2)
    # Fixed parallelism instead of AUTOTUNE: the model is the bottleneck, so one decoder per
    # core and two batches in hand keep it fed; and tf.data's autotuning thread makes every
    # iterator take ~4 s to shut down (measured: 3.9-4.1 s per run, 0.01 s without it).
    # No static graph optimisations either: they cost ~0.1 s per run and gain nothing here.
    tuning = tf.data.Options()
    tuning.autotune.enabled = False
    tuning.experimental_optimization.apply_default_optimizations = False
    decode = _decoder(options)
    return (
        dataset.map(
            _graph_only(lambda index, path, data: (index, decode(path, data))),
            num_parallel_calls=workers,
            deterministic=True,
        )
        .ignore_errors()
        .batch(batch_size)
        .prefetch(2)
        .with_options(tuning)
    )


_BLOCK = 64  # inputs per call of the generator
_BLOCK_BYTES = 8 << 20  # ... and at most this many bytes of images read ahead in one block


def _with_bytes(
    paths: list[bytes], member_bytes: Iterable[bytes]
) -> Iterable[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """(indices, paths, bytes) of the inputs in blocks of _BLOCK inputs or _BLOCK_BYTES bytes,
    whichever comes first: b"" for a file's bytes (64 noisy 3 MB scans in one block held
    192 MB of bytes in the pipeline)."""
    data = iter(member_bytes)
    start = 0
    while start < len(paths):
        block, held = [], 0
        for path in paths[start : start + _BLOCK]:
            block.append(b"" if path else next(data))
            held += len(block[-1])
            if held >= _BLOCK_BYTES:
                break
        yield (
            np.arange(start, start + len(block), dtype=np.int64),
            np.array(paths[start : start + len(block)], dtype=object),
            np.array(block, dtype=object),
        )
        start += len(block)


def _bytes(path: tf.Tensor, data: tf.Tensor) -> tf.Tensor:
    """An input's bytes: its file read, or those read for it from a shard."""
    return tf.cond(tf.strings.length(path) > 0, lambda: tf.io.read_file(path), lambda: data)


@functools.lru_cache(maxsize=16)
def _decoder(options: DecodeOptions) -> Any:
    """The read + `decode_image` of one input as a TensorFlow function, traced once per
    process and options: each pipeline's map then only calls it. Tracing the ~1,350 operations
    costs ~1.2 s, which a process that runs several pipelines (efx serve, a library caller)
    would otherwise pay for each one; the operations, and so the pixels, are the same."""

    @tf.function(input_signature=[tf.TensorSpec([], tf.string)] * 2, autograph=False)
    def decode(path: tf.Tensor, data: tf.Tensor) -> tf.Tensor:
        return decode_image(_bytes(path, data), options)

    return decode


def file_decoder(options: DecodeOptions) -> Callable[[bytes, bytes], np.ndarray | None]:
    """A (path, bytes) -> image function for engines that schedule inputs themselves (Ray):
    the same read + `decode_image` as the tf.data pipeline (`_decoder`); the file at `path` is
    read, or `bytes` decoded when path is b"" (a shard's member). None when the input cannot be
    read or decoded (as the pipeline flags it ok=False)."""
    decode = _decoder(options)

    def one(path: bytes, data: bytes = b"") -> np.ndarray | None:
        try:
            return np.asarray(decode(tf.constant(path), tf.constant(data)))
        except tf.errors.OpError:
            return None

    return one


@functools.lru_cache(maxsize=4)
def _stages(options: DecodeOptions) -> tuple[Callable[..., Any], Callable[..., Any]]:
    """The decode and resize stages of `decode_image`, traced as the pipeline runs them (in a
    graph: Pillow's errors arrive as TensorFlow's, with the same messages), once per options."""
    decode = tf.function(
        lambda data: decode_picture(data, options),
        input_signature=[tf.TensorSpec([], tf.string)],
        autograph=False,
    )
    fit = tf.function(
        lambda picture: resize(picture, options),
        input_signature=[tf.TensorSpec([None, None, 3], tf.float32)],
        autograph=False,
    )
    return decode, fit


def failure_reason(path: str, options: DecodeOptions, data: bytes | None = None) -> str:
    """Why `path` (or, given `data`, the shard member of that name) cannot be embedded: the
    pipeline's decode run again eagerly, its error in words.

    Failures are rare, so re-reading the one input is cheaper than carrying messages through
    tf.data (whose ignore_errors drops them).
    """
    try:
        head = read_head(path) if data is None else data[:64]
    except OSError as error:
        return os_reason(error)
    if not head:
        return "empty file" if data is None else "empty member: no bytes"
    decode, fit = _stages(options)
    try:
        picture = decode(tf.io.read_file(os.fsencode(path)) if data is None else tf.constant(data))
    except tf.errors.OpError as error:
        return decode_reason(error.message, head)
    try:  # the file is valid: what failed is efx's own work on it, never "corrupt"
        fit(picture)
    except tf.errors.OpError as error:
        height, width = picture.shape[:2]
        return (
            f"a valid {width}x{height} {sniff_format(head) or 'image'} that efx failed to "
            f"resize ({error.message.splitlines()[0]}): please report this"
        )
    return "could not be read during the run (it decodes now: was it being written?)"
