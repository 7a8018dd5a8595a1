"""Writing files so that a kill (or, with `sync`, a power loss) leaves either the old version or
the new one whole: written beside the target, then renamed over it. One helper for every stage.
And reading input files without ever blocking on one that is not a file (`open_input`).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
import tempfile
from collections.abc import Iterator
from typing import Any, BinaryIO

from . import remote


def write_atomically(path: str, data: bytes, sync: bool = True) -> None:
    """Replace `path` with `data`. With `sync`, the bytes and the rename reach the disk."""
    scratch = path + ".partial"
    with open(scratch, "wb") as file:
        file.write(data)
        file.flush()
        if sync:
            os.fsync(file.fileno())
    replace(scratch, path, sync)


def replace(source: str, target: str, sync: bool = True) -> None:
    """Rename `source` over `target` (files or folders); with `sync`, fsync the folder that
    holds them, without which the rename itself may not survive a power loss."""
    os.replace(source, target)
    if sync:
        fsync_folder(os.path.dirname(os.path.abspath(target)))


def fsync_folder(folder: str) -> None:
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


@contextlib.contextmanager
def scratch_folder(parent: str, prefix: str) -> Iterator[str]:
    """A new folder in `parent` to build something in before renaming it into place; removed
    if anything goes wrong (or if it was not renamed away)."""
    os.makedirs(parent, exist_ok=True)
    scratch = tempfile.mkdtemp(prefix=prefix, dir=parent)
    try:
        yield scratch
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def swap_in(new: str, output: str) -> None:
    """Put `new` (a file or folder) at `output`, replacing what is there, so that at every
    instant `output` is either the old one or the new one, whole; then remove the old one.

    A file is renamed over. A folder cannot be (rename(2) refuses a non-empty target), so the
    two are exchanged in one step with Linux's renameat2(RENAME_EXCHANGE); where that is missing
    (another OS, a filesystem without it) the old folder is first renamed aside, and for that
    moment OUTPUT is absent (a rerun of --update finds both and uses them).
    """
    if not os.path.isdir(new) or not os.path.isdir(output):
        replace(new, output)
        return
    aside = new + ".old"  # the old one, renamed so that nothing takes it for a leftover
    if _exchange(new, output):
        os.replace(new, aside)
        fsync_folder(os.path.dirname(os.path.abspath(output)))
    else:
        os.replace(output, aside)
        replace(new, output)
    shutil.rmtree(aside)


def _exchange(first: str, second: str) -> bool:
    """Swap two paths atomically (Linux renameat2 RENAME_EXCHANGE); False where unsupported."""
    import ctypes
    import errno

    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(first), at_fdcwd, os.fsencode(second), rename_exchange) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.EXDEV):
        return False
    raise OSError(code, os.strerror(code), second)


@contextlib.contextmanager
def held_exclusively(path: str, busy: str) -> Iterator[None]:
    """Hold an exclusive lock on the file `path` (created if needed, removed after) for the
    block, or raise EfxError(`busy`) if another process holds it. After locking, the path is
    checked to still name the locked file: a holder that finished may have just removed it."""
    import fcntl

    from .errors import EfxError

    while True:
        descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(descriptor)
            raise EfxError(busy) from None
        try:
            current = os.stat(path)
        except FileNotFoundError:
            current = None
        if current is not None and current.st_ino == os.fstat(descriptor).st_ino:
            break
        os.close(descriptor)  # removed (and maybe made anew) meanwhile: lock the new one
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            os.remove(path)
        os.close(descriptor)


def open_input(path: str) -> BinaryIO:
    """`path` opened for reading if it is a regular file (after symlinks); OSError otherwise,
    without blocking: a named pipe, device or socket called `x.jpg` is never read. A URL
    (s3://, gs://, https://) is opened through efx.remote: seekable, read in ranges."""
    if remote.is_url(path):
        return remote.open_file(path)
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise NotRegularFile(path, mode)
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


class NotRegularFile(OSError):
    """A path that is a named pipe, device, socket or folder: not an image file."""

    def __init__(self, path: str, mode: int) -> None:
        super().__init__(f"not a regular file ({file_kind(mode)})")
        self.path = path
        self.kind = file_kind(mode)


def file_kind(mode: int) -> str:
    kinds = [
        (stat.S_ISFIFO, "named pipe"),
        (stat.S_ISSOCK, "socket"),
        (stat.S_ISCHR, "character device"),
        (stat.S_ISBLK, "block device"),
        (stat.S_ISDIR, "folder"),
    ]
    return next((name for test, name in kinds if test(mode)), "special file")


def digest_tree(digest: Any, folder: str) -> None:
    """Feed `digest` (a hashlib object) each file's path below `folder`, size and modification
    time, in a fixed order: what says that a model folder (or efx itself) changed, without
    reading it. Python's compiled modules are left out: Python writes them as it first imports
    each module, so that a process started later would see another tree (an `efx serve`
    started before them, another efx)."""
    for root, dirs, names in os.walk(folder):
        dirs[:] = sorted(name for name in dirs if name != "__pycache__")
        for name in sorted(names):
            if name.endswith((".pyc", ".pyo")):
                continue
            path = os.path.join(root, name)
            stat = os.stat(path)
            digest.update(
                f"{os.path.relpath(path, folder)}|{stat.st_size}|{stat.st_mtime_ns}".encode()
            )
