"""Kill `efx extract` with SIGKILL at random points, resume it each time, and compare the result
with an uninterrupted run row by row; report the work each kill lost.

    python scripts/kill_resume.py [--model DIR] [--count 48] [--kills 4] [--format hdf5|npy]

The work lost by a kill is the time since the output last grew: what the killed process had
computed but not yet committed (efx commits after every batch). Without --model it uses the
EfficientNet-B6 stand-in in .cache/standin-b6 (built once): real compute, random weights.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from make_photos import make_photos  # noqa: E402

import efx  # noqa: E402
from efx import writers  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EFX = os.path.join(os.path.dirname(sys.executable), "efx")


def committed(output: str) -> int:
    try:
        return int(writers.describe(output)["count"])
    except efx.EfxError:
        return 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=os.path.join(REPO, ".cache", "standin-b6"))
    parser.add_argument("--count", type=int, default=48)
    parser.add_argument("--kills", type=int, default=4)
    parser.add_argument("--format", choices=["hdf5", "npy"], default="hdf5")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    if not os.path.isdir(args.model):
        subprocess.run([EFX, "make-standin", args.model], check=True)
    rng = random.Random(args.seed)
    work = tempfile.mkdtemp(prefix="efx-kill-")
    photos = os.path.join(work, "photos")
    make_photos(photos, args.count, 1024, 768)
    name = "out.h5" if args.format == "hdf5" else "out"
    common = ["-m", args.model, "-b", str(args.batch_size), "-q"]

    clean = os.path.join(work, "clean-" + name)
    start = time.monotonic()
    subprocess.run([EFX, "extract", photos, clean, *common], check=True)
    print(f"uninterrupted run: {time.monotonic() - start:.0f} s for {args.count} images")

    output = os.path.join(work, name)
    command = [EFX, "extract", photos, output, *common, "--resume"]
    for kill in range(1, args.kills + 1):
        before = committed(output)
        process = subprocess.Popen(command)
        # Let this run commit at least one batch, then kill it at a random moment.
        while committed(output) <= before and process.poll() is None:
            time.sleep(0.1)
        grew_at, rows = time.monotonic(), committed(output)
        end = time.monotonic() + rng.uniform(0.5, 2.5) * (args.batch_size / 2.7)
        while time.monotonic() < end and process.poll() is None:
            now = committed(output)
            if now != rows:
                grew_at, rows = time.monotonic(), now
            time.sleep(0.1)
        if process.poll() is not None:
            print(f"kill {kill}: the run finished first")
            break
        process.send_signal(signal.SIGKILL)
        process.wait()
        lost = time.monotonic() - grew_at
        info = writers.describe(output)
        print(
            f"kill {kill}: SIGKILL with {info['count']} of {args.count} rows committed, "
            f"complete={info['complete']}; work lost: {lost:.1f} s since the last commit"
        )
    subprocess.run(command, check=True)
    paths, embeddings = efx.load(output)
    clean_paths, clean_embeddings = efx.load(clean)
    identical = paths == clean_paths and bool((embeddings == clean_embeddings).all())
    difference = float(abs(embeddings - clean_embeddings).max()) if paths == clean_paths else None
    print(
        json.dumps(
            {
                "rows": len(paths),
                "same_paths_in_order": paths == clean_paths,
                "bitwise_identical": identical,
                "max_abs_difference": difference,
                "complete": writers.describe(output)["complete"],
            }
        )
    )


if __name__ == "__main__":
    main()
