"""What a process's first input pipeline costs to build and run, traced as efx does (as written)
against traced through AutoGraph (what `Dataset.map` does by default), each in a fresh process.

    python scripts/pipeline_setup.py [--rounds 2] [--count 8]

Each process builds and drains the pipeline twice on the same 1024x768 JPEGs: the first is what
every `efx extract` run pays once, the second what a later run in the same process pays.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from make_photos import make_photos  # noqa: E402

RUN = """
import os, sys, time
os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
import efx.decode.pipeline as decode
from efx.config import DecodeOptions
if sys.argv[1] == "autograph":
    decode._graph_only = lambda function: function
paths = sys.argv[2:]
seconds = []
for _ in range(2):
    start = time.perf_counter()
    for _ in decode.image_batches(paths, DecodeOptions(528), 8):
        pass
    seconds.append(time.perf_counter() - start)
print(f"{sys.argv[1]:>9}: first pipeline {seconds[0]:.2f} s, second {seconds[1]:.2f} s")
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--count", type=int, default=8)
    args = parser.parse_args()
    paths = make_photos(tempfile.mkdtemp(prefix="efx-setup-"), args.count, 1024, 768)
    for _ in range(args.rounds):
        for mode in ("autograph", "as-written"):
            result = subprocess.run(
                [sys.executable, "-c", RUN, mode, *paths],
                capture_output=True, text=True, check=True,
            )  # fmt: skip
            print(result.stdout.strip(), flush=True)


if __name__ == "__main__":
    main()
