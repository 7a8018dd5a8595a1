"""What the embeddings say: the rows nearest a query (`similar`) and groups of near-duplicate
images (`duplicates`), by cosine similarity, exact, from an output of either format.

No N x N matrix is ever held: `similar` streams the rows in blocks against the queries;
`duplicates` holds the (unit-length) embeddings once and compares them block by block with
every later row, keeping only the pairs above the threshold. Reads only numpy and the writers;
a query image that is not in the output is embedded through `efx.extract` itself.
"""

from __future__ import annotations

import json
import os
import sys
from array import array
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import numpy as np

from . import index, remote, sources, writers
from .config import DUPLICATE_METHODS, INDEX_FROM_ROWS
from .errors import EfxError
from .index import unit_rows
from .recorded import Recorded
from .writers import bucket

BLOCK_ROWS = 1024  # rows compared at a time: a block of similarities is BLOCK_ROWS x N floats
# Measured on REAL features (EfficientNet-Lite0, ImageNet weights; scripts/search_quality.py,
# README): 302 real photos, 61 with fifteen kinds of copies. At 0.85 no two different photos
# were grouped (the most similar of 732,616 such pairs: 0.805) and 84% of copy pairs were (0.90
# found 67%: it missed most thumbnails, gray, bordered and screenshot copies). 0.98, chosen
# earlier on random weights, found 12% of six easier kinds.
DEFAULT_THRESHOLD = 0.85
MAX_PAIRS = 5_000_000  # pairs above the threshold before a run is refused as meaningless


def similar(
    output: str,
    queries: Iterable[str],
    k: int = 10,
    *,
    verbose: bool = False,
    storage_options: dict[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """For each query, the `k` rows of `output` nearest to it by cosine similarity.

    A query is a path already in `output` (its row is used, and left out of its own hits) or
    any image file, embedded with the model and settings `output` records. Returns one dict per
    query: {"query", "in_output", "error" (None, or why it has no hits), "hits": [{"rank",
    "path", "similarity", "exists"}]}. `storage_options`: for an output or queries by URL, as
    efx.extract takes them.
    """
    with remote.using(storage_options):
        return _similar(output, list(queries), k, verbose)


def _similar(output: str, queries: list[str], k: int, verbose: bool) -> list[dict[str, Any]]:
    if not queries:
        raise EfxError("name at least one QUERY: a path in OUTPUT or an image file")
    _check_k(k)
    output = bucket.reading(output)
    paths = writers.read_state(output).paths
    failed = {f["path"]: f["error"] for f in writers.read_failures(output)}
    rows = _rows_of(queries, paths)
    outside = [q for q in queries if rows[q] is None and q not in failed and sources.is_file(q)]
    vectors, errors = _query_vectors(output, queries, rows, outside, verbose)
    asked = list(dict.fromkeys(q for q in queries if q in vectors))  # once each
    found = []
    if asked:
        matrix = np.stack([vectors[q] for q in asked])
        found = _nearest(output, matrix, [rows[q] for q in asked], k)
    results = []
    for query in queries:
        result: dict[str, Any] = {"query": query, "in_output": rows[query] is not None}
        if query in vectors:
            hits = found[asked.index(query)]
            result["error"] = None
            result["hits"] = [
                {"rank": rank, "path": paths[row], "similarity": round(float(sim), 6),
                 "exists": sources.exists(paths[row])}
                for rank, (row, sim) in enumerate(hits, start=1)
            ]  # fmt: skip
        else:
            result["error"] = errors.get(query) or _why_no_vector(query, failed)
            result["hits"] = []
        results.append(result)
    return results


def duplicates(
    output: str,
    threshold: float | None = None,
    *,
    progress: bool = False,
    storage_options: dict[str, Any] | None = None,
    method: str = "auto",
    pairs: str | None = None,
    on_note: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Groups of near-duplicate rows: every pair at cosine similarity >= `threshold` links two
    rows, and linked rows form a group (single linkage). Largest groups first; each member with
    its similarity to the group's first member, and each group with the lowest similarity
    between two of its members (`lowest_similarity`: single linkage chains, so it can be far
    below the threshold). `progress` shows a bar on stderr.

    `method`: "exact" compares every pair; "index" finds the pairs through the index beside
    OUTPUT (efx.index: built first if there is none or it is out of date, said through
    `on_note`), and re-scores each exactly, so that only recall is approximate; "auto" (the
    default) uses the index from INDEX_FROM_ROWS rows on, or wherever a current one exists.
    `pairs`: a file (.jsonl or .parquet) to stream every pair to, {"a", "b", "similarity"}.

    Returns {"threshold", "rows", "method", "pairs", "groups": [{"size",
    "lowest_similarity", "members": [{"path", "similarity", "exists"}]}]}. `storage_options`:
    for an output by URL, as efx.extract takes them.
    """
    with remote.using(storage_options):
        return _duplicates(output, threshold, progress, method, pairs, on_note)


def _duplicates(
    output: str,
    threshold: float | None,
    progress: bool,
    method: str,
    pairs_path: str | None,
    on_note: Callable[[str], None] | None,
) -> dict[str, Any]:
    threshold = DEFAULT_THRESHOLD if threshold is None else threshold
    if not isinstance(threshold, (int, float)) or not 0.0 < threshold <= 1.0:
        raise EfxError(f"--threshold must be in (0, 1]. Received: {threshold!r}")
    if method not in DUPLICATE_METHODS:
        raise EfxError(
            f"the method must be one of {', '.join(DUPLICATE_METHODS)}. Received: {method!r}"
        )
    output = bucket.reading(output)
    sink = _PairSink(pairs_path) if pairs_path else None
    try:
        if _uses_index(output, method):
            found, count, reader = _pairs_through_index(output, float(threshold), progress, on_note)
            paths, method = writers.read_state(output).paths, "index"
        else:
            paths, units = _all_units(output)
            found, count = _pairs_above(units, float(threshold), progress), len(units)
            reader, method = _InMemory(units), "exact"
        groups, pairs = _groups(found, float(threshold), count, paths, reader, sink)
    except BaseException:
        if sink is not None:
            sink.close(whole=False)
        raise
    if sink is not None:
        sink.close(whole=True)
    return {"threshold": float(threshold), "rows": count, "method": method, "pairs": pairs,
            "groups": groups}  # fmt: skip


LOWEST_OF = 2000  # members compared pairwise for a group's lowest similarity (spread if more)


def _uses_index(output: str, method: str) -> bool:
    if method != "auto":
        return method == "index"
    info = writers.describe(output)
    if not info.get("complete"):  # rows still coming: an index would be out of date at once
        return False
    rows = int(info.get("count", 0))
    return rows >= INDEX_FROM_ROWS or os.path.isdir(index.folder_of(output))


def _pairs_through_index(
    output: str, threshold: float, progress: bool, on_note: Callable[[str], None] | None
) -> tuple[Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]], int, Any]:
    found, why = index.open_index(output)
    if found is None:
        if on_note is not None:
            on_note(
                f"building the index of {output} in {index.folder_of(output)} ({why}): once, "
                "then efx duplicates uses it while OUTPUT is unchanged"
            )
        found = index.build(output, progress)
    reader = writers.open_rows(output)
    return index.pairs_above(found, output, threshold), len(found.projected), reader


class _InMemory:
    """The unit rows, already in memory, as a writers.RowReader."""

    def __init__(self, units: np.ndarray) -> None:
        self._units = units

    def take(self, indices: np.ndarray) -> np.ndarray:
        return self._units[np.asarray(indices, np.int64)]

    def close(self) -> None:
        return None


class _PairSink:
    """Pairs streamed to a file as they are found: JSON Lines, or Parquet (a row group per
    batch of pairs), never all held."""

    def __init__(self, path: str) -> None:
        if not path.endswith((".jsonl", ".parquet")):
            raise EfxError(f"--pairs must name a .jsonl or .parquet file. Received: {path}")
        if os.path.isdir(path):
            raise EfxError(f"--pairs {path} is a folder")
        self._path = path
        self._scratch = path + ".partial"
        self._parquet: Any = None
        self._text = None
        if path.endswith(".parquet"):
            import pyarrow as pa
            import pyarrow.parquet as pq

            schema = pa.schema(
                [("a", pa.string()), ("b", pa.string()), ("similarity", pa.float32())]
            )
            self._parquet = pq.ParquetWriter(self._scratch, schema)
        else:
            self._text = open(self._scratch, "w", encoding="utf-8")  # noqa: SIM115

    def write(self, paths: list[str], a: np.ndarray, b: np.ndarray, sims: np.ndarray) -> None:
        if not len(a):
            return
        if self._parquet is not None:
            import pyarrow as pa

            columns = [[paths[i] for i in a.tolist()], [paths[j] for j in b.tolist()], sims]
            self._parquet.write_table(pa.table(columns, schema=self._parquet.schema))
        elif self._text is not None:
            for i, j, sim in zip(a.tolist(), b.tolist(), sims.tolist(), strict=True):
                record = {"a": paths[i], "b": paths[j], "similarity": round(sim, 6)}
                self._text.write(json.dumps(record, ensure_ascii=False) + "\n")

    def close(self, whole: bool) -> None:
        """The file appears, under its name, only once every pair is in it (`whole`); else
        what was written is removed."""
        if self._parquet is not None:
            self._parquet.close()
        if self._text is not None:
            self._text.close()
        if whole:
            os.replace(self._scratch, self._path)
        elif os.path.exists(self._scratch):
            os.remove(self._scratch)


def _groups(
    found: Iterable[tuple[np.ndarray, np.ndarray, np.ndarray]],
    threshold: float,
    count: int,
    paths: list[str],
    reader: Any,
    sink: _PairSink | None,
) -> tuple[list[dict[str, Any]], int]:
    """Groups (single linkage) of the pairs found, largest first, and how many pairs."""
    parent = array("q", range(count))
    linked = np.zeros(count, bool)
    pairs = 0
    try:
        for a, b, sims in found:
            pairs += len(a)
            if pairs > MAX_PAIRS:
                raise EfxError(
                    f"more than {MAX_PAIRS:,} pairs are at similarity {threshold} or above: "
                    "that is not near-duplicates; raise --threshold"
                )
            if sink is not None:
                sink.write(paths, a, b, sims)
            linked[a] = linked[b] = True
            for first, second in zip(a.tolist(), b.tolist(), strict=True):
                _union(parent, first, second)
        members: dict[int, list[int]] = {}
        for row in np.flatnonzero(linked).tolist():  # in row order: each group's root first
            members.setdefault(_find(parent, row), []).append(row)
        groups = [_group(rows, paths, reader) for rows in members.values()]
    finally:
        reader.close()
    groups.sort(key=lambda group: (-group["size"], group["members"][0]["path"]))
    return groups, pairs


def _group(rows: list[int], paths: list[str], reader: Any) -> dict[str, Any]:
    vectors = unit_rows(reader.take(np.asarray(rows, np.int64)))
    sims = vectors @ vectors[0]
    spread = vectors[np.linspace(0, len(rows) - 1, min(len(rows), LOWEST_OF)).astype(np.int64)]
    return {
        "size": len(rows),
        "lowest_similarity": round(float((spread @ spread.T).min()), 6),
        "members": [
            {
                "path": paths[row],
                "similarity": round(float(sim), 6),
                "exists": sources.exists(paths[row]),
            }
            for row, sim in zip(rows, sims, strict=True)
        ],  # fmt: skip
    }


def _check_k(k: int) -> None:
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise EfxError(f"-k must be a positive integer. Received: {k!r}")


def _rows_of(queries: list[str], paths: list[str]) -> dict[str, int | None]:
    """Each query's row in the output: the same path as stored, or the same file by its
    absolute path (outputs store paths as found, relative to where extract ran)."""
    exact = {path: row for row, path in enumerate(paths)}
    absolute: dict[str, int] | None = None
    found: dict[str, int | None] = {}
    for query in queries:
        row = exact.get(query)
        if row is None:
            if absolute is None:
                absolute = {os.path.abspath(p): r for r, p in enumerate(paths)}
            row = absolute.get(os.path.abspath(query))
        found[query] = row
    return found


def _why_no_vector(query: str, failed: dict[str, str]) -> str:
    if query in failed:
        return f"it could not be embedded when OUTPUT was made: {failed[query]}"
    if not (os.path.exists(query) or sources.is_file(query)):
        return "not in OUTPUT, and no such file"
    return "not in OUTPUT, and not an image file"


def _query_vectors(
    output: str, queries: list[str], rows: dict[str, int | None], outside: list[str], verbose: bool
) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Unit vectors of the queries that have one: rows of the output, and image files embedded
    now with the model the output records; and why a query file could not be embedded."""
    inside = {q: row for q in queries if (row := rows[q]) is not None}
    picked = writers.rows(output, list(inside.values()))  # only those rows are read
    vectors = {q: _unit(vector) for q, vector in zip(inside, picked, strict=True)}
    if not outside:
        return vectors, {}
    embedded, errors = _embed_files(output, outside, verbose)
    return {**vectors, **embedded}, errors


def _embed_files(
    output: str, files: list[str], verbose: bool
) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Embed image files as `output` was made: its model, input size, resize and EXIF settings
    (efx.recorded), through efx.extract's stages into memory (efx.run.in_memory)."""
    from .config import Settings
    from .run.in_memory import embed_in_memory

    options = Recorded.of(writers.describe(output)).embedding_settings(output)
    try:
        embedded = embed_in_memory(files, Settings(**options), verbose)
    except EfxError as error:
        raise EfxError(
            f"cannot embed the query image(s) with the model {output} was made with "
            f"({options['model']}): {error}"
        ) from None
    paths, embeddings = embedded.paths, embedded.embeddings()
    vectors = {p: _unit(e) for p, e in zip(paths, embeddings, strict=True)}
    return vectors, {path: f"cannot be embedded: {why}" for path, why in embedded.failures}


def _nearest(
    output: str, queries: np.ndarray, own: list[int | None], k: int
) -> list[list[tuple[int, float]]]:
    """The k best (row, similarity) of every query, streaming the rows block by block."""
    rows = np.zeros((len(own), 0), np.int64)
    values = np.zeros((len(own), 0), np.float32)
    start = 0
    for _paths, block in writers.iter_rows(output, BLOCK_ROWS):
        sims = queries @ unit_rows(block).T  # (queries, block)
        for q, row in enumerate(own):
            if row is not None and start <= row < start + len(block):
                sims[q, row - start] = -np.inf  # a query is not its own hit
        block_rows = np.broadcast_to(np.arange(start, start + len(block)), sims.shape)
        rows, values = np.hstack([rows, block_rows]), np.hstack([values, sims])
        keep = np.argsort(-values, axis=1, kind="stable")[:, :k]
        rows, values = np.take_along_axis(rows, keep, 1), np.take_along_axis(values, keep, 1)
        start += len(block)
    return [
        [(int(r), float(s)) for r, s in zip(row, value, strict=True) if np.isfinite(s)]
        for row, value in zip(rows, values, strict=True)
    ]


def _all_units(output: str) -> tuple[list[str], np.ndarray]:
    """Every row as a unit vector, in one float32 matrix, read block by block."""
    info = writers.describe(output)
    count, dim = int(info.get("count", 0)), int(info.get("feature_dim") or 0)
    _check_memory(count, dim)
    units = np.empty((count, dim), np.float32)
    paths: list[str] = []
    for block_paths, block in writers.iter_rows(output, BLOCK_ROWS):
        units[len(paths) : len(paths) + len(block)] = unit_rows(block)
        paths += block_paths
    return paths, units[: len(paths)]


def _check_memory(count: int, dim: int) -> None:
    """Refuse, before reading, an output whose embeddings and one block of similarities would
    not fit in this machine's memory (rather than fail half-way with MemoryError)."""
    needed = 4 * count * (dim + BLOCK_ROWS)
    try:
        physical = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return
    if needed > 0.8 * physical:
        raise EfxError(
            f"efx duplicates --method exact holds the embeddings in memory: {count:,} rows x "
            f"{dim} floats and a block of similarities need {needed / 2**30:.1f} GiB, more than "
            f"this machine's {physical / 2**30:.1f} GiB allows; use the index (--method index, "
            "which reads a block at a time), or a machine with more memory"
        )


def _pairs_above(
    units: np.ndarray, threshold: float, progress: bool = False
) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """(rows a, rows b, similarities) of every pair (a < b) at `threshold` or above: each
    block of rows against itself and every later row, so each pair is computed once and only a
    block of similarities is held."""
    from tqdm import tqdm

    count = len(units)
    bar = tqdm(total=count * (count + 1) // 2, disable=not progress, unit="pair", unit_scale=True,
               desc="efx duplicates", file=sys.stderr, dynamic_ncols=True)  # fmt: skip
    for start in range(0, len(units), BLOCK_ROWS):
        stop = min(start + BLOCK_ROWS, len(units))
        sims = units[start:stop] @ units[start:].T
        first, second = np.nonzero(sims >= threshold)
        later = second > first  # the block against itself: each pair once, no self-pairs
        first, second = first[later], second[later]
        yield first + start, second + start, sims[first, second]
        rows = stop - start  # this block's pairs: with every later row, and among themselves
        bar.update(rows * (count - stop) + rows * (rows + 1) // 2)
    bar.close()


def _find(parent: array, row: int) -> int:  # type: ignore[type-arg]
    while parent[row] != row:
        parent[row] = parent[parent[row]]
        row = parent[row]
    return row


def _union(parent: array, first: int, second: int) -> None:  # type: ignore[type-arg]
    a, b = _find(parent, first), _find(parent, second)
    if a != b:
        parent[max(a, b)] = min(a, b)  # the group's root is its first row


def _unit(vector: np.ndarray) -> np.ndarray:
    return unit_rows(vector[None])[0]
