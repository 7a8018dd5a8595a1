"""BMPs TensorFlow decodes wrong: palette BMPs come out gray, 1- and 4-bit ones are refused
(tensorflow/tensorflow#60603: "Number of channels inherent in the image must be 1, 3 or 4";
#13942 added only 8-bit gray), and BI_BITFIELDS masks are ignored (wrong colours). Those are
read here from the bytes; every other BMP goes to TensorFlow's decoder."""

from __future__ import annotations

from collections.abc import Callable

import tensorflow as tf

from .binary import uint


def decode_bmp(data: tf.Tensor, other: Callable[[tf.Tensor], tf.Tensor]) -> tf.Tensor:
    """BMP -> float32 RGB. TensorFlow reads 24- and 32-bit BMPs right, but decodes palette BMPs
    as grayscale, refuses 1- and 4-bit ones and ignores BI_BITFIELDS masks: those are read here."""
    header_size = uint(data, 14, 4)
    bpp = uint(data, 28, 2)
    compression = uint(data, 30, 4)
    modern = header_size >= 40  # not the 1980s OS/2 header
    palette = modern & (bpp <= 8) & tf.equal(compression, 0)
    bitfields = modern & (tf.equal(bpp, 16) | tf.equal(bpp, 32))
    bitfields &= tf.equal(compression, 3) | tf.equal(compression, 6) | tf.equal(bpp, 16)
    return tf.case(
        [
            (palette, lambda: _decode_bmp_pixels(data, header_size, bpp, palette=True)),
            (bitfields, lambda: _decode_bmp_pixels(data, header_size, bpp, palette=False)),
        ],
        default=lambda: other(data),  # the BMPs TensorFlow reads right
    )


def _decode_bmp_pixels(
    data: tf.Tensor, header_size: tf.Tensor, bpp: tf.Tensor, palette: bool
) -> tf.Tensor:
    offset = uint(data, 10, 4)
    width = uint(data, 18, 4)
    signed_height = tf.bitwise.bitwise_xor(uint(data, 22, 4), 0x80000000) - 0x80000000
    height = tf.abs(signed_height)
    stride = (bpp * width + 31) // 32 * 4  # rows are padded to 4 bytes
    tf.debugging.assert_less_equal(
        offset + stride * height,
        tf.cast(tf.strings.length(data), tf.int64),
        message="truncated or corrupt BMP",
    )
    pixel_bytes = tf.io.decode_raw(tf.strings.substr(data, offset, stride * height), tf.uint8)
    rows = tf.reshape(tf.cast(pixel_bytes, tf.int64), tf.stack([height, stride]))
    if palette:
        per_byte = 8 // bpp
        shifts = 8 - bpp * (tf.range(per_byte, dtype=tf.int64) + 1)
        indices = tf.bitwise.bitwise_and(
            tf.bitwise.right_shift(rows[:, :, None], shifts), 2**bpp - 1
        )
        indices = tf.reshape(indices, tf.stack([height, -1]))[:, :width]
        colors = uint(data, 46, 4)
        count = tf.where(colors > 0, tf.minimum(colors, 2**bpp), 2**bpp)
        table = tf.reshape(
            tf.cast(
                tf.io.decode_raw(tf.strings.substr(data, 14 + header_size, 4 * count), tf.uint8),
                tf.float32,
            ),
            [-1, 4],
        )
        image = tf.gather(
            table[:, 2::-1] / 255.0, tf.minimum(indices, tf.shape(table, out_type=tf.int64)[0] - 1)
        )
    else:
        depth = bpp // 8
        pixels = tf.reshape(rows[:, : width * depth], tf.stack([height, width, depth]))
        weights = tf.constant([1, 256, 65536, 16777216], tf.int64)[:depth]
        values = tf.reduce_sum(pixels * weights, axis=-1)
        default_masks = tf.where(
            tf.equal(bpp, 16), [0x7C00, 0x03E0, 0x001F], [0xFF0000, 0xFF00, 0xFF]
        )
        masks = tf.where(
            tf.equal(uint(data, 30, 4), 0),
            tf.cast(default_masks, tf.int64),
            tf.stack([uint(data, 54, 4), uint(data, 58, 4), uint(data, 62, 4)]),
        )
        lowest = tf.bitwise.bitwise_and(masks, -masks)
        shifts = tf.cast(tf.raw_ops.PopulationCount(x=lowest - 1), tf.int64)
        peak = tf.cast(tf.maximum(tf.bitwise.right_shift(masks, shifts), 1), tf.float32)
        channels = tf.bitwise.right_shift(tf.bitwise.bitwise_and(values[:, :, None], masks), shifts)
        image = tf.cast(channels, tf.float32) / peak
    # Rows are stored bottom-up unless the height is negative.
    return tf.cond(signed_height > 0, lambda: tf.reverse(image, [0]), lambda: image)
