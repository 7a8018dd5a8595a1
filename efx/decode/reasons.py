"""Why a file cannot be embedded, in words a person understands: TensorFlow's raw messages
translated, and a file's format told from its first bytes. Pure Python: no TensorFlow."""

from __future__ import annotations

import re
import struct

from ..files import NotRegularFile, open_input

JPEG_MAGIC = b"\xff\xd8\xff"  # the file signatures decode_image tells formats by
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


HEAD_BYTES = 64  # enough for every header field a reason reads (BMP compression: bytes 30-33)
IMAGE_FORMATS = ("JPEG", "PNG", "GIF", "BMP", "WebP")  # what efx decodes (sniff_format's names)
# What sniff_format calls a file that is no image at all (others are images efx cannot decode).
NOT_IMAGES = (None, "text", "HTML/XML/SVG text", "PDF", "zero-filled")

# BMP compression field values TensorFlow and Pillow do not decode (BITMAPINFOHEADER).
_BMP_COMPRESSIONS = {4: "JPEG", 5: "PNG", 11: "CMYK", 12: "CMYK RLE8", 13: "CMYK RLE4"}


def read_head(path: str) -> bytes:
    """The first bytes of `path`; OSError (NotRegularFile for a pipe, device or socket, which is
    never read) if it cannot be read."""
    with open_input(path) as file:
        return file.read(HEAD_BYTES)


def os_reason(error: OSError) -> str:
    from ..remote import RemoteError

    if isinstance(error, RemoteError):
        return str(error)
    if isinstance(error, NotRegularFile):
        if error.kind == "folder":
            return "is a folder, not an image file"
        return f"not an image file: a {error.kind}"
    if isinstance(error, FileNotFoundError):
        return "file not found (removed, or a broken symlink)"
    if isinstance(error, PermissionError):
        return "permission denied"
    if isinstance(error, IsADirectoryError):
        return "is a folder, not an image file"
    return f"cannot read file: {error.strerror or error}"


def decode_reason(message: str, head: bytes) -> str:
    kind = sniff_format(head)
    too_large = re.search(r"image too large: [\w -]*", message)
    if too_large:
        return too_large.group(0)
    if "Input is empty" in message:
        return "empty file"
    if "Unknown image file format" in message:
        if kind in NOT_IMAGES:
            return f"not an image ({kind or 'unknown'} file)"
        return f"unsupported format: {kind}"
    if kind == "BMP" and len(head) >= 34:
        compression = struct.unpack_from("<I", head, 30)[0]
        if compression in _BMP_COMPRESSIONS:
            return f"unsupported BMP compression ({_BMP_COMPRESSIONS[compression]})"
    if kind in ("JPEG", "PNG", "GIF", "BMP", "WebP"):
        return f"truncated or corrupt {kind}"
    return "cannot decode: " + message.split("[Op:")[0].split("}}")[-1].strip()


def head_reason(head: bytes) -> str | None:
    """Why a file whose first bytes are `head` (HEAD_BYTES of them, or all it has) can never be
    embedded, told before it is read whole: empty, not an image, or a format efx does not
    decode; None when it starts like an image (the decoder then says the rest)."""
    if not head:
        return "empty file"
    if sniff_format(head) in IMAGE_FORMATS:
        return None
    return decode_reason("Unknown image file format", head)


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
    if head and head.count(0) == len(head):  # a file allocated but never written
        return "zero-filled"
    return None
