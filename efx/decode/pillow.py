"""Formats TensorFlow decodes wrong or not at all, decoded by Pillow (no TensorFlow here;
`image.py` calls `first_frame_rgb` inside the graph through `tf.numpy_function`):

- GIF: TensorFlow's decoder (giflib's DGifSlurp) decodes every frame of an animation to keep
  the first, sizes the picture by the first frame instead of the logical screen (a frame placed
  at an offset loses the rest of the picture), paints transparent pixels black where Pillow's
  `convert("RGB")` gives the palette colour, and allocates whatever a frame descriptor claims
  (a "1x1" GIF with a 20000x20000 frame: 7 GB, 42 s);
- animated WebP: TensorFlow 2.21's animated-WebP decoder corrupts the heap and kills the
  process; libwebp's animation decoder (through Pillow) composes the first frame on its canvas;
- BMP with RLE4 or RLE8 compression (Paint and ImageMagick write them): TensorFlow refuses them.

Pillow decodes only the first frame, and releases the GIL while it decodes. Every dimension it
will allocate is checked against the pixel limit before a byte is decoded.
"""

from __future__ import annotations

import io
import struct

import numpy as np


def first_frame_rgb(data: bytes, max_pixels: int) -> np.ndarray:
    """Encoded GIF / animated WebP / RLE BMP bytes -> uint8 RGB [height, width, 3]: the first
    frame on its canvas, as Pillow's `Image.open(...).convert("RGB")` gives it.

    Raises ValueError("image too large: WxH pixels exceeds --max-pixels N") before decoding,
    and Pillow's own errors (OSError, SyntaxError) for a file it cannot decode.
    """
    from PIL import Image

    width, height = gif_canvas(data) if data[:4] == b"GIF8" else (0, 0)
    check_pixels(width, height, max_pixels)  # before Pillow opens it: it would enlarge to this
    with Image.open(io.BytesIO(data)) as image:
        check_pixels(*image.size, max_pixels)
        return np.asarray(image.convert("RGB"))


def check_pixels(width: int, height: int, max_pixels: int) -> None:
    if width * height > max_pixels:
        raise ValueError(
            f"image too large: {width}x{height} pixels exceeds --max-pixels {max_pixels}"
        )


def gif_canvas(data: bytes) -> tuple[int, int]:
    """The size Pillow gives a GIF's first frame: its logical screen, enlarged to hold the first
    frame's descriptor (x + width, y + height) when that reaches further (GIF89a, section 20)."""
    if len(data) < 13:
        return 0, 0
    width, height = struct.unpack_from("<HH", data, 6)
    flags = data[10]
    at = 13 + (3 << ((flags & 7) + 1) if flags & 0x80 else 0)  # after the global colour table
    while at < len(data) and data[at] == 0x21:  # extension blocks: label, then sub-blocks
        at += 2
        while at < len(data) and data[at]:
            at += data[at] + 1
        at += 1
    if at + 9 <= len(data) and data[at] == 0x2C:  # the first image descriptor
        left, top, frame_width, frame_height = struct.unpack_from("<HHHH", data, at + 1)
        width, height = max(width, left + frame_width), max(height, top + frame_height)
    return width, height
