"""Animated WebP: TensorFlow 2.21's animated-WebP decoder corrupts the heap and kills the
process (reproduced here; no upstream TensorFlow issue found), so an animation never reaches
it: the first frame is rewrapped as a still WebP."""

from __future__ import annotations

import tensorflow as tf

from .binary import le24, pack, uint


def is_animated_webp(head: tf.Tensor) -> tf.Tensor:
    # A VP8X chunk with the animation flag (bit 1 of the byte after the chunk size).
    flags = uint(head, 20, 1)
    return tf.logical_and(
        tf.equal(tf.strings.substr(head, 8, 8), b"WEBPVP8X"),
        tf.not_equal(tf.bitwise.bitwise_and(flags, 2), 0),
    )


def first_webp_frame(data: tf.Tensor) -> tf.Tensor:
    """An animated WebP -> a still WebP of its first frame.

    TensorFlow 2.21's animated-WebP decoder corrupts the heap and kills the process, so an
    animation never reaches it: the first ANMF chunk's bitstream is rewrapped as a still image.
    """
    size = tf.strings.length(data)

    def not_anmf(position: tf.Tensor) -> tf.Tensor:
        return tf.logical_and(
            position + 24 <= size, tf.not_equal(tf.strings.substr(data, position, 4), b"ANMF")
        )

    def next_chunk(position: tf.Tensor) -> tf.Tensor:
        length = tf.cast(uint(data, position + 4, 4), tf.int32)
        return position + 8 + length + length % 2

    position = tf.while_loop(
        not_anmf, lambda p: [next_chunk(p)], [tf.constant(12, tf.int32)], maximum_iterations=256
    )[0]
    tf.debugging.assert_less_equal(position + 24, size, message="truncated or corrupt WebP")
    frame_size = tf.cast(uint(data, position + 4, 4), tf.int32)
    width, height = uint(data, position + 14, 3), uint(data, position + 17, 3)
    frame = tf.strings.substr(data, position + 24, frame_size - 16)
    alpha = tf.where(tf.equal(tf.strings.substr(frame, 0, 4), b"ALPH"), 0x10, 0)
    riff_size = tf.cast(tf.strings.length(frame), tf.int64) + 4 + 18
    header = pack([*[ord(c) for c in "RIFF"], *le24(riff_size), riff_size // 16777216])
    vp8x = pack(
        [*[ord(c) for c in "VP8X"], 10, 0, 0, 0, alpha, 0, 0, 0, *le24(width), *le24(height)]
    )
    return tf.strings.join([header, b"WEBP", vp8x, frame])
