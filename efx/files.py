"""Writing files so that a kill (or, with `sync`, a power loss) leaves either the old version or
the new one whole: written beside the target, then renamed over it. One helper for every stage.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator


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
