"""An approximate index of an output's embeddings, kept beside it, so that `efx duplicates`
finds near-duplicate pairs among millions of rows without comparing every pair.

What efx reports from it is exact; only recall is approximate. For unit rows u and v and an
orthonormal basis B (DIMS directions), u = p(u) + r(u) with p(u) in B's span and r(u) at right
angles to it, so u.v = p(u).p(v) + r(u).r(v) <= p(u).p(v) + |r(u)| |r(v)|. A pair whose bound
is below the threshold cannot reach it: it is skipped, losing nothing; every other pair is
re-scored with the full rows. Recall is lost only to the buckets: each row is in the
`ROW_BUCKETS` buckets whose centres are nearest it, and only rows that share a bucket are
compared.

The index, a folder beside OUTPUT named OUTPUT + ".efx-index":

    meta.json       what it indexes (`identity` of the output) and how it was built
    basis.npy       D x DIMS float32: the main directions of the unit rows (uncentred PCA)
    centroids.npy   K x DIMS float32, unit length: the bucket centres (spherical k-means)
    projected.npy   N x DIMS float16: each unit row's coordinates in the basis, p(u)
    residual.npy    N float32: |r(u)|, the length of each unit row outside the basis
    buckets.npy     N x ROW_BUCKETS int32: each row's nearest buckets (-1: none, where there
                    are fewer buckets than that)

It is built in a scratch folder beside it and renamed into place whole, so that a kill during a
build leaves the old index or none. It records the output's identity (model, rows, dates of
creation and update, and a digest of rows spread over the output): an index of another output,
or of this one before it changed, is never used.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from . import files, writers
from .errors import EfxError

VERSION = 1
SUFFIX = ".efx-index"
DIMS = 256  # directions kept of each row
ROW_BUCKETS = 2  # buckets each row is placed in
BUCKET_ROWS = 1000  # rows per bucket on average, before each row is placed in ROW_BUCKETS
SAMPLE_PER_BUCKET = 40  # sample rows per bucket centre for k-means (at most MAX_SAMPLE)
MIN_SAMPLE, MAX_SAMPLE = 20_000, 200_000
KMEANS_ROUNDS = 8
BLOCK_ROWS = 2048  # rows projected, or compared with a bucket, at a time
PROBE_ROWS = 64  # rows whose vectors identify the output
# float16 coordinates: each product is off by at most about 2^-11 of the rows' lengths (1).
ROUNDING = 2e-3
RESCORE_PAIRS = 20_000  # pairs re-scored at a time (twice this many full rows gathered)
DENSE = 8  # candidates per row of a block from which its whole product is cheaper


def folder_of(output: str) -> str:
    """Where OUTPUT's index is kept: beside it, OUTPUT + ".efx-index"."""
    return os.path.abspath(output).rstrip(os.sep) + SUFFIX


def identity(output: str) -> dict[str, Any]:
    """What makes an index OUTPUT's and current: format, model, feature size, rows, the dates
    the output records, the size and modification time of each of its files (any write
    changes them: a copy made without keeping the times counts as another output), and a
    SHA-256 of PROBE_ROWS rows spread over it (their vectors)."""
    info = writers.describe(output)
    count = int(info.get("count", 0))
    probe = np.unique(np.linspace(0, max(count - 1, 0), min(PROBE_ROWS, count)).astype(np.int64))
    digest = hashlib.sha256(probe.tobytes())
    if count:
        digest.update(np.ascontiguousarray(writers.rows(output, probe.tolist()), "<f4").tobytes())
    return {
        "format": info["format"],
        "complete": bool(info.get("complete")),
        "model": info.get("model"),
        "feature_dim": int(info.get("feature_dim") or 0),
        "count": count,
        "created": info.get("created"),
        "updated": info.get("updated"),
        "rows_sha256": digest.hexdigest(),
        "files_sha256": _files_digest(output),
    }


def _files_digest(output: str) -> str:
    """SHA-256 of the (path, size, modification time) of OUTPUT's files."""
    found = []
    if os.path.isdir(output):
        for root, _dirs, names in os.walk(output):
            for name in names:
                path = os.path.join(root, name)
                found.append((os.path.relpath(path, output), os.stat(path)))
    else:
        found.append(("", os.stat(output)))
    digest = hashlib.sha256()
    for name, stat in sorted(found, key=lambda item: item[0]):
        digest.update(
            f"{name}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode("utf-8", "surrogateescape")
        )
    return digest.hexdigest()


@dataclass(frozen=True)
class Index:
    """An output's index, as `open_index` reads it (the row arrays memory-mapped)."""

    folder: str
    meta: dict[str, Any]
    basis: np.ndarray  # D x DIMS
    centroids: np.ndarray  # K x DIMS
    projected: np.ndarray  # N x DIMS float16
    residual: np.ndarray  # N
    buckets: np.ndarray  # N x ROW_BUCKETS

    def members(self) -> Iterator[tuple[int, np.ndarray]]:
        """(bucket, its rows in increasing order) of every bucket holding two rows or more."""
        slots = self.buckets.ravel()
        order = np.argsort(slots, kind="stable")
        rows, sorted_slots = order // self.buckets.shape[1], slots[order]
        bounds = np.searchsorted(sorted_slots, np.arange(len(self.centroids) + 1))
        for bucket in range(len(self.centroids)):
            start, stop = bounds[bucket], bounds[bucket + 1]
            if stop - start >= 2:
                yield bucket, rows[start:stop]


def open_index(output: str) -> tuple[Index | None, str]:
    """OUTPUT's index if there is one and it is current, else (None, why not)."""
    folder = folder_of(output)
    if not os.path.isdir(folder):
        return None, "there is none"
    try:
        with open(os.path.join(folder, "meta.json"), encoding="utf-8") as file:
            meta = json.load(file)
    except (OSError, ValueError):
        return None, f"{folder} is not readable as an efx index"
    if meta.get("version") != VERSION:
        return None, f"it was built by another version of efx ({meta.get('version')})"
    if meta.get("identity") != identity(output):
        return None, "OUTPUT changed since it was built (or it indexes another output)"

    try:
        arrays = [np.load(os.path.join(folder, name), mmap_mode="r") for name in ARRAYS]
    except (OSError, ValueError) as error:
        return None, f"{folder} is damaged ({error})"
    count = meta["identity"]["count"]
    if any(len(array) != count for array in arrays[2:]):
        return None, f"{folder} is damaged (it does not hold one entry per row)"
    return Index(folder, meta, *arrays), ""


# The index's arrays, in the order of Index's fields.
ARRAYS = ("basis.npy", "centroids.npy", "projected.npy", "residual.npy", "buckets.npy")


def build(output: str, progress: bool = False, seed: int = 0) -> Index:
    """Build OUTPUT's index beside it (replacing any), reading the rows twice: a sample (for
    the basis and the bucket centres), then every row in order, a block at a time."""
    ident = identity(output)
    count, dim = ident["count"], ident["feature_dim"]
    if not ident["complete"]:
        raise EfxError(
            f"{output} is not complete (a run is writing it, or was stopped): finish it with "
            "efx extract --resume, then index it"
        )
    if count == 0:
        raise EfxError(f"{output} holds no rows to index")
    target = folder_of(output)
    parent, name = os.path.dirname(target), os.path.basename(target)
    _remove_leftovers(parent, name)
    rng = np.random.default_rng(seed)
    buckets = max(1, min(math.ceil(count / BUCKET_ROWS), count))
    size = min(count, max(MIN_SAMPLE, min(MAX_SAMPLE, SAMPLE_PER_BUCKET * buckets)))
    with _bar(count + size, progress, "efx index") as bar:
        sample = _sample(output, np.sort(rng.choice(count, size, replace=False)), bar)
        dims = min(DIMS, dim)
        basis = _basis(sample, dims)
        centroids = _kmeans(unit_rows(sample @ basis), min(buckets, size), rng)
        del sample
        with files.scratch_folder(parent, name + ".partial-") as scratch:
            _project_all(output, scratch, basis, centroids, count, bar)
            _save(scratch, "basis.npy", basis)
            _save(scratch, "centroids.npy", centroids)
            meta = {
                "version": VERSION, "identity": ident, "dims": dims, "buckets": len(centroids),
                "row_buckets": ROW_BUCKETS, "sample_rows": size, "seed": seed,
                "indexed_rows": count,
            }  # fmt: skip
            files.write_atomically(
                os.path.join(scratch, "meta.json"), json.dumps(meta, indent=2).encode()
            )
            files.swap_in(scratch, target)
    index, why = open_index(output)
    if index is None:  # OUTPUT changed while it was read
        raise EfxError(f"{output} changed while it was indexed ({why}); run it again")
    return index


def pairs_above(
    index: Index, output: str, threshold: float
) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """(rows a, rows b, exact similarities), a < b, of the pairs at `threshold` or above that
    the index finds, a block of a bucket at a time: each pair from the lowest bucket its two
    rows share, looked at only if its bound reaches the threshold, then re-scored with OUTPUT's
    full rows (those of the block's candidates; or, where candidates are many, the block's
    whole product with the bucket's full rows, read once)."""
    floor = threshold - ROUNDING
    reader = writers.open_rows(output)
    try:
        for bucket, rows in index.members():
            vectors = np.asarray(index.projected[rows], np.float32)
            lengths = np.asarray(index.residual[rows], np.float32)
            full: np.ndarray | None = None  # the bucket's full unit rows, once needed
            for start in range(0, len(rows), BLOCK_ROWS):
                stop = min(start + BLOCK_ROWS, len(rows))
                bound = vectors[start:stop] @ vectors[start:].T
                bound += np.outer(lengths[start:stop], lengths[start:])
                first, second = np.nonzero(bound >= floor)
                del bound
                later = second > first  # positions: start + first < start + second
                first, second = first[later], second[later] + start
                first += start
                shared = _first_shared(index.buckets[rows[first]], index.buckets[rows[second]])
                first, second = first[shared == bucket], second[shared == bucket]
                if not len(first):
                    continue
                if len(first) > DENSE * (stop - start):
                    if full is None:
                        full = unit_rows(reader.take(rows))
                    product = full[start:stop] @ full[start:].T
                    sims = product[first - start, second - start]
                    del product
                else:
                    sims = _rescore(reader, rows[first], rows[second])
                keep = sims >= threshold
                yield rows[first[keep]], rows[second[keep]], sims[keep]
    finally:
        reader.close()


def _rescore(reader: writers.RowReader, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The exact similarities of pairs (a, b): their distinct rows read, RESCORE_PAIRS pairs'
    products at a time."""
    rows = np.unique(np.concatenate([a, b]))
    vectors = unit_rows(reader.take(rows))
    at_a, at_b = np.searchsorted(rows, a), np.searchsorted(rows, b)
    sims = np.empty(len(a), np.float32)
    for start in range(0, len(a), RESCORE_PAIRS):
        part = slice(start, start + RESCORE_PAIRS)
        sims[part] = np.einsum("ij,ij->i", vectors[at_a[part]], vectors[at_b[part]])
    return sims


def _first_shared(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """For rows' bucket lists (n x ROW_BUCKETS each), the lowest bucket both hold (or -1)."""
    shared = np.full(len(first), np.iinfo(np.int64).max, np.int64)
    for i in range(first.shape[1]):
        for j in range(second.shape[1]):
            same = (first[:, i] == second[:, j]) & (first[:, i] >= 0)  # -1: no bucket
            shared[same] = np.minimum(shared[same], first[same, i])
    shared[shared == np.iinfo(np.int64).max] = -1
    return shared


def describe(index: Index) -> dict[str, Any]:
    """What `efx index` reports of an index: its folder, rows, buckets (with their smallest,
    median and largest sizes), dimensions and size on disk in bytes."""
    slots = np.asarray(index.buckets).ravel()
    sizes = np.bincount(slots[slots >= 0], minlength=len(index.centroids))
    on_disk = sum(
        os.path.getsize(os.path.join(index.folder, name)) for name in os.listdir(index.folder)
    )
    return {
        "folder": index.folder,
        "rows": len(index.projected),
        "buckets": len(index.centroids),
        "bucket_rows": {"min": int(sizes.min()), "median": int(np.median(sizes)),
                        "max": int(sizes.max())},
        "row_buckets": int(index.buckets.shape[1]),
        "dims": int(index.basis.shape[1]),
        "bytes": on_disk,
    }  # fmt: skip


def _sample(output: str, rows: np.ndarray, bar: Any) -> np.ndarray:
    reader = writers.open_rows(output)
    try:
        parts = []
        for start in range(0, len(rows), BLOCK_ROWS):
            block = unit_rows(reader.take(rows[start : start + BLOCK_ROWS]))
            parts.append(block)
            bar.update(len(block))
        return np.concatenate(parts)
    finally:
        reader.close()


def _basis(sample: np.ndarray, dims: int) -> np.ndarray:
    """The `dims` directions that hold most of the sample's (unit rows') length: the top
    eigenvectors of its second-moment matrix, as columns (D x dims, orthonormal)."""
    moment = np.zeros((sample.shape[1], sample.shape[1]), np.float64)
    for start in range(0, len(sample), BLOCK_ROWS):
        block = sample[start : start + BLOCK_ROWS].astype(np.float64)
        moment += block.T @ block
    _, vectors = np.linalg.eigh(moment)  # eigenvalues in increasing order
    return np.ascontiguousarray(vectors[:, ::-1][:, :dims], np.float32)


def _kmeans(points: np.ndarray, count: int, rng: np.random.Generator) -> np.ndarray:
    """`count` unit bucket centres of the unit `points` (spherical k-means, KMEANS_ROUNDS
    rounds from `count` distinct points); a centre left without points takes a random one."""
    centres = points[rng.choice(len(points), count, replace=False)].copy()
    for _round in range(KMEANS_ROUNDS):
        nearest = _nearest(points, centres, 1)[:, 0]
        sums = np.zeros_like(centres)
        np.add.at(sums, nearest, points)
        empty = np.bincount(nearest, minlength=count) == 0
        sums[empty] = points[rng.choice(len(points), int(empty.sum()), replace=False)]
        centres = unit_rows(sums)
    return centres


def _nearest(points: np.ndarray, centres: np.ndarray, k: int) -> np.ndarray:
    """The `k` centres nearest each point (by dot product), nearest first."""
    found = np.empty((len(points), k), np.int32)
    for start in range(0, len(points), BLOCK_ROWS):
        sims = points[start : start + BLOCK_ROWS] @ centres.T
        if k < sims.shape[1]:
            top = np.argpartition(-sims, k - 1, axis=1)[:, :k]
        else:
            top = np.broadcast_to(np.arange(sims.shape[1]), (len(sims), sims.shape[1]))[:, :k]
        order = np.argsort(-np.take_along_axis(sims, top, 1), axis=1)
        found[start : start + len(sims)] = np.take_along_axis(top, order, 1)
    return found


def _project_all(
    output: str, scratch: str, basis: np.ndarray, centroids: np.ndarray, count: int, bar: Any
) -> None:
    """Every row's coordinates, residual length and buckets, in row order, into `scratch`."""
    dims, k = basis.shape[1], min(ROW_BUCKETS, len(centroids))
    projected = np.lib.format.open_memmap(
        os.path.join(scratch, "projected.npy"), "w+", np.float16, (count, dims)
    )
    residual = np.lib.format.open_memmap(
        os.path.join(scratch, "residual.npy"), "w+", np.float32, (count,)
    )
    buckets = np.lib.format.open_memmap(
        os.path.join(scratch, "buckets.npy"), "w+", np.int32, (count, ROW_BUCKETS)
    )
    done = 0
    for _paths, block in writers.iter_rows(output, BLOCK_ROWS):
        coords = unit_rows(block) @ basis
        stop = done + len(coords)
        if stop > count:
            raise EfxError(f"{output} changed while it was indexed (more rows); run it again")
        projected[done:stop] = coords
        residual[done:stop] = np.sqrt(np.clip(1.0 - np.einsum("ij,ij->i", coords, coords), 0, 1))
        near = _nearest(unit_rows(coords), centroids, k)
        buckets[done:stop] = np.pad(near, ((0, 0), (0, ROW_BUCKETS - k)), constant_values=-1)
        done = stop
        bar.update(len(coords))
    if done != count:
        raise EfxError(f"{output} changed while it was indexed (fewer rows); run it again")
    for array in (projected, residual, buckets):
        array.flush()
        descriptor = os.open(str(array.filename), os.O_RDONLY)
        try:
            os.fsync(descriptor)
        finally:
            os.close(descriptor)


def _save(folder: str, name: str, array: np.ndarray) -> None:
    path = os.path.join(folder, name)
    with open(path, "wb") as file:
        np.save(file, array)
        file.flush()
        os.fsync(file.fileno())


def _remove_leftovers(parent: str, name: str) -> None:
    """Scratch folders of builds that were killed (kill -9 leaves them)."""
    if not os.path.isdir(parent):
        return
    for entry in os.listdir(parent):
        if entry.startswith(name + ".partial-"):
            shutil.rmtree(os.path.join(parent, entry), ignore_errors=True)


def unit_rows(block: np.ndarray) -> np.ndarray:
    """The rows of `block` (n x D) scaled to length 1, as float32 (a row of zeros stays zeros):
    cosine similarity is then a dot product."""
    block = np.asarray(block, np.float32)
    norms = np.linalg.norm(block, axis=1, keepdims=True)
    return block / np.maximum(norms, 1e-12)


def _bar(total: int, enabled: bool, desc: str) -> Any:
    from tqdm import tqdm

    return tqdm(total=total, disable=not enabled, unit="row", unit_scale=True, desc=desc,
                file=sys.stderr, dynamic_ncols=True)  # fmt: skip
