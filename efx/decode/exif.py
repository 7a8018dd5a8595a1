"""The EXIF orientation tag, applied in the graph: TensorFlow's decoders ignore it
(tensorflow/tensorflow#8430), so a phone photo stored sideways would be embedded sideways.

Every format efx decodes that can carry EXIF is read where that format keeps it, as Pillow's
`ImageOps.exif_transpose` reads it: JPEG (the first APP1 "Exif" segment before the image data,
wherever it is: editors put tens of KB of XMP and ICC segments before it), PNG (the `eXIf`
chunk, before or after the image data) and WebP (the `EXIF` chunk). GIF and BMP carry none.
Without an EXIF orientation tag, an XMP packet's `tiff:Orientation` is applied, as Pillow's
`getexif()` adds it.
"""

from __future__ import annotations

import tensorflow as tf

from .binary import bytes_at, uint

# IFD0 is read from this many bytes after the TIFF header (an APP1 segment is at most 64 KiB).
_WINDOW = 65536 + 16
_ORIENTATION_TAG = 0x0112
_TIFF_MAGICS = (b"II*\0", b"MM\0*")
# Segments before a JPEG's image data (APPn, DQT, DHT, SOF, COM ...): cameras write about ten,
# an ICC profile split in chunks a few dozen.
_MAX_JPEG_SEGMENTS = 4096
_NOT_FOUND = tf.constant(-1, tf.int64)


def exif_orientation(data: tf.Tensor, head: tf.Tensor) -> tf.Tensor:
    """The EXIF orientation tag (1-8) of a JPEG, PNG or WebP, or 1 when there is none or it is
    unreadable. Read from the bytes already in memory: no second decode."""
    jpeg = tf.equal(tf.strings.substr(head, 0, 3), b"\xff\xd8\xff")
    png = tf.equal(tf.strings.substr(head, 0, 4), b"\x89PNG")
    webp = tf.equal(tf.strings.substr(head, 0, 4), b"RIFF")
    webp &= tf.equal(tf.strings.substr(head, 8, 4), b"WEBP")
    tiff = tf.case(
        [
            (jpeg, lambda: _jpeg_tiff(data)),
            (png, lambda: _chunk_tiff(data, b"eXIf", 0)),
            (webp, lambda: _chunk_tiff(data, b"EXIF", 4)),
        ],
        default=lambda: _NOT_FOUND,
    )
    untagged = tf.constant(0, tf.int64)
    found = tf.cond(
        tiff >= 0, lambda: _orientation(bytes_at(data, tiff, _WINDOW)), lambda: untagged
    )
    # No EXIF orientation tag: XMP's, as Pillow's getexif() then reads it (editors and phones
    # that write XMP only: `tiff:Orientation="6"`).
    upright = tf.constant(1, tf.int64)
    xmp = lambda: tf.cond(jpeg | png | webp, lambda: _xmp_orientation(data), lambda: upright)  # noqa: E731
    return tf.cond(found > 0, lambda: found, xmp)


def _jpeg_tiff(data: tf.Tensor) -> tf.Tensor:
    """Offset of the TIFF header of a JPEG's first APP1 "Exif" segment, or -1: the segments are
    walked from the start of the file to the image data (SOS), as Pillow and libexif do."""
    size = tf.cast(tf.strings.length(data), tf.int64)

    def more(position: tf.Tensor, found: tf.Tensor) -> tf.Tensor:
        marker = uint(data, position + 1, 1)
        return (
            (found < 0)
            & (position + 4 <= size)
            & tf.equal(uint(data, position, 1), 0xFF)
            & tf.not_equal(marker, 0xDA)  # start of scan: the image data follows
            & tf.not_equal(marker, 0xD9)  # end of image
        )

    def step(position: tf.Tensor, found: tf.Tensor) -> list[tf.Tensor]:
        marker = uint(data, position + 1, 1)
        fill = tf.equal(marker, 0xFF)  # a fill byte before a marker
        bare = tf.equal(marker, 0x01) | ((marker >= 0xD0) & (marker <= 0xD7))  # no length
        length = uint(data, position + 2, 2, little=False)
        exif = tf.equal(marker, 0xE1) & tf.equal(
            tf.strings.substr(data, position + 4, 6), b"Exif\0\0"
        )
        found = tf.where(exif, position + 10, found)
        one, two = tf.constant(1, tf.int64), tf.constant(2, tf.int64)
        advance = tf.where(fill, one, tf.where(bare, two, 2 + tf.maximum(length, 2)))
        return [position + advance, found]

    _, found = tf.while_loop(
        more,
        step,
        [tf.constant(2, tf.int64), _NOT_FOUND],
        maximum_iterations=_MAX_JPEG_SEGMENTS,
    )
    return found


def _chunk_tiff(data: tf.Tensor, chunk_type: bytes, header: int) -> tf.Tensor:
    """Offset of the TIFF header in the first chunk `chunk_type` (PNG `eXIf`, WebP `EXIF`) whose
    payload is EXIF, or -1. The payload starts `header` bytes after the chunk type (PNG: the type
    is followed by the data; WebP: by a 4-byte size); some writers start it with "Exif\\0\\0".

    Found by splitting on the chunk type (one pass in C++, no loop over the chunks of a large
    PNG); a candidate counts only if a TIFF header follows, so the 4 bytes appearing by chance in
    compressed image data are not taken for the chunk."""
    parts = tf.strings.split(data, sep=chunk_type)[:-1]  # the text before each occurrence
    ends = tf.cumsum(tf.cast(tf.strings.length(parts), tf.int64) + len(chunk_type))
    payload = ends + header

    padded = tf.strings.join([data, b"\0" * 16])  # a candidate near the end reads zeros
    size = tf.cast(tf.strings.length(data), tf.int64)

    def magic_at(offsets: tf.Tensor) -> tf.Tensor:
        at = tf.minimum(offsets, size)
        four = tf.strings.substr(padded, at, tf.fill(tf.shape(at), tf.constant(4, tf.int64)))
        return tf.reduce_any(tf.stack([tf.equal(four, m) for m in _TIFF_MAGICS]), axis=0)

    prefixed = payload + 6
    candidates = tf.concat(
        [
            tf.boolean_mask(payload, magic_at(payload)),
            tf.boolean_mask(prefixed, magic_at(prefixed)),
        ],
        axis=0,
    )
    return tf.cond(tf.size(candidates) > 0, lambda: tf.reduce_min(candidates), lambda: _NOT_FOUND)


def _orientation(raw: tf.Tensor) -> tf.Tensor:
    """The orientation tag of IFD0 in `raw` (bytes from the TIFF header on, as int64)."""
    little = tf.equal(raw[0], ord("I"))

    def read(offsets: tf.Tensor, length: int) -> tf.Tensor:
        at = offsets[..., None] + tf.range(length, dtype=tf.int64)
        values = tf.gather(raw, tf.clip_by_value(at, 0, _WINDOW - 1))
        weights = tf.constant([256**i for i in range(length)], tf.int64)
        return tf.reduce_sum(values * tf.where(little, weights, weights[::-1]), axis=-1)

    ifd = read(tf.constant(4, tf.int64), 4)
    count = tf.minimum(read(ifd, 2), 64)
    entries = ifd + 2 + 12 * tf.range(count, dtype=tf.int64)  # 12-byte tag entries
    match = tf.where(tf.equal(read(entries, 2), _ORIENTATION_TAG))
    value = tf.cond(
        tf.size(match) > 0,
        lambda: read(entries[match[0, 0]] + 8, 2),
        lambda: tf.constant(0, tf.int64),  # no tag: XMP may say
    )
    return tf.where((value >= 1) & (value <= 8) | tf.equal(value, 0), value, 1)


_XMP_TAG = b"tiff:Orientation"


def _xmp_orientation(data: tf.Tensor) -> tf.Tensor:
    """The orientation an XMP packet gives (`tiff:Orientation="6"` or `...>6<`), as Pillow
    reads it (`re.search(rb'tiff:Orientation(="|>)([0-9])', xmp)`), or 1. Found by one split
    in C++ over the bytes; the 16-byte name does not occur by chance in image data."""
    parts = tf.strings.split(data, sep=_XMP_TAG, maxsplit=1)

    def read() -> tf.Tensor:
        at = tf.cast(tf.strings.length(parts[0]), tf.int64) + len(_XMP_TAG)
        after = tf.strings.substr(tf.strings.join([data, b"\0\0\0"]), at, 3)
        digit = tf.where(
            tf.equal(tf.strings.substr(after, 0, 2), b'="'),
            tf.strings.substr(after, 2, 1),
            tf.where(
                tf.equal(tf.strings.substr(after, 0, 1), b">"), tf.strings.substr(after, 1, 1), b"0"
            ),
        )
        value = tf.cast(tf.io.decode_raw(digit, tf.uint8)[0], tf.int64) - ord("0")
        return tf.where((value >= 1) & (value <= 8), value, 1)

    return tf.cond(tf.size(parts) > 1, read, lambda: tf.constant(1, tf.int64))


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
