"""What the embeddings say: the rows nearest a query (`similar`) and groups of near-duplicate
images (`duplicates`), by cosine similarity, exact, from an output of either format.

No N x N matrix is ever held: `similar` streams the rows in blocks against the queries;
`duplicates` holds the (unit-length) embeddings once and compares them block by block with
every later row, keeping only the pairs above the threshold. Reads only numpy and the writers;
a query image that is not in the output is embedded through `efx.extract` itself.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np

from . import remote, sources, writers
from .errors import EfxError
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
) -> dict[str, Any]:
    """Groups of near-duplicate rows: every pair at cosine similarity >= `threshold` links two
    rows, and linked rows form a group (single linkage). Largest groups first; each member with
    its similarity to the group's first member; `progress` shows a bar on stderr. Returns
    {"threshold", "rows", "groups": [{"size", "members": [{"path", "similarity", "exists"}]}]}.
    `storage_options`: for an output by URL, as efx.extract takes them.
    """
    with remote.using(storage_options):
        return _duplicates(output, threshold, progress)


def _duplicates(output: str, threshold: float | None, progress: bool) -> dict[str, Any]:
    threshold = DEFAULT_THRESHOLD if threshold is None else threshold
    if not isinstance(threshold, (int, float)) or not 0.0 < threshold <= 1.0:
        raise EfxError(f"--threshold must be in (0, 1]. Received: {threshold!r}")
    paths, units = _all_units(bucket.reading(output))
    parent = list(range(len(paths)))
    for first, second in _pairs_above(units, float(threshold), progress):
        _union(parent, first, second)
    members: dict[int, list[int]] = {}
    for row in range(len(paths)):
        root = _find(parent, row)
        members.setdefault(root, []).append(row)
    groups: list[dict[str, Any]] = []
    for rows in members.values():
        if len(rows) < 2:
            continue
        sims = units[rows] @ units[rows[0]]
        groups.append(
            {
                "size": len(rows),
                "members": [
                    {
                        "path": paths[row],
                        "similarity": round(float(sim), 6),
                        "exists": sources.exists(paths[row]),
                    }
                    for row, sim in zip(rows, sims, strict=True)
                ],  # fmt: skip
            }
        )
    groups.sort(key=lambda group: (-group["size"], group["members"][0]["path"]))
    return {"threshold": float(threshold), "rows": len(paths), "groups": groups}


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
        sims = queries @ _units(block).T  # (queries, block)
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
        units[len(paths) : len(paths) + len(block)] = _units(block)
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
            f"efx duplicates holds the embeddings in memory: {count:,} rows x {dim} floats and "
            f"a block of similarities need {needed / 2**30:.1f} GiB, more than this machine's "
            f"{physical / 2**30:.1f} GiB allows; run it on a machine with more memory, or on "
            "the --shard parts of the output one by one"
        )


def _pairs_above(
    units: np.ndarray, threshold: float, progress: bool = False
) -> Iterator[tuple[int, int]]:
    """Every pair (i < j) with similarity >= threshold: each block of rows against itself and
    every later row, so each pair is computed once and only a block of similarities is held."""
    from tqdm import tqdm

    count = len(units)
    bar = tqdm(total=count * (count + 1) // 2, disable=not progress, unit="pair", unit_scale=True,
               desc="efx duplicates", file=sys.stderr, dynamic_ncols=True)  # fmt: skip
    total = 0
    for start in range(0, len(units), BLOCK_ROWS):
        stop = min(start + BLOCK_ROWS, len(units))
        sims = units[start:stop] @ units[start:].T
        first, second = np.nonzero(sims >= threshold)
        later = second > first  # the block against itself: each pair once, no self-pairs
        total += int(later.sum())
        if total > MAX_PAIRS:
            raise EfxError(
                f"more than {MAX_PAIRS:,} pairs are at similarity {threshold} or above: that "
                "is not near-duplicates; raise --threshold"
            )
        yield from zip(
            (first[later] + start).tolist(), (second[later] + start).tolist(), strict=True
        )
        rows = stop - start  # this block's pairs: with every later row, and among themselves
        bar.update(rows * (count - stop) + rows * (rows + 1) // 2)
    bar.close()


def _find(parent: list[int], row: int) -> int:
    while parent[row] != row:
        parent[row] = parent[parent[row]]
        row = parent[row]
    return row


def _union(parent: list[int], first: int, second: int) -> None:
    a, b = _find(parent, first), _find(parent, second)
    if a != b:
        parent[max(a, b)] = min(a, b)  # the group's root is its first row


def _unit(vector: np.ndarray) -> np.ndarray:
    return _units(vector[None])[0]


def _units(block: np.ndarray) -> np.ndarray:
    block = np.asarray(block, np.float32)
    norms = np.linalg.norm(block, axis=1, keepdims=True)
    return block / np.maximum(norms, 1e-12)
