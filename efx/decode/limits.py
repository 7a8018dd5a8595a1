"""Decompression bombs: an image's size read from its header, refused before it is decoded
(TensorFlow decodes a 400 KB PNG that declares 20000x20000 into a 1.2 GB tensor)."""

from __future__ import annotations

import tensorflow as tf

from .binary import uint
from .reasons import PNG_MAGIC


def check_pixels(
    data: tf.Tensor, head: tf.Tensor, is_jpeg: tf.Tensor, max_pixels: int
) -> tf.Operation:
    """Refuse a decompression bomb from its header, before a byte of it is decoded."""

    def jpeg_size() -> tf.Tensor:
        shape = tf.cast(tf.image.extract_jpeg_shape(data), tf.int64)
        return tf.stack([shape[1], shape[0]])

    def header_size() -> tf.Tensor:
        le16 = lambda offset: uint(head, offset, 2)  # noqa: E731
        le32 = lambda offset: uint(head, offset, 4)  # noqa: E731
        le24 = lambda offset: uint(head, offset, 3)  # noqa: E731
        magic4 = tf.strings.substr(head, 0, 4)
        webp = tf.strings.substr(head, 8, 8)
        vp8l = uint(head, 21, 4)
        signed_height = tf.bitwise.bitwise_xor(le32(22), 0x80000000) - 0x80000000
        return tf.case(
            [
                (
                    tf.equal(magic4, PNG_MAGIC[:4]),
                    lambda: tf.stack([uint(head, 16, 4, False), uint(head, 20, 4, False)]),
                ),
                (tf.equal(magic4, b"GIF8"), lambda: tf.stack([le16(6), le16(8)])),
                (
                    tf.equal(tf.strings.substr(head, 0, 2), b"BM"),
                    lambda: tf.stack([le32(18), tf.abs(signed_height)]),
                ),
                (
                    tf.equal(webp, b"WEBPVP8 "),
                    lambda: tf.stack([le16(26) % 16384, le16(28) % 16384]),
                ),
                (
                    tf.equal(webp, b"WEBPVP8L"),
                    lambda: tf.stack([vp8l % 16384 + 1, vp8l // 16384 % 16384 + 1]),
                ),
                (tf.equal(webp, b"WEBPVP8X"), lambda: tf.stack([le24(24) + 1, le24(27) + 1])),
            ],
            default=lambda: tf.zeros([2], tf.int64),
        )

    size = tf.cond(is_jpeg, jpeg_size, header_size)
    message = tf.strings.format(
        "image too large: {}x{} pixels exceeds --max-pixels {}", (size[0], size[1], max_pixels)
    )
    return tf.debugging.Assert(size[0] * size[1] <= max_pixels, [message])
