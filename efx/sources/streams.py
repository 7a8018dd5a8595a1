"""Shard files as byte streams: plain or gzip-compressed (told by content), read forwards."""

from __future__ import annotations

import contextlib
import gzip
import threading
import zlib
from collections.abc import Callable, Iterator
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


def is_zlib(head: bytes) -> bool:
    """A zlib stream's two header bytes (RFC 1950: deflate, and a check value that makes the
    pair a multiple of 31): what TensorFlow's ZLIB TFRecord writer starts a file with."""
    return (
        len(head) >= 2
        and head[0] & 0x0F == 8
        and head[0] >> 4 <= 7
        and ((head[0] << 8 | head[1]) % 31 == 0)
    )


@contextlib.contextmanager
def open_stream(path: str, plain: Callable[[bytes], bool] | None = None) -> Iterator[BinaryIO]:
    """`path` for reading, decompressed if it is gzip (whatever its name), or zlib where the
    caller's format may be (`plain`: a test of the format's own first bytes, which decides a
    file that is both); OSError if it cannot be opened (never blocks on a pipe:
    efx.files.open_input)."""
    with open_input(path) as raw:
        head = raw.read(16)
        raw.seek(0)
        if head.startswith(GZIP_MAGIC):
            with gzip.GzipFile(fileobj=raw, mode="rb") as stream:
                yield stream  # type: ignore[misc]
        elif plain is not None and is_zlib(head) and not plain(head):
            yield ZlibStream(raw)  # type: ignore[misc]
        else:
            yield raw


class ZlibStream:
    """A zlib-compressed file read as its decompressed bytes, forwards (a seek backwards starts
    again from the top), a MiB of input at a time: what `gzip.GzipFile` is for gzip."""

    def __init__(self, raw: BinaryIO) -> None:
        self._raw = raw
        self._start()

    def _start(self) -> None:
        self._raw.seek(0)
        self._inflate = zlib.decompressobj()
        self._buffer = b""  # inflated bytes not yet handed out start at self._next
        self._next = 0
        self._at = 0  # decompressed bytes handed out

    def read(self, size: int = -1) -> bytes:
        # Small reads (a record's 12-byte header) take a slice; the buffer is copied only
        # when it is refilled.
        while size < 0 or len(self._buffer) - self._next < size:
            chunk = self._raw.read(1 << 20)
            more = self._inflate.decompress(chunk) if chunk else self._inflate.flush()
            self._buffer, self._next = self._buffer[self._next :] + more, 0
            if not chunk:
                break
        end = len(self._buffer) if size < 0 else min(len(self._buffer), self._next + size)
        data = self._buffer[self._next : end]
        self._next = end
        self._at += len(data)
        return data

    def tell(self) -> int:
        return self._at

    def seek(self, offset: int, whence: int = 0) -> int:
        if whence != 0:
            raise OSError("a zlib stream seeks to absolute offsets only")
        if offset < self._at:
            self._start()
        while self._at < offset and self.read(min(offset - self._at, 1 << 20)):
            pass
        return self._at


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


class Ambiguous(EfxError):
    """A shard in which efx cannot tell which column or feature holds the images (several
    do): refused when named (the message says which option chooses), a failure under the
    file's name when a folder walk found it (the walk's other files go on)."""

    @property
    def reason(self) -> str:
        """The failure's reason: the message without the file's name in front."""
        return str(self).split(": ", 1)[-1]
