"""--engine local against --engine ray on this machine, on the same photos, side by side.

    python scripts/bench_engines.py [--model DIR] [--count 48] [--rounds 2]

Each round runs `efx.extract` once per engine, alternating, on the same 1024x768 JPEGs made
from samples/. The Ray engine starts a local Ray instance per run, as the CLI does without
--ray-address. Reported per engine: the whole run's seconds (start-up and model loads included)
and images/s of the streaming phase; and the ratios ray / local.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from make_photos import make_photos  # noqa: E402

import efx  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=os.path.join(REPO, ".cache", "standin-b6"))
    parser.add_argument("--count", type=int, default=48)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--backend", default="auto")
    args = parser.parse_args()
    work = tempfile.mkdtemp(prefix="efx-engines-")
    photos = os.path.join(work, "photos")
    make_photos(photos, args.count, 1024, 768)
    figures: dict[str, dict[str, list[float]]] = {
        engine: {"seconds": [], "images/s": []} for engine in ("local", "ray")
    }
    for round_ in range(args.rounds):
        for engine, measured in figures.items():
            output = os.path.join(work, f"{engine}-{round_}.h5")
            summary = efx.extract(
                photos, output, model=args.model, engine=engine, backend=args.backend
            )
            measured["seconds"].append(summary.seconds)
            measured["images/s"].append(summary.images_per_second)
            print(engine, "round", round_ + 1, summary.seconds, "s,",
                  summary.images_per_second, "images/s", summary.backend, flush=True)  # fmt: skip
    same = (
        efx.load(os.path.join(work, "local-0.h5"))[0] == efx.load(os.path.join(work, "ray-0.h5"))[0]
    )
    report = {
        engine: {key: round(statistics.median(values), 3) for key, values in measured.items()}
        for engine, measured in figures.items()
    }
    report["ray / local, images/s"] = round(
        statistics.median(
            r / local
            for r, local in zip(
                figures["ray"]["images/s"], figures["local"]["images/s"], strict=True
            )
        ),
        3,
    )
    report["ray / local, run seconds"] = round(
        statistics.median(
            r / local
            for r, local in zip(figures["ray"]["seconds"], figures["local"]["seconds"], strict=True)
        ),
        3,
    )
    report["same paths in the same order"] = same
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
