"""The EXIF orientation tag of JPEGs, applied in the graph: TensorFlow's decoders ignore it
(tensorflow/tensorflow#8430), so a phone photo stored sideways would be embedded sideways."""

from __future__ import annotations

import tensorflow as tf

from .binary import bytes_at

# APP1 segments are at most 64 KiB and come before the image data: the EXIF block is in here.
_EXIF_SEARCH = 65536
_ORIENTATION_TAG = 0x0112


def exif_orientation(data: tf.Tensor) -> tf.Tensor:
    """The EXIF orientation tag (1-8) of a JPEG, or 1 when there is none or it is unreadable.

    Read from the bytes already in memory with a few vectorised ops: no second decode and no
    Python in the pipeline (TensorFlow's decoders ignore the tag, tensorflow/tensorflow#8430).
    """
    raw = bytes_at(data, 0, _EXIF_SEARCH + 16)
    # An APP1 marker (FF E1), two length bytes, then "Exif\0\0".
    marker = b"\xff\xe1\0\0Exif\0\0"
    hit = tf.ones([_EXIF_SEARCH], tf.bool)
    for i, byte in enumerate(marker):
        if i not in (2, 3):
            hit = tf.logical_and(hit, tf.equal(raw[i : i + _EXIF_SEARCH], byte))
    found = tf.where(hit)

    def parse() -> tf.Tensor:
        tiff = found[0, 0] + 10  # the TIFF header: byte order, then the offset of IFD0
        little = tf.equal(raw[tiff], ord("I"))

        def read(offsets: tf.Tensor, length: int) -> tf.Tensor:
            at = tiff + offsets[..., None] + tf.range(length, dtype=tf.int64)
            values = tf.gather(raw, tf.clip_by_value(at, 0, _EXIF_SEARCH + 15))
            weights = tf.constant([256**i for i in range(length)], tf.int64)
            return tf.reduce_sum(values * tf.where(little, weights, weights[::-1]), axis=-1)

        ifd = read(tf.constant(4, tf.int64), 4)
        count = tf.minimum(read(ifd, 2), 64)
        entries = ifd + 2 + 12 * tf.range(count, dtype=tf.int64)  # 12-byte tag entries
        match = tf.where(tf.equal(read(entries, 2), _ORIENTATION_TAG))
        value = tf.cond(
            tf.size(match) > 0,
            lambda: read(entries[match[0, 0]] + 8, 2),
            lambda: tf.constant(1, tf.int64),
        )
        return tf.where((value >= 1) & (value <= 8), value, 1)

    return tf.cond(tf.size(found) > 0, parse, lambda: tf.constant(1, tf.int64))


def orient(image: tf.Tensor, orientation: tf.Tensor) -> tf.Tensor:
    """Turn a decoded image the way its EXIF orientation says (as Pillow's exif_transpose)."""
    swapped = lambda: tf.transpose(image, [1, 0, 2])  # noqa: E731
    branches = [
        lambda: image,  # 1: upright
        lambda: tf.reverse(image, [1]),  # 2: mirrored
        lambda: tf.reverse(image, [0, 1]),  # 3: upside down
        lambda: tf.reverse(image, [0]),  # 4: flipped
        swapped,  # 5: transposed
        lambda: tf.reverse(swapped(), [1]),  # 6: stored 90 degrees counter-clockwise
        lambda: tf.reverse(swapped(), [0, 1]),  # 7: transversed
        lambda: tf.reverse(swapped(), [0]),  # 8: stored 90 degrees clockwise
    ]
    return tf.switch_case(tf.cast(orientation - 1, tf.int32), branches)
