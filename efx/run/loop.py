"""The loop: every input's row, in input order, into the writer: copied from an earlier
output, or from the engine's batches; committed after every step, synced every SYNC_ROWS rows
or SYNC_SECONDS seconds."""

from __future__ import annotations

import contextlib
import itertools
import sys
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from .. import facts as facts_
from .. import process, reuse, timeline, writers
from .. import sources as sources_
from ..config import DecodeOptions, Settings
from ..engine import Batch, Engine
from ..errors import EfxError
from ..facts import Facts
from ..inputs import Input
from ..model import LoadedModel
from .copies import Copies
from .planned import Plan
from .record import output_attrs, shard_size_of

# Rows reach the OS (and survive kill -9) after every batch; they are synced to the disk (and
# survive power loss) at least every SYNC_ROWS images or SYNC_SECONDS seconds.
SYNC_ROWS = 1000
SYNC_SECONDS = 30.0


def write_rows(
    plan: Plan,
    settings: Settings,
    loaded: LoadedModel | None,
    engine: Engine | None,
    progress: bool,
) -> tuple[int, int]:
    """Open (or reopen) the target, stream every input's row into it, and mark it complete.
    On any stop it is left marked incomplete, with every batch written so far."""
    assert plan.work is not None
    resuming = settings.resume and plan.existing is not None
    try:
        writer = writers.open_writer(
            plan.format, plan.target, output_attrs(plan, settings, loaded),
            inputs=plan.paths, shard_size=shard_size_of(plan, settings),
            keep=plan.keep if resuming else None,
        )  # fmt: skip
    except OSError as error:
        raise EfxError(f"cannot create OUTPUT {plan.target}: {error.strerror or error}") from error
    try:
        options = settings.decode_options(loaded.image_size) if loaded else None
        with progress_bar(len(plan.work.to_embed), progress) as bar:
            feed = Feed(engine, options, loaded)
            counts = stream(plan.inputs[plan.done :], plan.work, plan.sources, writer, bar, feed)
        writer.close()
    except BrokenPipeError:
        raise  # OUTPUT - and its reader stopped reading: the caller ends quietly (the CLI: 141)
    except OSError as error:
        abort(writer)
        if settings.update:
            raise EfxError(
                f"writing {plan.target} failed: {error.strerror or error} (disk full?). "
                f"{plan.output} is as it was; free some space, then run the same command: it "
                f"continues from what {plan.target} holds."
            ) from error
        raise EfxError(
            f"writing {plan.output} failed: {error.strerror or error} (disk full?). The rows "
            "written so far are kept and the output is marked incomplete: free some space, "
            "then run the same command with --resume."
        ) from error
    except KeyboardInterrupt:
        abort(writer)
        scratch = plan.target if settings.update else None
        raise process.Interrupted(plan.output, wrote=True, scratch=scratch) from None
    except BaseException:
        abort(writer)
        raise
    return counts


# Rows are assembled and written in steps of at most this many inputs: kept rows are copied
# from the earlier output in blocks this size, so memory does not grow with the output.
STEP_ROWS = 1024


@dataclass
class Feed:
    """What the model stage needs: the engine, its decode options and the loaded model
    (None, None, None when no input needs the model)."""

    engine: Engine | None
    options: DecodeOptions | None
    loaded: LoadedModel | None

    def batches(self, inputs: list[Input]) -> Iterator[Batch]:
        if not inputs:
            return iter(())
        assert self.engine is not None and self.options is not None and self.loaded is not None
        return self.engine.batches(inputs, self.options, self.loaded)


def stream(
    inputs: list[Input],
    work: reuse.Work,
    sources: list[reuse.Source],
    writer: writers.Writer,
    bar: Any,
    feed: Feed,
) -> tuple[int, int]:
    """The loop: each input's row, in input order, into the writer: copied from an earlier
    output, or from the engine's batches (which see only the inputs that need the model).
    Rows and failures are each written in input order (what --resume relies on), and
    committed after every step; `bar` (None: none) counts the inputs embedded. Returns
    (rows, failures) written."""
    bar = bar if bar is not None else _NoBar()
    embed_at = work.to_embed
    paths = [inp.key for inp in inputs]
    # Each input with the facts the plan found (an object by URL's SHA-256, when it was
    # hashed): what the engine reads is checked against them (efx.sources._as_listed).
    batches = feed.batches(
        [
            inputs[i] if inputs[i].facts else inputs[i]._replace(facts=work.facts[i])
            for i in embed_at
        ]
    )
    held: dict[int, np.ndarray | str] = {}  # embedded once, repeated later (SAME_AS)
    repeated = set(work.index[work.kind == reuse.SAME_AS].tolist())
    rows = failed = 0
    sync = _SyncClock()
    after_bar = not getattr(bar, "disable", True)
    with Copies(work, sources) as copies, process.SignalsBetweenBatches(after_bar) as signals:
        for start, stop, computed in _steps(len(paths), embed_at, batches):
            step = Step(inputs, work, start, stop, computed)
            embeddings, reasons = step.assemble(copies.rows(start, stop), held)
            ok = step.ok(reasons)
            # In input order, runs of rows and failures alternating: a file format keeps
            # them apart anyway, a stream (OUTPUT -) gives one record per input in order.
            for first, last, good in _runs(ok):
                if good:
                    positions = np.arange(start + first, start + last)
                    writer.write(
                        [paths[p] for p in positions], embeddings[first:last],
                        step.facts(positions), step.columns(positions, copies),
                    )  # fmt: skip
                    continue
                for position in range(start + first, start + last):
                    writer.fail(paths[position], reasons[position], work.facts[position])
            for position in repeated.intersection(range(start, stop)):
                kept = reasons.get(position)
                # A copy: a view would keep this whole step's array alive.
                held[position] = kept if kept is not None else embeddings[position - start].copy()
            rows, failed = rows + int(ok.sum()), failed + len(reasons)
            writer.flush(sync=sync.due(stop - start))
            timeline.mark("first rows written")
            bar.update(int((work.kind[start:stop] == reuse.EMBED).sum()))
            signals.deliver()  # a Ctrl-C or SIGTERM that came during this step acts now
    return rows, failed


def _runs(flags: np.ndarray) -> Iterator[tuple[int, int, bool]]:
    """[first, last) spans of equal flags, in order, with their flag."""
    if not len(flags):
        return
    edges = [0, *(np.flatnonzero(np.diff(flags.astype(np.int8))) + 1).tolist(), len(flags)]
    for first, last in itertools.pairwise(edges):
        yield first, last, bool(flags[first])


def _steps(
    count: int, embed_at: np.ndarray, batches: Iterable[Batch]
) -> Iterator[tuple[int, int, Batch | None]]:
    """Spans [start, stop) of the inputs in order, each with what the engine returned for the
    inputs in it (a Batch whose positions are among all the inputs), at most STEP_ROWS inputs
    per span: an engine batch, or copied rows between two of them."""
    cursor = 0
    for index, embeddings, ok, reasons in batches:
        positions = embed_at[index]
        failed = {int(embed_at[i]): why for i, why in reasons.items()}
        done = np.flatnonzero(ok)
        last = int(positions[-1]) + 1
        while cursor < last:
            stop = min(last, cursor + STEP_ROWS)
            inside = (positions >= cursor) & (positions < stop)
            rows = np.searchsorted(done, np.flatnonzero(inside & ok))  # their embeddings' rows
            mine = {p: why for p, why in failed.items() if cursor <= p < stop}
            yield cursor, stop, Batch(positions[inside], embeddings[rows], ok[inside], mine)
            cursor = stop
    while cursor < count:
        stop = min(count, cursor + STEP_ROWS)
        yield cursor, stop, None
        cursor = stop


class Step:
    """One span of inputs: each one's embedding (copied, computed, or repeated) or failure."""

    def __init__(
        self,
        inputs: list[Input],
        work: reuse.Work,
        start: int,
        stop: int,
        computed: Batch | None,
    ) -> None:
        self.inputs, self.work, self.start, self.stop = inputs, work, start, stop
        self.computed = computed

    def assemble(
        self, copied: dict[int, np.ndarray], held: dict[int, np.ndarray | str]
    ) -> tuple[np.ndarray, dict[int, str]]:
        """(embeddings, one row per input of the span; failures: position -> reason), from the
        rows `copied` (position - start -> row: efx.run.copies), the engine's batch, and the
        rows `held` for later repeats of the same bytes."""
        work, start, stop = self.work, self.start, self.stop
        kind = work.kind[start:stop]
        blocks = dict(copied)  # position - start -> embedding
        reasons: dict[int, str] = {}
        if self.computed is not None:
            positions, embeddings, ok, failed = self.computed
            for i, row in zip(positions[ok] - start, embeddings, strict=True):
                blocks[int(i)] = row
            reasons.update(failed)
        for i in np.flatnonzero(kind == reuse.SAME_AS):
            original = int(work.index[start + i])
            first: np.ndarray | str | None = held.get(original)
            if start <= original < stop:  # embedded earlier in this very span
                first = reasons.get(original, blocks.get(original - start))
            assert first is not None
            if isinstance(first, str):
                reasons[start + int(i)] = first
            else:
                blocks[int(i)] = first
        for known in np.flatnonzero((kind == reuse.FAILED) | (kind == reuse.REFUSED)):
            reasons[start + int(known)] = work.reasons[start + int(known)]
        dim = next(iter(blocks.values())).shape[-1] if blocks else 0
        embeddings = np.zeros((stop - start, dim), np.float32)
        for slot, row in blocks.items():
            embeddings[slot] = row
        return embeddings, reasons

    def ok(self, reasons: dict[int, str]) -> np.ndarray:
        ok = np.ones(self.stop - self.start, bool)
        ok[[p - self.start for p in reasons]] = False
        return ok

    def columns(self, positions: np.ndarray, copies: Copies) -> dict[str, list[Any]]:
        """The columns beyond the embedding and facts that Parquet outputs store: each row's
        shard and dataset key, from its input; for rows an unchanged shard keeps unread, from
        the earlier output's rows."""
        pairs = [sources_.dataset_key(self.inputs[p]) for p in positions]
        found: dict[str, list[Any]] = {"shard": [s for s, _ in pairs], "key": [k for _, k in pairs]}
        kept = [self.inputs[p].columns or {} for p in positions]
        for name in {name for values in kept for name in values}:
            found[name] = [values.get(name) for values in kept]
        unread = {
            int(p): i
            for i, p in enumerate(positions)
            if self.inputs[p].member is None and self.inputs[p].key != self.inputs[p].path
            and self.work.kind[p] == reuse.COPY
        }  # fmt: skip
        for position, values in copies.columns(list(unread)).items():
            for name, value in values.items():
                found.setdefault(name, [None] * len(positions))[unread[position]] = value
        return found

    def facts(self, positions: np.ndarray) -> list[Facts]:
        """Each row's file facts. A file the model read that changed since it was hashed is
        stored without its hash, so that the next update embeds it again."""
        found = []
        for position in positions:
            planned = self.work.facts[position]
            if (
                self.work.kind[position] == reuse.EMBED
                and facts_.stat(self.inputs[position].path)[:2] != planned[:2]
            ):
                planned = planned._replace(sha256="")
            found.append(planned)
        return found


class _NoBar:
    disable = True

    def update(self, count: int) -> None:
        pass


class _SyncClock:
    """Says when the rows written since the last sync are worth an fsync."""

    def __init__(self) -> None:
        self._rows = 0
        self._last = time.monotonic()

    def due(self, rows: int) -> bool:
        self._rows += rows
        if self._rows >= SYNC_ROWS or time.monotonic() - self._last >= SYNC_SECONDS:
            self._rows, self._last = 0, time.monotonic()
            return True
        return False


def abort(writer: writers.Writer) -> None:
    """Leave the output marked incomplete; a second failure here must not hide the first."""
    with contextlib.suppress(Exception):
        writer.abort()


def progress_bar(total: int, enabled: bool) -> Any:
    """Counts the images the model embeds (the work that takes time), nothing else."""
    from tqdm import tqdm

    return tqdm(
        total=total,
        unit="img",
        disable=not enabled,
        file=sys.stderr,
        dynamic_ncols=True,
        desc="efx",
        smoothing=0.1,
    )
