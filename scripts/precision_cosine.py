"""How close --precision bfloat16 (or float16 on a GPU) stays to float32, and how fast it is.

    python scripts/precision_cosine.py [--model DIR] [--precision bfloat16] [--count 16]

Runs `efx extract` once per precision on the same photos (made from samples/) and reports the
cosine similarity of each image's embedding to float32, and each run's images/s.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from make_photos import make_photos  # noqa: E402

import efx  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EFX = os.path.join(os.path.dirname(sys.executable), "efx")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=os.path.join(REPO, ".cache", "standin-b6"))
    parser.add_argument("--precision", default="bfloat16", choices=["bfloat16", "float16"])
    parser.add_argument("--count", type=int, default=16)
    args = parser.parse_args()
    work = tempfile.mkdtemp(prefix="efx-precision-")
    photos = os.path.join(work, "photos")
    make_photos(photos, args.count, 1024, 768)
    speed = {}
    for precision in ("float32", args.precision):
        result = subprocess.run(
            [EFX, "extract", photos, os.path.join(work, f"{precision}.h5"), "-m", args.model,
             "--precision", precision, "--json", "-q"],
            capture_output=True, text=True, check=True,
        )  # fmt: skip
        speed[precision] = json.loads(result.stdout)["images_per_second"]
    full = efx.load(os.path.join(work, "float32.h5"))[1]
    half = efx.load(os.path.join(work, f"{args.precision}.h5"))[1]
    cosine = (full * half).sum(1) / (np.linalg.norm(full, axis=1) * np.linalg.norm(half, axis=1))
    print(
        json.dumps(
            {
                "images": args.count,
                "images_per_second": speed,
                "cosine_to_float32": {"min": float(cosine.min()), "mean": float(cosine.mean())},
            }
        )
    )


if __name__ == "__main__":
    main()
