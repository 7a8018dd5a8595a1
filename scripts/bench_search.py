"""Speed and memory of `efx duplicates` and `efx similar` on large outputs.

Writes synthetic efx outputs (HDF5, through efx's own writer) of N rows of 2304-dim embeddings,
a tenth of them near-duplicates of an earlier row, then times each command in a fresh process
and reads its peak memory (RSS) from the kernel. Both commands are exact (every pair is
compared), so their recall against exact search is 1 by construction.

    python scripts/bench_search.py [--rows 10000,100000] [--dim 2304]
    python scripts/bench_search.py --compare-faiss 20000   # needs `pip install faiss-cpu`

--compare-faiss N measures, in one process on N synthetic rows, the exact search efx uses
(blocked matrix products, OpenBLAS) against faiss-cpu's IVF range search and HNSW k-NN, with
each one's recall of the pairs exact search finds: why efx does not use faiss.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

from efx import writers

EFX = os.path.join(os.path.dirname(sys.executable), "efx")


def write_output(path: str, rows: int, dim: int) -> int:
    """Rows of non-negative features (as pooled CNN features are), every tenth a noisy copy of
    an earlier row; returns how many near-duplicate rows were planted."""
    rng = np.random.default_rng(0)
    names = [f"photos/{i // 1000:03d}/img-{i:07d}.jpg" for i in range(rows)]
    writer = writers.open_writer("hdf5", path, {"feature_dim": dim, "model": "synthetic"},
                                 inputs=names)  # fmt: skip
    planted = 0
    block = 5000
    for start in range(0, rows, block):
        count = min(block, rows - start)
        embeddings = np.abs(rng.standard_normal((count, dim), dtype=np.float32))
        copies = np.arange(10, count, 10)  # copy the row 5 before, with a little noise
        noise = 0.05 * rng.standard_normal((len(copies), dim), dtype=np.float32)
        embeddings[copies] = embeddings[copies - 5] + noise
        planted += len(copies)
        writer.write(names[start : start + count], embeddings)
        writer.flush()
    writer.close()
    return planted


def timed(*args: str) -> tuple[float, float, str]:
    """Wall seconds, peak RSS in MiB (GNU time's %M), and stdout of `efx ARGS`."""
    result = subprocess.run(
        ["/usr/bin/time", "-f", "%e %M", EFX, *args], capture_output=True, text=True
    )
    if result.returncode:
        raise SystemExit(f"efx {' '.join(args)} failed: {result.stderr}")
    seconds, kib = result.stderr.strip().splitlines()[-1].split()
    return float(seconds), int(kib) / 1024, result.stdout


def synthetic_units(rows: int, dim: int) -> np.ndarray:
    rng = np.random.default_rng(0)
    units = np.abs(rng.standard_normal((rows, dim), dtype=np.float32))
    copies = np.arange(10, rows, 10)
    units[copies] = units[copies - 5] + 0.05 * rng.standard_normal((len(copies), dim), np.float32)
    return units / np.linalg.norm(units, axis=1, keepdims=True)


def compare_faiss(rows: int, dim: int, threshold: float = 0.98) -> None:
    import faiss

    from efx.search import _pairs_above

    units = synthetic_units(rows, dim)
    start = time.perf_counter()
    exact = {
        pair
        for first, second, _ in _pairs_above(units, threshold)
        for pair in zip(first.tolist(), second.tolist(), strict=True)
    }
    print(f"exact (efx): {time.perf_counter() - start:5.1f} s, {len(exact):,} pairs")
    start = time.perf_counter()
    nlist = int(4 * rows**0.5)
    ivf = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, nlist, faiss.METRIC_INNER_PRODUCT)
    ivf.train(units)
    ivf.add(units)
    ivf.nprobe = 4
    limits, _, found = ivf.range_search(units, threshold)
    pairs = {(i, int(j)) for i in range(rows) for j in found[limits[i] : limits[i + 1]] if j > i}
    seconds = time.perf_counter() - start
    print(
        f"faiss IVF{nlist} nprobe 4: {seconds:5.1f} s, recall {len(pairs & exact) / len(exact):.3f}"
    )
    start = time.perf_counter()
    hnsw = faiss.IndexHNSWFlat(dim, 16, faiss.METRIC_INNER_PRODUCT)
    hnsw.add(units)
    sims, found = hnsw.search(units, 16)
    pairs = {
        (min(i, int(j)), max(i, int(j)))
        for i, j, s in zip(np.repeat(np.arange(rows), 16), found.ravel(), sims.ravel(), strict=True)
        if s >= threshold and j != i
    }
    seconds = time.perf_counter() - start
    print(f"faiss HNSW16 k=16: {seconds:5.1f} s, recall {len(pairs & exact) / len(exact):.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", default="10000,100000")
    parser.add_argument("--dim", type=int, default=2304)
    parser.add_argument("--compare-faiss", type=int, default=0, metavar="N")
    args = parser.parse_args()
    if args.compare_faiss:
        compare_faiss(args.compare_faiss, args.dim)
        return
    with tempfile.TemporaryDirectory(prefix="efx-search-bench-") as work:
        for rows in (int(r) for r in args.rows.split(",")):
            output = os.path.join(work, f"{rows}.h5")
            planted = write_output(output, rows, args.dim)
            size = os.path.getsize(output) / 2**20
            print(f"{rows:,} rows x {args.dim} ({size:,.0f} MiB of HDF5, {planted:,} planted "
                  "near-duplicates):")  # fmt: skip
            seconds, peak, stdout = timed("duplicates", output, "--json", "--quiet")
            groups = json.loads(stdout)["groups"]
            print(f"  duplicates: {seconds:6.1f} s, peak RSS {peak:,.0f} MiB, "
                  f"{len(groups):,} groups")  # fmt: skip
            queries = [f"photos/000/img-{i:07d}.jpg" for i in (0, 1, 2, 3, 4)]
            seconds, peak, _ = timed("similar", output, *queries, "-k", "10", "--json")
            print(f"  similar (5 queries, k=10): {seconds:6.1f} s, peak RSS {peak:,.0f} MiB")


if __name__ == "__main__":
    main()
