"""Reading binary headers inside the graph: integers at byte offsets, bytes packed back."""

from __future__ import annotations

import tensorflow as tf

# One-byte strings by value, to assemble binary headers inside the graph.
_BYTES = [bytes([value]) for value in range(256)]


def bytes_at(data: tf.Tensor, offset: tf.Tensor | int, length: int) -> tf.Tensor:
    """`length` bytes of `data` from `offset` as int64, zero past the end."""
    chunk = tf.strings.join([tf.strings.substr(data, offset, length), b"\0" * length])
    return tf.cast(tf.io.decode_raw(tf.strings.substr(chunk, 0, length), tf.uint8), tf.int64)


def uint(data: tf.Tensor, offset: tf.Tensor | int, length: int, little: bool = True) -> tf.Tensor:
    """An unsigned integer of `length` bytes stored at `offset` (little- or big-endian)."""
    values = bytes_at(data, offset, length)
    weights = [256**i for i in range(length)]
    return tf.reduce_sum(values * tf.constant(weights if little else weights[::-1], tf.int64))


def pack(values: list[tf.Tensor | int]) -> tf.Tensor:
    """Bytes (ints 0-255) -> a string tensor."""
    return tf.strings.reduce_join(
        tf.gather(_BYTES, tf.stack([tf.cast(v, tf.int64) for v in values]))
    )


def le24(value: tf.Tensor) -> list[tf.Tensor]:
    return [value % 256, value // 256 % 256, value // 65536 % 256]
