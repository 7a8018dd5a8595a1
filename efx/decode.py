"""Image bytes to model input, in pure TensorFlow, and the tf.data pipeline around it.

`decode_image` is the one decode function every engine shares: the same bytes always give the
same tensor. A file that cannot be read or decoded never stops the pipeline; it comes through
flagged, and `failure_reason` says why in words a person understands.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import tensorflow as tf

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
JPEG_MAGIC = b"\xff\xd8\xff"


def decode_image(data: tf.Tensor, image_size: int) -> tf.Tensor:
    """Encoded bytes -> float32 RGB [image_size, image_size, 3] with values in [0, 1]."""
    # The first 32 bytes, zero-padded, so that short files can be sniffed without range errors.
    head = tf.strings.join([tf.strings.substr(data, 0, 32), b"\0" * 32])
    image = tf.case(
        [
            (_is_animated_webp(head), _refuse_animated_webp),
            (tf.equal(tf.strings.substr(head, 0, 3), JPEG_MAGIC), lambda: _decode_jpeg(data)),
            (tf.equal(tf.strings.substr(head, 0, 8), PNG_MAGIC), lambda: _decode_png(data)),
        ],
        default=lambda: _decode_other(data),
    )
    rgb = _to_rgb(image)
    # Antialiased bilinear: a large photo and its smaller copy give nearly the same input.
    resized = tf.image.resize(rgb, [image_size, image_size], method="bilinear", antialias=True)
    return tf.ensure_shape(resized, [image_size, image_size, 3])


def _decode_jpeg(data: tf.Tensor) -> tf.Tensor:
    # INTEGER_ACCURATE matches Pillow/libjpeg's default output; channels=3 also converts
    # grayscale and CMYK JPEGs to RGB.
    image = tf.io.decode_jpeg(data, channels=3, dct_method="INTEGER_ACCURATE")
    return tf.image.convert_image_dtype(image, tf.float32)


def _decode_png(data: tf.Tensor) -> tf.Tensor:
    # uint16 keeps 16-bit PNGs' precision; 8-bit PNGs are scaled by 257, so x/65535 == x8/255.
    image = tf.io.decode_png(data, channels=0, dtype=tf.uint16)
    return tf.image.convert_image_dtype(image, tf.float32)


def _decode_other(data: tf.Tensor) -> tf.Tensor:
    # GIF, BMP, WebP (uint8 only); the first frame of an animation. Anything else fails here
    # with "Unknown image file format".
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


def _is_animated_webp(head: tf.Tensor) -> tf.Tensor:
    # A VP8X chunk with the animation flag (bit 1 of the byte after the chunk size).
    flags = tf.cast(tf.io.decode_raw(tf.strings.substr(head, 20, 1), tf.uint8)[0], tf.int32)
    return tf.logical_and(
        tf.equal(tf.strings.substr(head, 8, 8), b"WEBPVP8X"),
        tf.not_equal(tf.bitwise.bitwise_and(flags, 2), 0),
    )


def _refuse_animated_webp() -> tf.Tensor:
    # TensorFlow 2.21's animated-WebP decoder corrupts the heap and kills the process, so an
    # animated WebP must never reach it.
    with tf.control_dependencies([tf.debugging.Assert(False, ["animated WebP is not supported"])]):
        return tf.zeros([1, 1, 3], tf.float32)


def image_batches(paths: Sequence[str], image_size: int, batch_size: int) -> tf.data.Dataset:
    """Batches of (index, image, ok) in input order, read and decoded in parallel.

    Each file is decoded in a one-element dataset whose errors are dropped, followed by a
    placeholder flagged ok=False; taking the first element gives the image, or the placeholder
    when decoding failed. The parallel interleave keeps input order (deterministic=True).
    """
    encoded = [os.fsencode(path) for path in paths]
    blank = tf.zeros([image_size, image_size, 3], tf.float32)

    def one(index: tf.Tensor, path: tf.Tensor) -> tf.data.Dataset:
        decoded = (
            tf.data.Dataset.from_tensors(path)
            .map(lambda p: (index, decode_image(tf.io.read_file(p), image_size), True))
            .ignore_errors()
        )
        failed = tf.data.Dataset.from_tensors((index, blank, False))
        return decoded.concatenate(failed).take(1)

    dataset = tf.data.Dataset.from_tensor_slices(
        (tf.range(len(encoded), dtype=tf.int64), tf.constant(encoded, dtype=tf.string))
    )
    return (
        dataset.interleave(
            one,
            cycle_length=max(2, os.cpu_count() or 2),
            block_length=1,
            num_parallel_calls=tf.data.AUTOTUNE,
            deterministic=True,
        )
        .batch(batch_size)
        .prefetch(tf.data.AUTOTUNE)
    )


def failure_reason(path: str, image_size: int) -> str:
    """Why `path` cannot be embedded: the pipeline's decode run again eagerly, its error in words.

    Failures are rare, so re-reading the one file is cheaper than carrying messages through
    tf.data (whose ignore_errors drops them).
    """
    try:
        head = _read_head(path)
    except OSError as error:
        return _os_reason(error)
    if not head:
        return "empty file"
    try:
        decode_image(tf.io.read_file(os.fsencode(path)), image_size)
    except tf.errors.OpError as error:
        return _decode_reason(error.message, head)
    return "could not be read during the run (it decodes now: was it being written?)"


def _read_head(path: str) -> bytes:
    with open(path, "rb") as file:
        return file.read(32)


def _os_reason(error: OSError) -> str:
    if isinstance(error, FileNotFoundError):
        return "file not found (removed, or a broken symlink)"
    if isinstance(error, PermissionError):
        return "permission denied"
    if isinstance(error, IsADirectoryError):
        return "is a folder, not an image file"
    return f"cannot read file: {error.strerror or error}"


def _decode_reason(message: str, head: bytes) -> str:
    kind = sniff_format(head)
    if "animated WebP" in message:
        return "animated WebP is not supported"
    if "Input is empty" in message:
        return "empty file"
    if "Unknown image file format" in message:
        if kind in (None, "text", "HTML/XML/SVG text", "PDF"):
            return f"not an image ({kind or 'unknown'} file)"
        return f"unsupported format: {kind}"
    if kind in ("JPEG", "PNG", "GIF", "BMP", "WebP"):
        return f"truncated or corrupt {kind}"
    return "cannot decode: " + message.split("[Op:")[0].split("}}")[-1].strip()


def sniff_format(head: bytes) -> str | None:
    """The format a file's first bytes announce, for error messages."""
    signatures = [
        (JPEG_MAGIC, "JPEG"),
        (PNG_MAGIC, "PNG"),
        (b"GIF8", "GIF"),
        (b"BM", "BMP"),
        (b"II*\0", "TIFF"),
        (b"MM\0*", "TIFF"),
        (b"%PDF", "PDF"),
        (b"\xff\x0a", "JPEG XL"),
        (b"\0\0\0\x0cJXL ", "JPEG XL"),
        (b"8BPS", "PSD"),
    ]
    for magic, name in signatures:
        if head.startswith(magic):
            return name
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WebP"
    if head[4:8] == b"ftyp":
        brand = head[8:12]
        if brand in (b"avif", b"avis"):
            return "AVIF"
        if brand in (b"heic", b"heix", b"mif1", b"msf1", b"hevc"):
            return "HEIC"
        return "video or ISO media"
    stripped = head.lstrip().lower()
    if stripped.startswith((b"<!doctype html", b"<html", b"<?xml", b"<svg")):
        return "HTML/XML/SVG text"
    if head and all(32 <= byte < 127 or byte in (9, 10, 13) for byte in head):
        return "text"
    return None
