"""Peak memory (RSS) of `efx extract` against the number of images: it must stay flat.

    python scripts/peak_memory.py [--model DIR] [--counts 100 1000] [--size 1024x768]
                                  [--backend auto|tensorflow|openvino]

Each count runs `efx extract` (default batch size) in a fresh process on that many photos made
from samples/, and reports the process's peak resident set size.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from make_photos import make_photos  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUN = """
import resource, sys
from efx.cli import main
try:
    main(sys.argv[1:])
except SystemExit as done:
    if done.code:
        raise
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024)
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=os.path.join(REPO, ".cache", "standin-b6"))
    parser.add_argument("--counts", type=int, nargs="+", default=[100, 1000])
    parser.add_argument("--size", default="1024x768")
    parser.add_argument("--backend", default="auto")
    args = parser.parse_args()
    width, height = (int(v) for v in args.size.lower().split("x"))
    work = tempfile.mkdtemp(prefix="efx-memory-")
    photos = os.path.join(work, "photos")
    make_photos(photos, max(args.counts), width, height)
    names = sorted(os.listdir(photos))
    for count in args.counts:
        listing = "".join(os.path.join(photos, name) + "\n" for name in names[:count])
        result = subprocess.run(
            [sys.executable, "-c", RUN, "extract", "-", os.path.join(work, f"{count}.h5"),
             "-m", args.model, "--backend", args.backend, "-q"],
            input=listing, capture_output=True, text=True, check=True,
        )  # fmt: skip
        peak = result.stdout.split()[-1]
        print(f"{count} images, backend {args.backend}: peak RSS {peak} MiB", flush=True)


if __name__ == "__main__":
    main()
