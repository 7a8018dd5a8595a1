"""Shard files as byte streams: plain or gzip-compressed (told by content), read forwards."""

from __future__ import annotations

import contextlib
import gzip
import threading
from collections.abc import Iterator
from typing import BinaryIO

from ..errors import EfxError
from ..files import open_input

GZIP_MAGIC = b"\x1f\x8b"

# Set on Ctrl-C while shards are being listed: each listing stops at its next image.
STOP = threading.Event()


class Stopped(BaseException):
    """A listing given up (Ctrl-C): not damage, so no reader's error handling catches it."""


def first_line(error: BaseException) -> str:
    """An exception's message, its first line only (pyarrow's run on for a page)."""
    return (str(error).strip() or type(error).__name__).splitlines()[0]


def check_stop() -> None:
    if STOP.is_set():
        raise Stopped


@contextlib.contextmanager
def open_stream(path: str) -> Iterator[BinaryIO]:
    """`path` for reading, decompressed if it is gzip (whatever its name); OSError if it cannot
    be opened (never blocks on a pipe: efx.files.open_input)."""
    with open_input(path) as raw:
        compressed = raw.read(2) == GZIP_MAGIC
        raw.seek(0)
        if not compressed:
            yield raw
            return
        with gzip.GzipFile(fileobj=raw, mode="rb") as stream:
            yield stream  # type: ignore[misc]


def read_exactly(stream: BinaryIO, at: int, size: int) -> bytes:
    """`size` bytes from offset `at`; EOFError if the stream ends first (a shard cut short
    since it was listed). Forward seeks only in a compressed stream (backward ones restart)."""
    stream.seek(at)
    data = stream.read(size)
    if len(data) != size:
        raise EOFError(f"the shard ends {size - len(data)} bytes short of this member's end")
    return data


class NotImages(EfxError):
    """A shard-like file that holds no images (img2dataset's metadata Parquet files, a TFRecord
    file of other data): refused when named, skipped with `note` when a folder walk found it."""

    def __init__(self, message: str, note: str) -> None:
        super().__init__(message)
        self.note = note
