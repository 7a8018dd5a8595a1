"""One notion of an input, shared by every source reader, the planner (efx.reuse), the engines
and the writers: its key (the row's name), where its bytes are (a file of its own, or a member
of a shard), and what is known of it before it is read. No TensorFlow, no I/O.

A reader of a new kind of source yields `Input`s; nothing downstream knows what kind it was.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from .facts import Facts
from .remote import is_url


class Member(NamedTuple):
    """Where an input's bytes are inside a shard file (`Input.path`).

    tar: `at` is the member's first header byte (in the uncompressed stream: tarfile reads it
    from there), `size` its bytes as extracted;
    tfrecord: `at` is the record's first payload byte, `size` the payload's bytes, `field` the
    `tf.train.Example` feature holding the image; parquet: `at` is the row group, `size` the
    row within it, `field` the image column (`image.bytes` for a struct column, `images[]` or
    `images[].bytes` for a list of them). `item` is the image's place in its record's feature
    or its cell's list, where one holds several.
    """

    kind: str  # "tar", "tfrecord" or "parquet"
    at: int
    size: int
    field: str = ""
    item: int = 0  # the image's place in its record's or cell's list (several per record)


class Input(NamedTuple):
    """One row of the output to be: an image file, or one image in a shard.

    `key` is the row's name, stored where paths are stored: the path of an image file, or
    `SHARD/NAME` for an image in a shard (see efx.sources for NAME). `facts` are what --update
    compares (efx.facts), when already known: for a member, the shard's size and modification
    time with the SHA-256 of the member's own bytes. `reason` says why it can never be embedded
    when that is known before decoding (a WebDataset sample without an image, a null cell, a
    truncated shard). `kept` is the stored row (source, is a failure, index) it keeps when its
    shard is unchanged since an earlier output: such an input is never read. `columns` are the
    sample's values of the source columns asked for with --keep-columns (Parquet output).
    """

    key: str
    path: str  # the file holding its bytes: the image itself, or the shard
    member: Member | None = None
    facts: Facts | None = None
    reason: str | None = None
    kept: tuple[int, bool, int] | None = None
    columns: dict[str, Any] | None = None


def loose(path: str) -> Input:
    """An image file of its own: its path is its key."""
    return Input(path, path)


def fetched(inp: Input) -> bool:
    """Whether efx reads the input's bytes itself (a shard's member, an object by URL: see
    efx.sources.read_ahead) rather than the decoders reading a file."""
    return inp.member is not None or is_url(inp.path)
