"""Reading binary headers inside the graph: integers at byte offsets."""

from __future__ import annotations

import tensorflow as tf


def bytes_at(data: tf.Tensor, offset: tf.Tensor | int, length: int) -> tf.Tensor:
    """`length` bytes of `data` from `offset` as int64, zero past the end (an offset past the
    end is clamped: substr would fail, with the bytes of `data` in its message)."""
    end = tf.cast(tf.strings.length(data), tf.int64)
    offset = tf.minimum(tf.cast(offset, tf.int64), end)
    chunk = tf.strings.join([tf.strings.substr(data, offset, length), b"\0" * length])
    return tf.cast(tf.io.decode_raw(tf.strings.substr(chunk, 0, length), tf.uint8), tf.int64)


def uint(data: tf.Tensor, offset: tf.Tensor | int, length: int, little: bool = True) -> tf.Tensor:
    """An unsigned integer of `length` bytes stored at `offset` (little- or big-endian)."""
    values = bytes_at(data, offset, length)
    weights = [256**i for i in range(length)]
    return tf.reduce_sum(values * tf.constant(weights if little else weights[::-1], tf.int64))
