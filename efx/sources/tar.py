"""WebDataset tar shards (`.tar`, `.tar.gz`, `.tgz`): samples as webdataset reads them.

A member's sample key is its name up to the first dot of its base name, its extension the rest
(`a/000123.seg.png` -> key `a/000123`, extension `seg.png`: webdataset's `base_plus_ext`),
compared lower-cased as webdataset does (`.JPG` is `jpg`). A sample is the run of members
sharing a key; its image is the member with the extension asked for (`--image-key`), else the
first of IMAGE_EXTENSIONS it has. The input's key is
`SHARD/MEMBER` (`data/00000.tar/000000123.jpg`). Text, JSON and other members are not read.

Read with the standard library's tarfile, in one forward pass, a member at a time, plain or
gzip-compressed alike (members that are not images are skipped, not read); never unpacked,
never held whole. A member is read again, for the embedding pass, by tarfile from its header
(`Member.at` is the header's offset), so a sparse member (GNU tar --sparse, in any of its three
formats) gives the bytes `tar -x` writes, never the raw bytes stored after its header.

A member name stored twice in one sample (`tar -rf` appending a corrected image right after
the first) is read as tar reads it: the later copy wins, as `tar -x` leaves it and tarfile's
`getmember` returns it (webdataset refuses such a shard). A key stored in two places, apart,
is a failure (see `_sample_input`).
"""

from __future__ import annotations

import hashlib
import re
import tarfile
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import BinaryIO

from ..decode.reasons import HEAD_BYTES, head_reason
from ..errors import EfxError
from ..facts import Facts
from ..inputs import Input, Member
from .streams import check_stop, open_stream

# In this order of preference when a sample has several (case-insensitive).
IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp", "gif", "bmp", "jpe")
KEY_EXT = re.compile(r"^((?:.*/|)[^./]+)[.]([^/]*)$")  # webdataset's base_plus_ext
_DAMAGED = (tarfile.TarError, EOFError, zlib.error, OSError)
KEPT_TEXT_BYTES = 1 << 20  # of a member kept as a column (--keep-columns)


def is_header(head: bytes) -> bool:
    """Whether `head` starts with a block tarfile reads as a member's header (its checksum
    holds), with or without the POSIX `ustar` magic (a v7 tar has none)."""
    try:
        tarfile.TarInfo.frombuf(head[: tarfile.BLOCKSIZE], "utf-8", "surrogateescape")
    except tarfile.HeaderError:
        return False
    return True


def split_name(name: str) -> tuple[str, str] | None:
    """A member name -> (sample key, extension), or None for a name without an extension."""
    found = KEY_EXT.match(name)
    return (found.group(1), found.group(2)) if found else None


@dataclass
class _Sample:
    key: str
    start: int  # the position of its input in the shard's list
    # ext -> (member name, header offset, size, SHA-256, first bytes); stored again: replaced
    images: dict[str, tuple[str, int, int, str, bytes]] = field(default_factory=dict)
    others: list[str] = field(default_factory=list)  # extensions of members that are not images
    columns: dict[str, str] = field(default_factory=dict)  # kept members' text, by extension
    places: int = 1  # > 1: the key came back after other samples (not contiguous)


class _Scan:
    """One pass over a shard: members grouped into samples, in stored order."""

    def __init__(
        self, path: str, shard: Facts, image_key: str | None, keep: Sequence[str] = ()
    ) -> None:
        self.path, self.shard, self.image_key = path, shard, image_key
        # Extensions compared lower-cased, as webdataset does (a camera's .JPG is a jpg);
        # a kept member's column is named as the user spelt it.
        self.keep = {name.lower(): name for name in keep}
        self.found: list[Input] = []
        self.samples: dict[str, _Sample] = {}  # every key seen: one seen again is not contiguous
        self.current: _Sample | None = None
        self.last = ""  # the last member whose header was read
        self.reading = ""  # the member whose bytes are being read
        self.extensions: set[str] = set()  # of every member: to name them in an error
        self.imaged = False  # some sample had an image member

    def add(self, tar: tarfile.TarFile, info: tarfile.TarInfo) -> None:
        check_stop()
        self.last = info.name
        named = split_name(info.name)
        if named is None or not info.isreg():
            return
        key, ext = named
        self.extensions.add(ext.lower())
        if self.current is None or key != self.current.key:
            self.end_sample()
            self.current = self.samples.get(key)
            if self.current is not None:  # back again after other samples
                self.current.places += 1
            else:
                self.current = self.samples[key] = _Sample(key, len(self.found))
                self.found.append(Input(f"{self.path}/{key}", self.path))  # set when it ends
        if not _is_image(ext, self.image_key):
            self.current.others.append(ext)
            if ext.lower() in self.keep:
                self.current.columns[self.keep[ext.lower()]] = _text(tar, info)
            return
        self.imaged = True
        self.reading = info.name
        digest, head = _digest(tar, info)
        self.reading = ""
        self.current.images.pop(ext, None)  # stored again: the later copy, as tar -x keeps
        self.current.images[ext] = (info.name, info.offset, info.size, digest, head)

    def end_sample(self) -> None:
        if self.current is not None:
            sample = self.current
            inp = _sample_input(self.path, self.shard, sample, self.image_key)
            if self.keep and inp.member is not None:
                inp = inp._replace(columns=sample.columns)
            self.found[sample.start] = inp
            sample.images, sample.others, sample.columns = {}, [], {}  # key and place kept
            self.current = None

    def damaged(self, error: BaseException) -> None:
        """A member cut short fails by its name; a damaged header, by the shard's."""
        failure = _damage(self.path, self.shard, error, self.last, self.reading)
        if self.reading and self.current is not None:
            self.found[self.current.start] = failure
            self.current = None
        else:
            self.end_sample()
            self.found.append(failure)

    def inputs(self) -> list[Input]:
        self.end_sample()
        if self.image_key and self.samples and not self.imaged:
            found = ", ".join(sorted(self.extensions)) or "none"
            raise EfxError(
                f"{self.path}: no sample has a .{self.image_key} member (extensions in it: "
                f"{found}). Received: --image-key {self.image_key}"
            )
        for sample in self.samples.values():  # a key that came back: its first input says so
            if sample.places > 1:
                inp = _sample_input(self.path, self.shard, sample, self.image_key)
                self.found[sample.start] = inp
        return self.found


def scan(path: str, shard: Facts, image_key: str | None, keep: Sequence[str] = ()) -> list[Input]:
    """The shard's inputs, one per sample in stored order, each with the SHA-256 of its image
    and the text of its members whose extension is in `keep` (a caption's .txt, a .json).

    Never raises for damage: a corrupt or truncated shard gives the samples before the damage
    and one failure naming what is lost.
    """
    state = _Scan(path, shard, image_key, keep)
    try:
        with open_stream(path) as stream:
            tail = _Tail(stream)
            with tarfile.open(fileobj=tail, mode="r:") as tar:  # type: ignore[call-overload]
                for info in _members(tar):
                    state.add(tar, info)
                tail.check_end(tar.offset)
    except _DAMAGED as error:
        state.damaged(error)
    return state.inputs()


def _members(tar: tarfile.TarFile) -> Iterator[tarfile.TarInfo]:
    """The members one by one, without tarfile's list of every member read so far (a shard of
    a million members would otherwise cost hundreds of MB)."""
    while (info := tar.next()) is not None:
        tar.members.clear()  # type: ignore[attr-defined]
        yield info


def _digest(tar: tarfile.TarFile, info: tarfile.TarInfo) -> tuple[str, bytes]:
    """The member's SHA-256, read a MiB at a time (a member may claim any size), and its first
    bytes (to tell, without reading it again, one that is no image)."""
    file = tar.extractfile(info)
    assert file is not None  # a regular file
    digest = hashlib.sha256()
    left = info.size
    head = b""
    while chunk := file.read(min(left, 1 << 20)):
        check_stop()
        head = head or chunk[:HEAD_BYTES]
        digest.update(chunk)
        left -= len(chunk)
    if left:
        raise tarfile.ReadError("unexpected end of data")
    return digest.hexdigest(), head


def _text(tar: tarfile.TarFile, info: tarfile.TarInfo) -> str:
    """A kept member's bytes as text (UTF-8; undecodable bytes replaced), at most 1 MiB."""
    file = tar.extractfile(info)
    assert file is not None  # a regular file
    return file.read(min(info.size, KEPT_TEXT_BYTES)).decode("utf-8", "replace")


def _is_image(ext: str, image_key: str | None) -> bool:
    return ext.lower() == image_key.lower() if image_key else ext.lower() in IMAGE_EXTENSIONS


def _sample_input(path: str, shard: Facts, sample: _Sample, image_key: str | None) -> Input:
    """The sample's input: its image, or why it has none to embed."""
    key = f"{path}/{sample.key}"
    if sample.places > 1:
        reason = (
            f"sample key {sample.key!r} is stored in {sample.places} places in the tar, not "
            "together: WebDataset reads a sample as one run of members, so its members cannot "
            "be told apart; re-pack the shard with each sample's members together"
        )
        return Input(key, path, facts=shard, reason=reason)
    if not sample.images:
        wanted = f".{image_key}" if image_key else " ".join(f".{e}" for e in IMAGE_EXTENSIONS)
        kinds = ", ".join(f".{ext}" for ext in sample.others) or "none"
        reason = f"sample has no image: no member {wanted} (its members: {kinds})"
        return Input(key, path, facts=shard, reason=reason)
    ext = min(
        sample.images, key=lambda e: IMAGE_EXTENSIONS.index(e.lower()) if not image_key else 0
    )
    name, at, size, digest, head = sample.images[ext]
    facts = shard._replace(sha256=digest)
    if (why := head_reason(head)) is not None:  # never read whole again: a 3 GB file of zeros
        return Input(f"{path}/{name}", path, facts=facts, reason=why)
    return Input(f"{path}/{name}", path, Member("tar", at, size), facts)


def _damage(path: str, shard: Facts, error: BaseException, last: str, reading: str) -> Input:
    """The failure that stands for what a damaged shard lost."""
    what = str(error) or type(error).__name__
    if isinstance(error, OSError) and not isinstance(error, tarfile.TarError):
        what = error.strerror or what
    if reading:
        reason = f"the tar shard ends inside this member ({what}): anything after it is lost"
        return Input(f"{path}/{reading}", path, facts=shard, reason=reason)
    if "empty file" in what:
        return Input(path, path, facts=shard, reason="empty file: not a tar shard")
    where = f"after member {last}" if last else "at its start"
    reason = f"tar shard damaged {where} ({what}): anything stored after that is lost"
    return Input(path, path, facts=shard, reason=reason)


class _Tail:
    """The shard's stream as tarfile reads it, remembering the last block read: tarfile takes a
    shard cut off between two members (or garbage in a header) for its end, where a complete
    tar has a block of zeros (tarfile, GNU tar and webdataset's TarWriter all write two)."""

    def __init__(self, stream: BinaryIO) -> None:
        self._stream = stream
        self._last: tuple[int, bytes] = (-1, b"")

    def read(self, size: int = -1) -> bytes:
        at = self._stream.tell()
        data = self._stream.read(size)
        self._last = (at, data)
        return data

    def seek(self, offset: int, whence: int = 0) -> int:
        return self._stream.seek(offset, whence)

    def tell(self) -> int:
        return self._stream.tell()

    def check_end(self, end: int) -> None:
        at, block = self._last
        if at != end or len(block) != tarfile.BLOCKSIZE or block.count(0) != len(block):
            raise tarfile.ReadError("cut short: no end-of-archive block")


def read(path: str, members: Sequence[Member]) -> Iterator[bytes]:
    """The bytes of `members` (ascending), in order, each read by tarfile from its header as
    `tar -x` would extract it (sparse members filled in); OSError if the shard cannot give
    them, EOFError if a member is no longer where it was listed."""
    with open_stream(path) as stream:
        for member in members:
            yield _member_bytes(stream, member)


def _member_bytes(stream: BinaryIO, member: Member) -> bytes:
    stream.seek(member.at)
    with tarfile.open(fileobj=stream, mode="r:") as tar:  # type: ignore[call-overload]
        info = tar.next()  # the member whose header is at `member.at`
        if info is None or not info.isreg() or info.size != member.size:
            raise EOFError("no such member where it was listed")
        file = tar.extractfile(info)
        assert file is not None  # a regular file
        data: bytes = file.read()
    if len(data) != member.size:
        raise EOFError(f"the shard ends {member.size - len(data)} bytes short of this member's end")
    return data


def find(path: str, name: str) -> Member | None:
    """Where member `name` is in the shard (the last of that name, as `tar -x` keeps it),
    reading headers only."""
    found = None
    with open_stream(path) as stream, tarfile.open(fileobj=stream, mode="r:") as tar:  # type: ignore[call-overload]
        for info in _members(tar):
            if info.name == name and info.isreg():
                found = Member("tar", info.offset, info.size)
    return found
