"""Throughput of `efx extract` next to the model alone, measured side by side in one run.

The model alone runs on ready tensors (warm, no I/O): the ceiling for the whole pipeline.
`efx extract` runs on real JPEG photos and reports images/s of its streaming phase (after the
model load). Rounds alternate A, B, A, B so that a noisy machine affects both alike.

    python scripts/bench_extract.py [--model DIR] [--count 96] [--size 1024x768] [--rounds 2]

Without --model it builds (once) the EfficientNet-B6 stand-in in .cache/standin-b6: same
architecture and compute as the real module, random weights.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from make_photos import make_photos  # noqa: E402

import efx  # noqa: E402
from efx.model import load_model, resolve_model  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def model_alone(model: str, batch: int, count: int) -> float:
    """Images/s of the model on ready random tensors, after one warm-up call."""
    import tensorflow as tf

    loaded = load_model(resolve_model(model), batch_size=batch)
    images = tf.random.uniform([batch, loaded.image_size, loaded.image_size, 3])
    loaded.embed(images)  # one more warm-up call (load_model already probed this shape)
    batches = max(1, count // batch)
    start = time.perf_counter()
    for _ in range(batches):
        loaded.embed(images)
    return batches * batch / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=os.path.join(REPO, ".cache", "standin-b6"))
    parser.add_argument("--count", type=int, default=96)
    parser.add_argument("--size", default="1024x768")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()

    if not os.path.exists(args.model):
        from efx.standin import build_standin

        print(f"building the B6 stand-in in {args.model} ...", flush=True)
        build_standin(args.model, "b6")
    width, height = (int(v) for v in args.size.lower().split("x"))
    work = tempfile.mkdtemp(prefix="efx-bench-")
    photos = os.path.join(work, "photos")
    make_photos(photos, args.count, width, height)
    print(f"{args.count} JPEGs of {width}x{height}, batch {args.batch_size}, model {args.model}")

    alone, pipeline = [], []
    for round_ in range(args.rounds):
        alone.append(model_alone(args.model, args.batch_size, args.count))
        summary = efx.extract(
            photos,
            os.path.join(work, f"out{round_}.h5"),
            model=args.model,
            batch_size=args.batch_size,
        )
        assert summary.embedded == args.count, summary
        pipeline.append(summary.images_per_second)
        print(
            f"round {round_ + 1}: model alone {alone[-1]:.2f} images/s, efx extract "
            f"{pipeline[-1]:.2f} images/s, ratio {pipeline[-1] / alone[-1]:.3f}",
            flush=True,
        )
    ratios = [p / a for p, a in zip(pipeline, alone, strict=True)]
    print(
        f"median: model alone {statistics.median(alone):.2f} images/s, efx extract "
        f"{statistics.median(pipeline):.2f} images/s, ratio {statistics.median(ratios):.3f}"
    )


if __name__ == "__main__":
    main()
