"""Sources -> inputs (efx.inputs.Input), in the order rows will be written. No TensorFlow.

A SOURCE is a folder (walked: efx.discover), a file, or `-` (a list on stdin). Each file is an
image, or a shard holding many: a WebDataset tar (tar.py), a Parquet file (parquet.py) or a
TFRecord file (tfrecord.py), told by content (`kind_of`), not by name. One reader per kind:
`scan` lists a shard's inputs (in stored order, hashing each image: --update compares them),
`read` gives the bytes of some of them again (ascending), `find` locates one by its name.
For the planner: `list_inputs`; for the engines: `read_ahead` (the local one) and
`read_inputs` (Ray workers), the bytes of any inputs in order; for pages and users: `locate`
and `read_key`, a row's key back to its image.
"""

from __future__ import annotations

import collections
import hashlib
import itertools
import os
import tarfile
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, NamedTuple

from .. import facts as facts_
from .. import remote
from ..discover import IMAGE_EXTENSIONS, SHARD_NAME
from ..errors import EfxError
from ..facts import Facts
from ..files import open_input
from ..inputs import Input, Member, fetched, loose
from . import parquet, streams, tar, tfrecord
from .streams import GZIP_MAGIC, Ambiguous, NotImages, first_line

READERS = {"tar": tar.read, "parquet": parquet.read, "tfrecord": tfrecord.read}
SCAN_THREADS = max(2, min(8, os.cpu_count() or 2))


class ShardOptions(NamedTuple):
    """Which part of a shard's samples is the image, where a dataset needs saying."""

    image_column: str | None = None  # Parquet: the column of image bytes
    image_key: str | None = None  # tar: the image member's extension; TFRecord: the feature
    # Source columns carried into a Parquet output: a Parquet shard's columns, a WebDataset
    # sample's members by extension (txt, json), a TFRecord's bytes features (as text).
    keep_columns: tuple[str, ...] = ()


def kind_of(path: str) -> str | None:
    """ "tar", "parquet" or "tfrecord" for a shard, told by its first bytes as each format's
    own parser reads them; None for anything else (an image, or a file the decoder will say is
    not one). Never blocks on a pipe.

    A tar is a first block that tarfile reads as a header (its checksum holds: POSIX ustar and
    pre-POSIX v7 tars alike), or, for a file named as a tar, the end-of-archive blocks alone (an
    empty shard: what a WebDataset writer leaves when every download failed). A TFRecord file
    is a record whose length passes its CRC-32C, plain, gzip'd or zlib'd (TensorFlow's three
    compression types), or, for a file named as one, no bytes at all once inflated (a file of
    zero records). Parquet starts with `PAR1`."""
    try:
        with open_input(path) as file:
            head = file.read(1024)
            if head.startswith(GZIP_MAGIC):
                import gzip
                import zlib

                file.seek(0)
                try:
                    head = gzip.GzipFile(fileobj=file).read(1024)
                except (OSError, EOFError, zlib.error):
                    return None
    except OSError:
        return None
    if head.startswith(b"PAR1"):
        return "parquet"
    if tar.is_header(head):
        return "tar"
    if tfrecord.looks_like_tfrecord(head) or tfrecord.looks_like_zlib_tfrecord(head):
        return "tfrecord"
    named = SHARD_NAME.search(path)
    suffix = named.group(1).lower() if named is not None else ""
    if suffix in ("tar", "tgz", "tar.gz") and len(head) == 1024 and head.count(0) == len(head):
        return "tar"
    if "tfrecord" in suffix and not tfrecord.inflated(head):
        return "tfrecord"  # no record at all: what TensorFlow's writer leaves when given none
    return None


def list_inputs(
    files: Sequence[tuple[str, bool]],
    options: ShardOptions,
    kept: Mapping[str, list[Input]] | None = None,
    on_note: Callable[[str], None] | None = None,
    progress: Any = None,
) -> list[Input]:
    """The inputs of `files` ((path, found by a folder walk)), in order: an image is one input,
    a shard its samples in stored order. A file is a shard if its content says so (whatever
    its name), unless it is named as an image (.jpg .png ...: not even opened here).
    `kept` holds the inputs of shards an earlier output holds unchanged, by path
    (efx.reuse.kept_shards): those are taken as they are, unread.

    A Parquet file without image column is skipped with a note when a walk found it (img2dataset
    writes one beside each shard), refused when named. Raises EfxError for a shard whose image
    column or feature cannot be told.
    """
    # A file named as an image is one; any other may be a shard (told by its content).
    kept = kept or {}
    scanned = {i: kept[path] for i, (path, _) in enumerate(files) if path in kept}
    maybe = [i for i, (path, _) in enumerate(files) if may_be_shard(path) and i not in scanned]
    skipped: list[NotImages] = []
    # Of the files read ("kept": unchanged shards, not read, whose kinds are not known here).
    kinds: set[str | None] = {"kept"} if scanned else set()
    if maybe:
        streams.STOP.clear()
        pool = ThreadPoolExecutor(SCAN_THREADS)
        try:
            jobs = [(files[i][0], options) for i in maybe]
            for i, (kind, found) in zip(maybe, pool.map(_scan, jobs), strict=True):
                kinds.add(kind)
                if isinstance(found, EfxError) and not files[i][1]:
                    raise found  # named: the user says which column, or gives the shards
                if isinstance(found, NotImages):
                    skipped.append(found)
                    found = []
                elif isinstance(found, Ambiguous):  # found by a walk: the others go on
                    path = files[i][0]
                    found = [Input(path, path, facts=facts_.stat(path), reason=found.reason)]
                if found is not None:
                    scanned[i] = found
                    if progress is not None:
                        progress(1)
        finally:  # Ctrl-C: shards not started are dropped, those being listed stop at once
            streams.STOP.set()
            pool.shutdown(wait=False, cancel_futures=True)
    if skipped and on_note is not None:
        on_note(_skipped_note(skipped))
    if on_note is not None:
        for note in _unused_options(options, kinds):
            on_note(note)
    inputs: list[Input] = []
    for i, (path, _) in enumerate(files):
        inputs.extend(scanned[i] if i in scanned else [loose(path)])
    return inputs


def _unused_options(options: ShardOptions, kinds: set[str | None]) -> list[str]:
    """A note for each option that no shard of this run took: --image-column names a Parquet
    column, --image-key a tar member's extension or a TFRecord feature."""
    if "kept" in kinds:  # unchanged shards, not read: their kinds are not known here
        return []
    notes = []
    if options.image_column and "parquet" not in kinds:
        notes.append(
            f"--image-column {options.image_column} was not used: it names a Parquet shard's "
            "column, and no Parquet shard was read (tar and TFRecord shards take --image-key)"
        )
    if options.image_key and not kinds & {"tar", "tfrecord"}:
        notes.append(
            f"--image-key {options.image_key} was not used: it names a tar sample's member or a "
            "TFRecord feature, and no such shard was read (Parquet shards take --image-column)"
        )
    return notes


def _skipped_note(skipped: list[NotImages]) -> str:
    """One note for the files a walk skipped: img2dataset writes a metadata file per shard."""
    if len(skipped) == 1:
        return f"skipped a file that holds no images: {skipped[0].note}"
    return (
        f"skipped {len(skipped)} files that hold no images, as img2dataset's metadata beside "
        f"its shards; the first: {skipped[0].note}"
    )


def may_be_shard(path: str) -> bool:
    """Whether a file may be a shard: any file not named as an image (told by its content)."""
    return os.path.splitext(path)[1].lower() not in IMAGE_EXTENSIONS


def _scan(
    job: tuple[str, ShardOptions],
) -> tuple[str | None, list[Input] | NotImages | Ambiguous | None]:
    """(the file's kind, its inputs as a shard), or None for a file that is not a shard."""
    path, options = job
    now = facts_.stat(path)
    kind = kind_of(path)
    return kind, _scan_kind(path, now, kind, options)


def _scan_kind(
    path: str, now: Facts, kind: str | None, options: ShardOptions
) -> list[Input] | NotImages | Ambiguous | None:
    if kind == "tar":
        return tar.scan(path, now, options.image_key, options.keep_columns)
    if kind == "tfrecord":
        try:
            return tfrecord.scan(path, now, options.image_key, options.keep_columns)
        except (NotImages, Ambiguous) as error:
            return error
    if kind is None:
        return _not_a_shard(path, now)
    try:
        field, key = parquet.layout(path, options.image_column)
    except (NotImages, Ambiguous) as error:
        return error
    except (OSError, ValueError) as error:  # pyarrow's ArrowInvalid is a ValueError
        reason = f"not a readable Parquet file ({first_line(error)})"
        return [Input(path, path, facts=now, reason=reason)]
    return parquet.scan(path, now, field, key, options.keep_columns)


READ_AHEAD_RUNS = 3  # shards read at once, each by a thread of its own
READ_AHEAD_ITEMS = 16  # members read ahead per shard: memory is this many images, not a shard
# ... and at most this many bytes of them per shard (one larger image is read alone): a shard
# of 50 MB scans holds one scan in hand, not 16 (README: Datasets in shards, memory).
READ_AHEAD_BYTES = 32 << 20
# Objects by URL in flight at once: a request mostly waits on the network (50 ms in a region),
# so many more than cores keep the model fed; memory is this many images (and as many queued).
OBJECT_REQUESTS = 16
_OBJECTS = ""  # the run of consecutive objects by URL, read by a pool of their own


def read_ahead(inputs: Sequence[Input]) -> Iterator[bytes | BaseException]:
    """The bytes of the inputs of `inputs` efx reads itself (shard members and objects by URL:
    efx.inputs.fetched; files of their own are skipped, the decoders read those), in order, as
    `read_inputs`. The shards of READ_AHEAD_RUNS runs of consecutive members are read at once,
    each by a thread of its own, at most READ_AHEAD_ITEMS and READ_AHEAD_BYTES ahead; a run of
    objects by OBJECT_REQUESTS requests in flight, so a slow object delays only itself."""
    runs = _runs([inp for inp in inputs if fetched(inp)])
    stop = threading.Event()
    started: list[_Pipe] = []

    def start(path: str | None, run: list[Input]) -> None:
        pipe = _Pipe(READ_AHEAD_ITEMS, READ_AHEAD_BYTES)
        threading.Thread(target=_fill, args=(pipe, _read(path, run), stop), daemon=True).start()
        started.append(pipe)

    try:
        for _ in range(READ_AHEAD_RUNS):
            if (run := next(runs, None)) is not None:
                start(*run)
        while started:
            pipe = started.pop(0)
            while (item := pipe.get()) is not _END:
                yield item
            if (run := next(runs, None)) is not None:
                start(*run)
    finally:
        stop.set()  # a consumer that stops early: the threads end at their next item


_END = object()


class _Pipe:
    """A queue bounded in items and in bytes: `put` waits while it holds `items` items, or
    while what it holds and the new item exceed `size` bytes (an item larger than `size` goes
    through alone)."""

    def __init__(self, items: int, size: int) -> None:
        self._items: collections.deque[Any] = collections.deque()
        self._limit, self._size, self._held = items, size, 0
        self._changed = threading.Condition()

    def put(self, item: Any, stop: threading.Event) -> bool:
        """False when `stop` was set while waiting for room."""
        size = len(item) if isinstance(item, bytes) else 0
        with self._changed:
            while self._items and (
                len(self._items) >= self._limit or self._held + size > self._size
            ):
                if stop.is_set():
                    return False
                self._changed.wait(0.1)
            self._items.append(item)
            self._held += size
            self._changed.notify_all()
        return True

    def get(self) -> Any:
        with self._changed:
            while not self._items:
                self._changed.wait()
            item = self._items.popleft()
            self._held -= len(item) if isinstance(item, bytes) else 0
            self._changed.notify_all()
        return item


def _fill(pipe: _Pipe, items: Iterator[Any], stop: threading.Event) -> None:
    for item in itertools.chain(items, [_END]):
        if stop.is_set() or not pipe.put(item, stop):
            items.close()  # type: ignore[attr-defined]
            return


def _runs(inputs: Sequence[Input]) -> Iterator[tuple[str | None, list[Input]]]:
    """Runs of consecutive inputs in the same shard (its path), of objects by URL (_OBJECTS),
    or of files (None)."""

    def run_of(inp: Input) -> str | None:
        return inp.path if inp.member else _OBJECTS if remote.is_url(inp.path) else None

    for shard, run in itertools.groupby(inputs, run_of):
        yield shard, list(run)


def _read(shard: str | None, run: list[Input]) -> Iterator[bytes | BaseException]:
    if shard is None:
        return (b"" for _ in run)
    if shard == _OBJECTS:
        return _as_listed(run, _read_objects([inp.path for inp in run]))
    return _as_listed(run, _read_run(shard, [inp.member for inp in run]))  # type: ignore[misc]


class NotAsListed(ValueError):
    """Bytes read for the embedding pass that are not those the listing pass hashed."""


def _as_listed(
    run: list[Input], items: Iterator[bytes | BaseException]
) -> Iterator[bytes | BaseException]:
    """`items`, each checked against the SHA-256 its input was listed with: bytes that differ
    (a shard rewritten while efx ran, or a reader that found other bytes than the listing's)
    become a NotAsListed error, so the row of an input is never another picture's. Every
    reader's bytes pass here, for both engines; an input listed without a digest is passed."""
    for inp, data in zip(run, items, strict=True):
        listed = inp.facts.sha256 if inp.facts is not None else ""
        if listed and isinstance(data, bytes) and hashlib.sha256(data).hexdigest() != listed:
            data = NotAsListed("its bytes are not those efx listed (another SHA-256)")
        yield data


def read_inputs(inputs: Sequence[Input]) -> Iterator[bytes | BaseException]:
    """The bytes of each shard member and object by URL, in order (an exception where they
    cannot be read); b"" for a file of its own (its reader reads it). Each shard is opened once
    per run of consecutive inputs in it and read forwards."""
    for shard, run in _runs(inputs):
        yield from _read(shard, run)


def _read_objects(urls: list[str]) -> Iterator[bytes | BaseException]:
    """Whole objects, in order, OBJECT_REQUESTS requests in flight (each retried by
    efx.remote); an object that cannot be read is its error (a RemoteError with the reason)."""
    pool = ThreadPoolExecutor(OBJECT_REQUESTS)
    todo = iter(urls)
    pending = collections.deque(
        pool.submit(_object, url) for url in itertools.islice(todo, OBJECT_REQUESTS)
    )
    try:
        while pending:
            item = pending.popleft().result()
            if (url := next(todo, None)) is not None:
                pending.append(pool.submit(_object, url))
            yield item
    finally:
        pool.shutdown(wait=False, cancel_futures=True)


def _object(url: str) -> bytes | BaseException:
    try:
        return remote.read_object(url)
    except OSError as error:
        return error


def _read_run(path: str, members: list[Member]) -> Iterator[bytes | BaseException]:
    """A member that cannot be read fails alone: the reader starts again after it."""
    done = 0
    while done < len(members):
        try:
            for data in READERS[members[0].kind](path, members[done:]):
                yield data
                done += 1
        except (OSError, EOFError, ValueError, EfxError) as error:
            yield error
            done += 1


def read_one(inp: Input) -> bytes | BaseException:
    """The bytes of one member input or object by URL (to say why it failed, to show it on a
    page); b"" for a file."""
    return next(read_inputs([inp]))


FINDERS = {"tar": tar.find, "parquet": parquet.find, "tfrecord": tfrecord.find}


def shard_of(key: str) -> tuple[str, str] | None:
    """(shard, name in it) for the key of an image inside a shard whose file exists: the
    longest prefix of `key` that is a file. None for a file's own path, or nothing found."""
    if is_file(key) or (not remote.is_url(key) and os.path.exists(key)):
        return None
    head = key
    while "/" in head and not head.endswith("://"):
        head = head.rsplit("/", 1)[0]
        if is_file(head):
            return head, key[len(head) + 1 :]
    return None


def is_file(path: str) -> bool:
    """A file, or an object by URL (efx similar embeds either as a query)."""
    return remote.exists(path) if remote.is_url(path) else os.path.isfile(path)


def dataset_key(inp: Input) -> tuple[str | None, str | None]:
    """(shard, the dataset's own key) of an image read from a shard: a WebDataset sample's
    `__key__` (the member's name without its extension, as webdataset's base_plus_ext cuts it),
    a Parquet source's key column value or row number, a TFRecord's record number; for one of
    several images of a row or record (`FILE/KEY/I`), that row's or record's (the metadata
    joins on it). (None, None) for a file of its own, or a row whose member is not known here
    (one an unchanged shard keeps: its earlier output has them)."""
    if inp.member is None:
        return None, None
    name = inp.key[len(inp.path) + 1 :]
    if inp.member.kind == "tar":
        found = tar.KEY_EXT.match(name)
        name = found.group(1) if found else name
    elif "[]" in inp.member.field or (inp.member.kind == "tfrecord" and "/" in name):
        name = name.rpartition("/")[0]
    return inp.path, name


def exists(key: str) -> bool:
    """Whether an output's row name still points at something: a file, or a shard's file."""
    return is_file(key) or os.path.exists(key) or shard_of(key) is not None


def locate(key: str) -> Input | None:
    """The input a row's key names (a file, or an image inside a shard, found by reading the
    shard's headers or key column), to read it again; None if it is not there."""
    if is_file(key):
        return loose(key)
    found = shard_of(key)
    kind = kind_of(found[0]) if found else None
    if found is None or kind is None:
        return None
    try:
        member = FINDERS[kind](*found)
    except (OSError, EOFError, ValueError, EfxError, tarfile.TarError):
        return None
    return Input(key, found[0], member) if member is not None else None


def read_key(key: str) -> bytes | None:
    """The bytes of the image a row's key names, or None if they cannot be read."""
    inp = locate(key)
    if inp is None:
        return None
    if not fetched(inp):
        try:
            with open_input(inp.path) as file:
                return file.read()
        except OSError:
            return None
    data = read_one(inp)
    return None if isinstance(data, BaseException) else data


def _not_a_shard(path: str, now: Facts) -> list[Input] | None:
    """None for an image (or a file the decoder will say is not one); a failure for a file
    named as a shard that is none (random bytes called x.tar): say what it was taken for."""
    named = SHARD_NAME.search(path)
    if named is None:
        return None
    from ..decode.reasons import read_head, sniff_format

    try:
        found = sniff_format(read_head(path))
    except OSError:
        return None  # its reason is the decoder's: missing, permission denied ...
    if found in ("JPEG", "PNG", "GIF", "BMP", "WebP"):
        return None  # an image, whatever its name
    suffix = named.group(1).lower()
    what = "Parquet" if suffix == "parquet" else "TFRecord" if "tfrecord" in suffix else "tar"
    reason = f"named as a {what} shard, but it is neither a {what} file nor an image"
    return [Input(path, path, facts=now, reason=reason)]


def read_reason(error: BaseException) -> str:
    """Why a member's bytes could not be read, for its failure."""
    if isinstance(error, NotAsListed):
        return (
            "its bytes changed while efx ran: they are not those listed (another SHA-256); "
            "run the command again"
        )
    if isinstance(error, OSError) and not isinstance(error, EOFError):
        from ..decode.reasons import os_reason

        return f"its shard cannot be read: {os_reason(error)}"
    return f"its shard changed or is damaged since it was listed ({first_line(error)})"
