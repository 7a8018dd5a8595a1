"""Which inputs need the model, and which rows can be reused: decided per input, before the
model loads, from each file's facts (efx.facts) and the rows of earlier outputs. Pure Python.

For every input, in row order, one of:
- COPY: a row of an earlier output (`Source`): the same file unchanged (kept), or the same bytes
  at another path (moved or copied: reused);
- FAILED: a failure of an earlier output, for the same bytes (not retried unless asked);
- SAME_AS: the same bytes as an earlier input of this run, which is embedded once;
- EMBED: for the model (new, changed, or retried);
- REFUSED: a failure known before decoding: a path the format cannot store, one that is not a
  file (a named pipe, device or socket: never opened), or what listing a shard found (a sample
  without an image, a null cell, a damaged tail: efx.sources).

"Unchanged" means: the same key with the same size and modification time as the stored row
(the fast path, no read), or, when those differ or `checksum` asks, the same SHA-256. For an
image inside a shard, the size and modification time are the shard's and the SHA-256 its own:
an unchanged shard keeps all its rows unread (`kept_shards`), a changed one is matched image by
image.
"""

from __future__ import annotations

import bisect
import os
import shutil
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from . import facts as facts_
from .decode.reasons import head_reason
from .facts import UNKNOWN, Facts
from .inputs import Input

EMBED, COPY, FAILED, SAME_AS, REFUSED = range(5)


@dataclass
class Source:
    """An earlier output whose rows and failures may be reused: OUTPUT itself, or what a killed
    update left beside it."""

    output: str
    paths: list[str]
    facts: list[Facts]
    failed: list[str]
    failed_facts: list[Facts]
    reasons: list[str]
    # For rows whose facts are unknown (outputs of efx before 0.4): files last modified before
    # this instant (the output's `created`) are trusted to be what was embedded.
    trusted_before_ns: int | None = None
    attrs: dict[str, Any] = field(default_factory=dict)  # its settings and model


@dataclass
class Counts:
    kept: int = 0  # unchanged files: their rows and failures copied
    new: int = 0  # embedded: paths no earlier output holds
    changed: int = 0  # embedded: paths whose bytes changed
    retried: int = 0  # embedded: failures tried again (--retry-failed, or unreadable before)
    reused: int = 0  # moved or copied files (and repeats within the run): rows copied
    removed: int = 0  # rows and failures of OUTPUT whose files are gone


@dataclass
class Work:
    """What a run does for each input (arrays indexed by the input's position)."""

    kind: np.ndarray  # int8: EMBED, COPY, FAILED, SAME_AS, REFUSED
    source: np.ndarray  # COPY, FAILED: which Source
    index: np.ndarray  # COPY: its row; FAILED: its failure; SAME_AS: the position embedded
    facts: list[Facts]  # what each file is now (stored with its row)
    reasons: dict[int, str]  # FAILED and REFUSED positions: why
    counts: Counts = field(default_factory=Counts)

    @property
    def to_embed(self) -> np.ndarray:
        return np.flatnonzero(self.kind == EMBED)

    def unchanged(self, source: Source, facts: bool = True) -> bool:
        """Whether `source` already is exactly this run's output: every input kept from it (at
        its own path: a moved file is copied, not kept), row for row and failure for failure,
        in its order, with the same facts (or, without `facts`, perhaps other dates)."""
        rows = self.kind == COPY
        failed = self.kind == FAILED
        n_rows, n_failed = int(rows.sum()), int(failed.sum())
        return (
            self.counts.kept == len(self.kind)
            and bool(np.all(rows | failed))
            and bool(np.all(self.source == 0))
            and (n_rows, n_failed) == (len(source.paths), len(source.failed))
            and np.array_equal(self.index[rows], np.arange(n_rows))
            and np.array_equal(self.index[failed], np.arange(n_failed))
            and (not facts or self._same_facts(source, rows, failed))
        )

    def _same_facts(self, source: Source, rows: np.ndarray, failed: np.ndarray) -> bool:
        return [self.facts[i] for i in np.flatnonzero(rows)] == source.facts and [
            self.facts[i] for i in np.flatnonzero(failed)
        ] == source.failed_facts


def embed_all(count: int) -> Work:
    """Every input for the model, repeats included (efx bench measures the model's work)."""
    return Work(
        kind=np.full(count, EMBED, np.int8),
        source=np.full(count, -1, np.int32),
        index=np.full(count, -1, np.int64),
        facts=[UNKNOWN] * count,
        reasons={},
    )


def plan(
    inputs: Sequence[Input],
    sources: Sequence[Source],
    *,
    unstorable: dict[int, str],
    checksum: bool = False,
    retry_failed: bool = False,
    hash_files: Callable[..., list[Facts]] = facts_.hash_files,
) -> Work:
    """Decide, for each of `inputs`, how its row is made (see the module's docstring).

    One `stat` per image file; a file is read (hashed) only when no stored row matches its
    path, size and modification time (or with `checksum`, always): a new, edited, touched,
    moved or copied file. Shard members come with their facts (efx.sources hashed them while
    listing), and those of an unchanged shard with the row they keep. Identical bytes are
    embedded once, whatever their keys.
    """
    work = embed_all(len(inputs))
    work.reasons.update(unstorable)
    stored = _Stored(sources)
    to_hash, trusted = _fast_path(work, inputs, stored, checksum, retry_failed)
    loose = [p for p in to_hash if inputs[p].facts is None]
    heads: list[bytes | None] = []
    hashed = dict(
        zip(
            loose,
            hash_files([inputs[p].path for p in loose], heads=heads) if loose else [],
            strict=True,
        )
    )
    # A file that does not start like an image fails now, never read whole by a decoder (a
    # 3 GB file of zeros called huge.jpg took 3.8 GB to fail).
    for position, head in zip(loose, heads, strict=True):
        if head is not None and (why := head_reason(head)) is not None:
            work.kind[position], work.reasons[position] = REFUSED, why
            work.facts[position] = hashed[position]
    to_hash = [p for p in to_hash if work.kind[p] != REFUSED]
    found = [hashed[p] if p in hashed else inputs[p].facts or UNKNOWN for p in to_hash]
    _match_bytes(work, inputs, stored, to_hash, found, trusted, retry_failed)
    for failed in np.flatnonzero(work.kind == FAILED):
        number, i = int(work.source[failed]), int(work.index[failed])
        work.reasons[int(failed)] = sources[number].reasons[i]
    if sources:
        work.counts.removed = _removed(work, sources[0], {inp.key for inp in inputs})
    return work


class _Stored:
    """The rows and failures of the earlier outputs, by key and (when needed) by bytes."""

    def __init__(self, sources: Sequence[Source]) -> None:
        self.sources = sources
        self.by_key: dict[str, list[tuple[int, bool, int]]] = {}  # (source, failure?, index)
        for number, source in enumerate(sources):
            for i, path in enumerate(source.paths):
                self.by_key.setdefault(path, []).append((number, False, i))
            for i, path in enumerate(source.failed):
                self.by_key.setdefault(path, []).append((number, True, i))
        self._by_digest: dict[str, tuple[int, bool, int]] | None = None

    def facts(self, entry: tuple[int, bool, int]) -> Facts:
        number, failure, i = entry
        source = self.sources[number]
        return source.failed_facts[i] if failure else source.facts[i]

    @property
    def by_digest(self) -> dict[str, tuple[int, bool, int]]:
        """The first source wins; rows over failures."""
        if self._by_digest is None:
            self._by_digest = {}
            for number in reversed(range(len(self.sources))):
                source = self.sources[number]
                for i, found in reversed(list(enumerate(source.failed_facts))):
                    if found.sha256:
                        self._by_digest[found.sha256] = (number, True, i)
                for i, found in reversed(list(enumerate(source.facts))):
                    if found.sha256:
                        self._by_digest[found.sha256] = (number, False, i)
        return self._by_digest


def _fast_path(
    work: Work, inputs: Sequence[Input], stored: _Stored, checksum: bool, retry_failed: bool
) -> tuple[list[int], dict[int, tuple[int, bool, int]]]:
    """Step 1: inputs kept by key, size and modification time (and those of unchanged
    shards), or known to fail; the positions left to match by their bytes, and the rows of
    old outputs trusted by date among them."""
    to_hash: list[int] = []
    trusted: dict[int, tuple[int, bool, int]] = {}  # rows of old outputs, trusted by date
    for position, inp in enumerate(inputs):
        if inp.kept is not None:  # its shard is unchanged: never read
            _take(work, position, inp.kept, inp.facts or UNKNOWN)
            work.counts.kept += 1
            continue
        now, not_a_file = (inp.facts, None) if inp.facts else facts_.inspect(inp.path)
        work.facts[position] = now
        why = work.reasons.get(position) or inp.reason or not_a_file
        if why is not None:
            work.kind[position], work.reasons[position] = REFUSED, why
            continue
        entries = stored.by_key.get(inp.key, [])
        same = [] if checksum else [e for e in entries if facts_.same_file(stored.facts(e), now)]
        if same and not (same[0][1] and retry_failed):
            _take(work, position, same[0], stored.facts(same[0]))
            work.counts.kept += 1
            continue
        old = None if checksum else _trusted_by_date(entries, stored.sources, now)
        if old is not None:
            trusted[position] = old
        to_hash.append(position)
    return to_hash, trusted


def _match_bytes(
    work: Work,
    inputs: Sequence[Input],
    stored: _Stored,
    positions: list[int],
    found: list[Facts],
    trusted: dict[int, tuple[int, bool, int]],
    retry_failed: bool,
) -> None:
    """Step 2: the inputs read (hashed), matched by their bytes with stored rows (moved or
    copied) and with each other (embedded once); the rest are for the model."""
    first: dict[str, int] = {}  # digest -> the position that embeds it in this run
    for position, now in zip(positions, found, strict=True):
        work.facts[position] = now
        entries = stored.by_key.get(inputs[position].key, [])
        if position in trusted:
            _take(work, position, trusted[position], now)
            work.counts.kept += 1
            continue
        digest = now.sha256
        same_key = next((e for e in entries if digest and stored.facts(e).sha256 == digest), None)
        elsewhere = stored.by_digest.get(digest) if digest else None
        if same_key is not None and not (same_key[1] and retry_failed):
            _take(work, position, same_key, now)  # touched, or --checksum: the same bytes
            work.counts.kept += 1
        elif elsewhere is not None and not (elsewhere[1] and retry_failed):
            _take(work, position, elsewhere, now)  # moved or copied
            work.counts.reused += 1
        elif digest and digest in first:
            work.kind[position], work.index[position] = SAME_AS, first[digest]
            work.counts.reused += 1
        else:
            if digest:
                first[digest] = position
            if not entries:
                work.counts.new += 1
            elif same_key is not None:  # the same bytes as a failure: --retry-failed
                work.counts.retried += 1
            else:
                work.counts.changed += 1


def kept_shards(
    source: Source | None, checksum: bool, retry_failed: bool, shards: Sequence[str]
) -> dict[str, list[Input]]:
    """The `shards` (files that may be shards) that `source` (OUTPUT) holds unchanged, with
    their inputs as it holds them, each keeping its row: those whose size and modification
    time are stored with every one of their rows and failures (the fast path: efx.sources does
    not read them). Any other must be read: changed, new, --checksum, or --retry-failed with a
    failure in it."""
    if source is None or checksum or not shards:
        return {}
    kept = _kept_shard(source, retry_failed)
    # A file's facts by URL may take a request each: several at once, as efx.sources lists.
    with ThreadPoolExecutor(8) as pool:
        found = pool.map(lambda shard: kept(shard, facts_.stat(shard)), shards)
        return {s: inputs for s, inputs in zip(shards, found, strict=True) if inputs is not None}


def _kept_shard(source: Source, retry_failed: bool) -> Callable[[str, Facts], list[Input] | None]:
    """A shard's inputs as `source` holds them when it holds the shard unchanged, else None."""
    keys = sorted(
        [(path, False, i) for i, path in enumerate(source.paths)]
        + [(path, True, i) for i, path in enumerate(source.failed)]
    )
    names = [key for key, _, _ in keys]

    def kept(shard: str, now: Facts) -> list[Input] | None:
        inside = keys[
            bisect.bisect_left(names, shard + "/") : bisect.bisect_left(names, shard + "0")
        ]
        exact = keys[bisect.bisect_left(names, shard) : bisect.bisect_right(names, shard)]
        entries = sorted(exact + inside, key=lambda k: (k[1], k[2]))  # rows, then failures
        # Each key once: a shard given twice (by name and in its folder) has its rows twice in
        # OUTPUT, and each listing of it keeps one copy (both copies doubled the rows at every
        # --update).
        first: dict[str, tuple[str, bool, int]] = {}
        for entry in entries:
            first.setdefault(entry[0], entry)
        entries = list(first.values())
        facts = [
            source.failed_facts[i] if failure else source.facts[i] for _, failure, i in entries
        ]
        if not entries or now.size < 0 or now.mtime_ns < 0 or any(f[:2] != now[:2] for f in facts):
            return None
        if retry_failed and any(failure for _, failure, _ in entries):
            return None
        return [
            Input(key, shard, facts=f, kept=(0, failure, i))
            for (key, failure, i), f in zip(entries, facts, strict=True)
        ]

    return kept


def _trusted_by_date(
    entries: list[tuple[int, bool, int]], sources: Sequence[Source], now: Facts
) -> tuple[int, bool, int] | None:
    """A row of an output of efx before 0.4 (no facts) at this path, if the file has not been
    modified since that output was started: it is what was embedded."""
    for entry in entries:
        number, failure, i = entry
        source = sources[number]
        since = source.trusted_before_ns
        old = not failure and since is not None and source.facts[i] == UNKNOWN
        if old and 0 <= now.mtime_ns < since:  # type: ignore[operator]
            return entry
    return None


def _take(work: Work, position: int, entry: tuple[int, bool, int], now: Facts) -> None:
    number, failure, i = entry
    work.kind[position] = FAILED if failure else COPY
    work.source[position], work.index[position] = number, i
    work.facts[position] = now


def _removed(work: Work, output: Source, inputs: set[str]) -> int:
    """OUTPUT's rows and failures whose file is gone: neither at its path nor reused."""
    used_rows = set(work.index[(work.kind == COPY) & (work.source == 0)].tolist())
    used_failures = set(work.index[(work.kind == FAILED) & (work.source == 0)].tolist())
    gone = sum(
        1 for i, path in enumerate(output.paths) if path not in inputs and i not in used_rows
    )
    return gone + sum(
        1 for i, path in enumerate(output.failed) if path not in inputs and i not in used_failures
    )


def trusted_before(attrs: dict[str, object]) -> int | None:
    """The instant an output of efx before 0.4 was started, in ns since the epoch: its files
    last modified before then are what it embedded (one modified later may not be)."""
    from datetime import datetime

    created = attrs.get("created")
    try:
        return int(datetime.fromisoformat(str(created)).timestamp()) * 1_000_000_000
    except ValueError:
        return None


def leftovers(output: str, old: bool = False) -> list[str]:
    """What killed updates left beside OUTPUT (`OUTPUT.updating-N`), oldest first; with `old`,
    also what a kill during the swap's clean-up left (`OUTPUT.updating-N.old`, never read)."""
    output = os.path.normpath(output)
    folder, name = os.path.split(os.path.abspath(output))
    prefix = name + ".updating-"
    numbered = []
    for entry in os.listdir(folder):
        number = entry[len(prefix) :].removesuffix(".old" if old else "")
        if entry.startswith(prefix) and number.isdigit():
            numbered.append((int(number), entry))
    return [os.path.join(os.path.dirname(output), entry) for _, entry in sorted(numbered)]


def remove_leftovers(output: str) -> None:
    """Once OUTPUT is up to date, what killed updates left beside it is no longer needed."""
    for leftover in leftovers(output, old=True):
        if os.path.isdir(leftover):
            shutil.rmtree(leftover, ignore_errors=True)
        elif os.path.lexists(leftover):
            os.remove(leftover)


def scratch_name(output: str) -> str:
    """Where an update writes the new OUTPUT before swapping it in: a name no leftover has."""
    taken = leftovers(output)
    last = int(taken[-1].rsplit("-", 1)[1]) if taken else 0
    return f"{os.path.normpath(output)}.updating-{last + 1}"
