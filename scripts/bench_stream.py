"""Is the stream (OUTPUT -) ever the bottleneck? Rows per second through stdout into a consumer
against writing HDF5, at B6's 2,304 dimensions, side by side in one run.

1. The writers alone, synthetic rows: each format writes N rows (batches of 8) from a fresh
   process: HDF5 into a file; JSON Lines and Arrow into a pipe drained by `cat > /dev/null`,
   and into a Python consumer that parses every record.
2. `efx extract` end to end, tiny model with 2,304 features, small JPEGs: `efx extract photos/
   out.h5` against `efx extract photos/ - | cat > /dev/null` (jsonl and arrow); the summary's
   images/s (after the model load), fresh processes alternating, medians.

    python scripts/bench_stream.py [--rows 20000] [--images 600] [--rounds 3]
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(REPO, "tests"))
EFX = os.path.join(os.path.dirname(sys.executable), "efx")
DIM = 2304
BATCH = 8

WRITE = f"""
import sys
import numpy as np
from efx import writers
fmt, rows, target = sys.argv[1], int(sys.argv[2]), sys.argv[3]
attrs = {{"model": "synthetic", "feature_dim": {DIM}, "image_size": 1}}
paths = [f"photos/{{i:07d}}.jpg" for i in range(rows)]
writer = writers.open_writer(fmt, target, attrs, inputs=paths[:1])
block = np.random.default_rng(0).standard_normal(({BATCH}, {DIM})).astype(np.float32)
for start in range(0, rows, {BATCH}):
    writer.write(paths[start : start + {BATCH}], block[: min({BATCH}, rows - start)])
    writer.flush()
writer.close()
"""

PARSE_JSONL = "import json, sys\nfor line in sys.stdin.buffer: json.loads(line)"
PARSE_ARROW = "import sys, pyarrow.ipc as ipc\nfor batch in ipc.open_stream(sys.stdin.buffer): pass"


def writers_alone(rows: int, rounds: int, work: str) -> None:
    cases = {
        "hdf5 file": f"{sys.executable} -c '{WRITE}' hdf5 {rows} {work}/w.h5",
        "jsonl | cat": f"{sys.executable} -c '{WRITE}' jsonl {rows} - | cat > /dev/null",
        "arrow | cat": f"{sys.executable} -c '{WRITE}' arrow {rows} - | cat > /dev/null",
        "jsonl | python json.loads": (
            f"{sys.executable} -c '{WRITE}' jsonl {rows} - | {sys.executable} -c '{PARSE_JSONL}'"
        ),
        "arrow | python pyarrow": (
            f"{sys.executable} -c '{WRITE}' arrow {rows} - | {sys.executable} -c '{PARSE_ARROW}'"
        ),
    }
    seconds: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(rounds):
        for name, command in cases.items():
            if os.path.exists(f"{work}/w.h5"):
                os.remove(f"{work}/w.h5")
            started = time.perf_counter()
            subprocess.run(["bash", "-o", "pipefail", "-c", command], check=True, cwd=REPO)
            seconds[name].append(time.perf_counter() - started)
    base = rows / statistics.median(seconds["hdf5 file"])
    print(f"\n1. writers alone: {rows} synthetic rows of {DIM} float32, batches of {BATCH}")
    print(f"{'':28}{'rows/s':>10}{'/ hdf5':>9}   (medians of {rounds}, process start included)")
    for name, times in seconds.items():
        rate = rows / statistics.median(times)
        print(f"{name:28}{rate:10.0f}{rate / base:9.3f}")


def end_to_end(images: int, rounds: int, work: str) -> None:
    from conftest import save_tiny_model
    from PIL import Image

    model = save_tiny_model(os.path.join(work, "tiny-2304"), dim=DIM)
    photos = os.path.join(work, "photos")
    os.makedirs(photos)
    source = Image.open(os.path.join(REPO, "samples", "chelsea.png")).convert("RGB")
    for index in range(images):  # different bytes each: every one embedded
        left = index % 150
        source.crop((left, 0, left + 256, 192)).save(os.path.join(photos, f"{index:05d}.jpg"))
    common = f"{EFX} extract {photos} {{out}} -m {model} --image-size 64 --backend tensorflow"
    cases = {
        "efx extract photos/ out.h5": common.format(out=f"{work}/e2e.h5") + " --overwrite",
        "efx extract photos/ - | cat": common.format(out="-") + " | cat > /dev/null",
        "… - --format arrow | cat": common.format(out="-") + " --format arrow | cat > /dev/null",
    }
    rates: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(rounds):
        for name, command in cases.items():
            done = subprocess.run(
                ["bash", "-o", "pipefail", "-c", command],
                capture_output=True, text=True, check=True,
            )  # fmt: skip
            rates[name].append(float(re.findall(r"then ([\d.]+) images/s", done.stderr)[-1]))
    base = statistics.median(rates["efx extract photos/ out.h5"])
    print(f"\n2. efx extract, tiny model with {DIM} features, {images} JPEGs of 256x192, 64x64")
    print(f"{'':30}{'images/s':>10}{'/ hdf5':>9}   (after the model load; medians of {rounds})")
    for name, values in rates.items():
        rate = statistics.median(values)
        rounds_seen = ", ".join(f"{value:.1f}" for value in values)
        print(f"{name:30}{rate:10.1f}{rate / base:9.3f}   ({rounds_seen})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=20000)
    parser.add_argument("--images", type=int, default=600)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    print(f"machine: {_cpu()}")
    with tempfile.TemporaryDirectory(prefix="efx-stream-") as work:
        writers_alone(args.rows, args.rounds, work)
        end_to_end(args.images, args.rounds, work)


def _cpu() -> str:
    with open("/proc/cpuinfo", encoding="utf-8") as file:
        flags = file.read()
    model = next(
        line.split(":", 1)[1].strip() for line in flags.splitlines() if "model name" in line
    )
    kind = "AVX-512" if "avx512f" in flags else "AVX2" if "avx2" in flags else "no AVX2"
    return f"{model}, {os.cpu_count()} cores, {kind}"


if __name__ == "__main__":
    main()
