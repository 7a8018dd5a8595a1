"""What efx records of each input file, to tell later whether it changed: its size and
modification time (cheap, from one `stat`) and the SHA-256 of its bytes (exact). Pure Python.

SHA-256 because anyone can check a stored value with `sha256sum FILE` or `hashlib`, and it runs
at ~1.2 GB/s per core here (CPUs with SHA extensions; ~0.4 GB/s without), far below the model's
cost per image (a 3 MB photo: ~3 ms to hash, ~300 ms to embed with B6 on a CPU).
"""

from __future__ import annotations

import hashlib
import os
import stat as stat_
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import NamedTuple

from . import files, remote
from .decode.reasons import HEAD_BYTES  # (what tells a format)

# Files are hashed by this many threads: hashlib releases the GIL, and reads overlap.
HASH_THREADS = max(2, min(8, os.cpu_count() or 2))
# Objects by URL are hashed by more: each waits on the network far longer than it hashes
# (measured, 2,000 objects with 50 ms per request: 2 threads took 100 s to hash them).
URL_HASH_THREADS = 32
_READ_BYTES = 1 << 20


class Facts(NamedTuple):
    """One file as efx saw it. size and mtime_ns are -1, sha256 "", where not known (a file
    that could not be read, or an output written before efx 0.4)."""

    size: int
    mtime_ns: int
    sha256: str


UNKNOWN = Facts(-1, -1, "")


def stat(path: str) -> Facts:
    """Size and modification time (no hash yet); UNKNOWN if the file cannot be stat'ed."""
    return inspect(path)[0]


def inspect(path: str) -> tuple[Facts, str | None]:
    """`stat`, and why the path can never be an image file when it is a named pipe, device or
    socket (None otherwise): such a path is never opened (reading a pipe waits forever).
    An object by URL: its size and modification time as the store lists them (efx.remote;
    S3's LastModified, as `aws s3 sync` compares)."""
    if remote.is_url(path):
        listed = remote.stat(path)
        return (UNKNOWN if listed is None else Facts(*listed, "")), None
    try:
        found = os.stat(path)
    except OSError:
        return UNKNOWN, None  # missing or unreadable: the decoder's reason says which
    if stat_.S_ISREG(found.st_mode) or stat_.S_ISDIR(found.st_mode):
        return Facts(found.st_size, found.st_mtime_ns, ""), None
    return UNKNOWN, f"not an image file: a {files.file_kind(found.st_mode)}"


def same_file(stored: Facts, now: Facts) -> bool:
    """The fast path: the same size and modification time as when the row was computed (what
    rsync and make trust). Never true for unknown facts (an object whose server gives no
    date: its bytes are compared)."""
    known = stored.size >= 0 and stored.mtime_ns >= 0 and stored.sha256 != ""
    return known and stored[:2] == now[:2]


def sha256(path: str, stop: threading.Event | None = None) -> str:
    """The SHA-256 of the file's bytes, as hex; "" if it cannot be read (or `stop` is set
    before it is read to the end: a Ctrl-C does not wait for a large file)."""
    return _hashed(path, stop)[0]


def _hashed(path: str, stop: threading.Event | None = None) -> tuple[str, bytes | None]:
    """(`sha256`, the file's first HEAD_BYTES: None where it could not be read)."""
    if remote.is_url(path):  # one GET (retried), not an open's HEAD and ranged reads
        try:
            data = remote.read_object(path)
        except OSError:
            return "", None
        return hashlib.sha256(data).hexdigest(), data[:HEAD_BYTES]
    digest = hashlib.sha256()
    head = None
    try:
        with files.open_input(path) as file:
            while chunk := file.read(_READ_BYTES):
                head = chunk[:HEAD_BYTES] if head is None else head
                digest.update(chunk)
                if stop is not None and stop.is_set():
                    return "", None
    except OSError:
        return "", None
    return digest.hexdigest(), b"" if head is None else head


def hash_files(
    paths: Sequence[str],
    on_done: Callable[[int], None] | None = None,
    heads: list[bytes | None] | None = None,
) -> list[Facts]:
    """The facts of each file, hash included, in order: stat before hashing, so that a file
    written meanwhile is seen as changed by the next run rather than trusted. `heads`, when
    given, receives each file's first HEAD_BYTES (None for one that could not be read): what
    tells a file that is no image without reading it again."""

    stop = threading.Event()

    def one(path: str) -> tuple[Facts, bytes | None]:
        facts = stat(path)
        digest, head = _hashed(path, stop)
        if not digest or facts.size < 0:
            return UNKNOWN, None
        return facts._replace(sha256=digest), head

    found = []
    pool = ThreadPoolExecutor(URL_HASH_THREADS if any(map(remote.is_url, paths)) else HASH_THREADS)
    try:
        for facts, head in pool.map(one, paths):  # in order; progress told from this thread
            found.append(facts)
            if heads is not None:
                heads.append(head)
            if on_done is not None:
                on_done(1)
    finally:
        # On Ctrl-C, the files not yet started are dropped and the ones being read stop at
        # their next MiB; a normal end has nothing left to wait for.
        stop.set()
        pool.shutdown(wait=False, cancel_futures=True)
    return found
