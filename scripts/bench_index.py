"""`efx duplicates` through the index (efx.index) against exact search, side by side in one run:
time, peak memory and the index's pair recall, on synthetic outputs of N rows.

    python scripts/bench_index.py [--rows 20000,50000,100000] [--dim 2304]

Each output is written by efx's own HDF5 writer (scripts/bench_search.py's rows: non-negative,
every tenth a noisy copy of an earlier row, at similarity 0.99 or more), then timed in fresh
processes (GNU time: wall seconds, peak RSS): `efx duplicates --method exact`, `--method index`
with no index yet (the build included), and again with the index built. Pair recall: the pairs
the index run wrote (--pairs) among those exact search wrote. Synthetic copies this close
flatter recall; the recall that matters is measured on real features (a later script).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

from bench_search import write_output
from bench_update import cpu

EFX = os.path.join(os.path.dirname(sys.executable), "efx")


def run(*args: str) -> tuple[float, float, dict]:
    """Wall seconds, peak RSS in MiB and the --json report of `efx duplicates ARGS`."""
    result = subprocess.run(
        ["/usr/bin/time", "-f", "%e %M", EFX, "duplicates", *args, "--json", "--quiet"],
        capture_output=True, text=True,
    )  # fmt: skip
    if result.returncode:
        raise SystemExit(f"efx duplicates {' '.join(args)} failed: {result.stderr}")
    seconds, kib = result.stderr.strip().splitlines()[-1].split()
    return float(seconds), int(kib) / 1024, json.loads(result.stdout)


def pairs(path: str) -> set[tuple[str, str]]:
    with open(path, encoding="utf-8") as file:
        return {(r["a"], r["b"]) for r in map(json.loads, file)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", default="20000,50000,100000")
    parser.add_argument("--dim", type=int, default=2304)
    args = parser.parse_args()
    print(f"machine: {cpu()}")
    print("| rows | exact | peak | index, built first | peak | index, built | peak | pairs "
          "(exact) | pair recall |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory(prefix="efx-index-bench-") as work:
        for rows in (int(r) for r in args.rows.split(",")):
            output = os.path.join(work, f"{rows}.h5")
            write_output(output, rows, args.dim)
            exact = run(output, "--method", "exact", "--pairs", f"{output}.exact.jsonl")
            first = run(output, "--method", "index", "--pairs", f"{output}.index.jsonl")
            again = run(output, "--method", "index")
            wanted, found = pairs(f"{output}.exact.jsonl"), pairs(f"{output}.index.jsonl")
            recall = len(wanted & found) / len(wanted) if wanted else 1.0
            assert found <= wanted, "the index reported a pair exact search did not"
            assert again[2]["groups"] == first[2]["groups"]
            print(
                f"| {rows:,} | {exact[0]:.1f} s | {exact[1]:,.0f} MiB | {first[0]:.1f} s | "
                f"{first[1]:,.0f} MiB | {again[0]:.1f} s | {again[1]:,.0f} MiB | "
                f"{len(wanted):,} | {recall:.4f} |",
                flush=True,
            )
            for name in os.listdir(work):
                path = os.path.join(work, name)
                subprocess.run(["rm", "-rf", path], check=True)


if __name__ == "__main__":
    main()
