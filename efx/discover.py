"""Sources (folders, files, `-` for stdin) to the ordered list of files: images, and shards
of images (efx.sources reads those). No TensorFlow."""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Iterator
from typing import BinaryIO

from . import remote
from .errors import EfxError

# Extensions walked in folders (compared case-insensitively). Files named explicitly, on the
# command line or on stdin, are taken whatever their extension: the decoder goes by content.
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".jpe", ".png", ".gif", ".bmp", ".webp"})

# Shards a folder walk takes (efx.sources tells their kind by content); TFDS names its files
# `NAME-SPLIT.tfrecord-00000-of-00016`.
SHARD_NAME = re.compile(
    r"\.(tar|tgz|tar\.gz|parquet|tfrecords?(\.gz)?|tfrecords?-\d+-of-\d+)$", re.I
)

STDIN = "-"


def check_sources(sources: Iterable[str]) -> None:
    """Fail early, before any work, on a source that does not exist."""
    sources = list(sources)
    if not sources:
        raise EfxError("no SOURCE given: name image folders, image files, or - for stdin")
    if sources.count(STDIN) > 1:
        raise EfxError("- (stdin) can be given only once as a SOURCE")
    for source in sources:
        if remote.is_url(source):
            remote.check_source(source)  # a missing bucket or bad credentials: before any work
        elif source != STDIN and not os.path.exists(source):
            kind = "broken symlink" if os.path.islink(source) else "no such file or folder"
            raise EfxError(f"source not found: {source} ({kind})")


def find_files(
    sources: Iterable[str], stdin: BinaryIO | None = None, null: bool = False
) -> list[tuple[str, bool]]:
    """Every file of `sources` as (path, found by walking a folder), in the order rows will be
    written: images, and shards of images.

    Sources keep the order given; a folder contributes its images and shards sorted by relative
    path; `-` contributes the paths read from `stdin` in the order read (one per line, or
    NUL-separated). A URL is an object, or a prefix walked as a folder is (s3://, gs://; plain
    HTTP cannot be listed: an https:// URL is one file).
    """
    found: list[tuple[str, bool]] = []
    remote.forget_listings()
    for source in sources:
        if source == STDIN:
            if stdin is None:
                raise EfxError("- (stdin) given as a SOURCE but no input stream is available")
            listed = read_path_list(stdin, null=null)  # a URL's spaces around it are not its own
            found.extend((p.strip() if remote.is_url(p.strip()) else p, False) for p in listed)
        elif remote.is_url(source):
            if remote.is_prefix(source):
                found.extend((url, True) for url in remote.walk(source, walked))
            else:
                found.append((source, False))
        elif os.path.isdir(source):
            found.extend((os.path.join(source, rel), True) for rel in walk_images(source))
        else:
            found.append((source, False))
    return found


def find_images(
    sources: Iterable[str], stdin: BinaryIO | None = None, null: bool = False
) -> list[str]:
    """The paths of `find_files` (images and shards)."""
    return [path for path, _ in find_files(sources, stdin, null)]


def read_path_list(stream: BinaryIO, null: bool = False) -> list[str]:
    """Paths from a newline- (or NUL-) separated byte stream; blank entries are skipped."""
    data = stream.read()
    separator = b"\0" if null else b"\n"
    paths = []
    for number, raw in enumerate(data.split(separator), 1):
        if not null:
            raw = raw.rstrip(b"\r")
        if b"\0" in raw:  # no path holds one: NUL-separated paths, or not paths at all
            raise EfxError(
                f"stdin line {number} holds a NUL byte: SOURCE - reads paths, one per line "
                "(with -0: separated by NUL bytes, as find -print0 writes them), not image bytes"
            )
        if raw.strip():
            paths.append(os.fsdecode(raw))
    return paths


def walk_images(root: str) -> list[str]:
    """Image and shard files below `root` as sorted relative paths, following symlinks but not
    loops."""
    found = list(_walk(root, "", set()))
    found.sort()
    return found


def _walk(root: str, rel: str, seen: set[tuple[int, int]]) -> Iterator[str]:
    folder = os.path.join(root, rel) if rel else root
    try:
        stat = os.stat(folder)
        entries = list(os.scandir(folder))
    except OSError:
        return  # unreadable subfolder: nothing we can list in it
    key = (stat.st_dev, stat.st_ino)
    if key in seen:
        return  # a symlink loop back into a folder already on this path
    seen = seen | {key}
    for entry in entries:
        child = os.path.join(rel, entry.name) if rel else entry.name
        try:
            is_dir = entry.is_dir()
        except OSError:
            is_dir = False
        if is_dir:
            yield from _walk(root, child, seen)
        elif walked(entry.name):
            yield child


def walked(name: str) -> bool:
    """Whether a folder walk takes a file of this name: an image or a shard."""
    return os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS or bool(SHARD_NAME.search(name))
