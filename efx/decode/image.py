"""`decode_image`: encoded bytes -> model input, the one decode function every engine shares
(the same bytes always give the same tensor). TensorFlow's decoders, with what they get wrong
fixed in the graph (bmp, exif, limits), and Pillow called from the graph for the formats
TensorFlow cannot be fixed for (pillow.py: GIF, animated WebP, RLE BMP)."""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from ..config import DecodeOptions
from .binary import uint
from .bmp import decode_bmp
from .exif import exif_orientation, orient
from .limits import check_pixels
from .pillow import first_frame_rgb
from .reasons import JPEG_MAGIC, PNG_MAGIC
from .webp import is_animated_webp


def decode_image(data: tf.Tensor, options: DecodeOptions) -> tf.Tensor:
    """Encoded bytes -> float32 RGB [size, size, 3] with values in [0, 1], as a person sees it.

    The format is read from the content, not the name. A header that claims more pixels than
    `options.max_pixels` is refused before anything is decoded.
    """
    return resize(decode_picture(data, options), options)


def decode_picture(data: tf.Tensor, options: DecodeOptions) -> tf.Tensor:
    """Encoded bytes -> float32 RGB [height, width, 3] in [0, 1]: the picture at its own size
    (JPEGs possibly at a reduced DCT scale), turned upright by its EXIF orientation."""
    # The first 32 bytes, zero-padded, so that short files can be sniffed without range errors.
    head = tf.strings.join([tf.strings.substr(data, 0, 32), b"\0" * 32])
    is_jpeg = tf.equal(tf.strings.substr(head, 0, 3), JPEG_MAGIC)
    is_png = tf.equal(tf.strings.substr(head, 0, 8), PNG_MAGIC)
    is_bmp = tf.equal(tf.strings.substr(head, 0, 2), b"BM")
    # GIF, animated WebP and RLE BMPs: Pillow (see pillow.py for what TensorFlow gets wrong).
    by_pillow = tf.equal(tf.strings.substr(head, 0, 4), b"GIF8") | is_animated_webp(head)
    by_pillow |= is_bmp & _is_rle_bmp(head)
    with tf.control_dependencies([check_pixels(data, head, is_jpeg, options.max_pixels)]):
        image = tf.case(
            [
                (is_jpeg, lambda: _decode_jpeg(data, options)),
                (is_png, lambda: _decode_png(data)),
                (by_pillow, lambda: _decode_with_pillow(data, options.max_pixels)),
                (is_bmp, lambda: decode_bmp(data, decode_other)),
            ],
            default=lambda: decode_other(data),
        )
    image = _to_rgb(image)
    return orient(image, exif_orientation(data, head)) if options.exif else image


def resize(rgb: tf.Tensor, options: DecodeOptions) -> tf.Tensor:
    """RGB of any size -> [size, size, 3]. Antialiased bilinear: a large photo and its smaller
    copy give nearly the same input. Any aspect ratio works: a side never rounds to 0 pixels."""
    size = options.image_size
    shape = tf.shape(rgb)
    if options.resize == "crop":
        side = tf.minimum(shape[0], shape[1])
        rgb = tf.image.crop_to_bounding_box(
            rgb, (shape[0] - side) // 2, (shape[1] - side) // 2, side, side
        )
    if options.resize == "pad":
        # As tf.image.resize_with_pad (floor of the scaled sides, padding split evenly), but a
        # 2000x1 strip keeps one row: TensorFlow's rounds it to 0 and fails.
        scale = size / tf.cast(tf.maximum(shape[0], shape[1]), tf.float64)
        scaled = tf.cast(tf.floor(tf.cast(shape[:2], tf.float64) * scale), tf.int32)
        scaled = tf.clip_by_value(scaled, 1, size)
        fitted = tf.image.resize(rgb, scaled, method="bilinear", antialias=True)
        resized = tf.image.pad_to_bounding_box(
            fitted, (size - scaled[0]) // 2, (size - scaled[1]) // 2, size, size
        )
    else:
        resized = tf.image.resize(rgb, [size, size], method="bilinear", antialias=True)
    return tf.ensure_shape(resized, [size, size, 3])


def _decode_jpeg(data: tf.Tensor, options: DecodeOptions) -> tf.Tensor:
    # INTEGER_ACCURATE matches Pillow/libjpeg's default output; channels=3 also converts
    # grayscale and CMYK JPEGs to RGB.
    def decode(ratio: int) -> tf.Tensor:
        return tf.io.decode_jpeg(data, channels=3, dct_method="INTEGER_ACCURATE", ratio=ratio)

    if options.jpeg_scaling:
        # libjpeg can decode at 1/2, 1/4 or 1/8 scale, skipping most of the inverse DCT and
        # the colour conversion: a 12-megapixel photo decodes several times faster at 1/4 and
        # the antialiased resize that follows has 16x fewer pixels to average. Take the
        # smallest scale that keeps the shorter side at least the model's input size.
        shape = tf.image.extract_jpeg_shape(data)
        shorter = tf.minimum(shape[0], shape[1])
        scale = sum(tf.cast(shorter >= r * options.image_size, tf.int32) for r in (2, 4, 8))
        image = tf.switch_case(scale, [lambda r=r: decode(r) for r in (1, 2, 4, 8)])
    else:
        image = decode(1)
    return tf.image.convert_image_dtype(image, tf.float32)


def _decode_png(data: tf.Tensor) -> tf.Tensor:
    # uint16 keeps 16-bit PNGs' precision; 8-bit PNGs are scaled by 257, so x/65535 == x8/255.
    # An animated PNG gives its default image (the first frame).
    image = tf.io.decode_png(data, channels=0, dtype=tf.uint16)
    return tf.image.convert_image_dtype(image, tf.float32)


def _is_rle_bmp(head: tf.Tensor) -> tf.Tensor:
    # BI_RLE8 (1) and BI_RLE4 (2) in the BITMAPINFOHEADER's compression field.
    compression = uint(head, 30, 4)
    return tf.equal(compression, 1) | tf.equal(compression, 2)


def _decode_with_pillow(data: tf.Tensor, max_pixels: int) -> tf.Tensor:
    def decode(raw: bytes | np.ndarray) -> np.ndarray:  # bytes in a graph, an array eagerly
        return first_frame_rgb(raw if isinstance(raw, bytes) else raw.item(), max_pixels)

    image = tf.numpy_function(decode, [data], tf.uint8, stateful=False)
    image.set_shape([None, None, 3])
    return tf.image.convert_image_dtype(image, tf.float32)


def decode_other(data: tf.Tensor) -> tf.Tensor:
    # Still WebP (uint8 only; channels=0 because channels=3 fails on RGBA WebP), the BMPs
    # TensorFlow reads right. Anything else fails here with "Unknown image file format".
    image = tf.io.decode_image(data, channels=0, dtype=tf.uint8, expand_animations=False)
    return tf.image.convert_image_dtype(image, tf.float32)


def _to_rgb(image: tf.Tensor) -> tf.Tensor:
    """Gray, gray+alpha, RGB or RGBA -> RGB; alpha is dropped, as Pillow's convert("RGB") does."""
    channels = tf.shape(image)[2]
    rgb = tf.cond(
        channels >= 3,
        lambda: image[:, :, :3],
        lambda: tf.tile(image[:, :, :1], [1, 1, 3]),
    )
    return tf.ensure_shape(rgb, [None, None, 3])
