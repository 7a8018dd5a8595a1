"""Animated WebP: TensorFlow 2.21's animated-WebP decoder corrupts the heap and kills the
process (reproduced here; no upstream TensorFlow issue found), so an animation never reaches
it: `decode_picture` hands it to Pillow (libwebp's animation decoder) instead."""

from __future__ import annotations

import tensorflow as tf

from .binary import uint


def is_animated_webp(head: tf.Tensor) -> tf.Tensor:
    # A VP8X chunk with the animation flag (bit 1 of the byte after the chunk size).
    flags = uint(head, 20, 1)
    return tf.logical_and(
        tf.equal(tf.strings.substr(head, 8, 8), b"WEBPVP8X"),
        tf.not_equal(tf.bitwise.bitwise_and(flags, 2), 0),
    )
