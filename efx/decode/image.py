"""`decode_image`: encoded bytes -> model input, in pure TensorFlow, the one decode function
every engine shares (the same bytes always give the same tensor)."""

from __future__ import annotations

import tensorflow as tf

from ..config import DecodeOptions
from .bmp import decode_bmp
from .exif import exif_orientation, orient
from .limits import check_pixels
from .reasons import JPEG_MAGIC, PNG_MAGIC
from .webp import first_webp_frame, is_animated_webp


def decode_image(data: tf.Tensor, options: DecodeOptions) -> tf.Tensor:
    """Encoded bytes -> float32 RGB [size, size, 3] with values in [0, 1], as a person sees it.

    The format is read from the content, not the name. A header that claims more pixels than
    `options.max_pixels` is refused before anything is decoded.
    """
    # The first 32 bytes, zero-padded, so that short files can be sniffed without range errors.
    head = tf.strings.join([tf.strings.substr(data, 0, 32), b"\0" * 32])
    is_jpeg = tf.equal(tf.strings.substr(head, 0, 3), JPEG_MAGIC)
    is_png = tf.equal(tf.strings.substr(head, 0, 8), PNG_MAGIC)
    is_bmp = tf.equal(tf.strings.substr(head, 0, 2), b"BM")
    with tf.control_dependencies([check_pixels(data, head, is_jpeg, options.max_pixels)]):
        image = tf.case(
            [
                (is_jpeg, lambda: _decode_jpeg(data, options)),
                (is_png, lambda: _decode_png(data)),
                (is_bmp, lambda: decode_bmp(data, decode_other)),
                (is_animated_webp(head), lambda: decode_other(first_webp_frame(data))),
            ],
            default=lambda: decode_other(data),
        )
    return _resize(_to_rgb(image), options)


def _resize(rgb: tf.Tensor, options: DecodeOptions) -> tf.Tensor:
    """RGB of any size -> [size, size, 3]. Antialiased bilinear: a large photo and its smaller
    copy give nearly the same input."""
    size = options.image_size
    if options.resize == "crop":
        shape = tf.shape(rgb)
        side = tf.minimum(shape[0], shape[1])
        rgb = tf.image.crop_to_bounding_box(
            rgb, (shape[0] - side) // 2, (shape[1] - side) // 2, side, side
        )
    if options.resize == "pad":
        resized = tf.image.resize_with_pad(rgb, size, size, method="bilinear", antialias=True)
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
    image = tf.image.convert_image_dtype(image, tf.float32)
    return orient(image, exif_orientation(data)) if options.exif else image


def _decode_png(data: tf.Tensor) -> tf.Tensor:
    # uint16 keeps 16-bit PNGs' precision; 8-bit PNGs are scaled by 257, so x/65535 == x8/255.
    # An animated PNG gives its default image (the first frame).
    image = tf.io.decode_png(data, channels=0, dtype=tf.uint16)
    return tf.image.convert_image_dtype(image, tf.float32)


def decode_other(data: tf.Tensor) -> tf.Tensor:
    # GIF, WebP (uint8 only; channels=0 because channels=3 fails on RGBA WebP); the first frame
    # of an animated GIF. Anything else fails here with "Unknown image file format".
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
