"""The suite's kill -9 tests as a soak: run them again and again with more kills per run than
the suite makes, and report how many rounds passed and how many kills landed mid-way.

    python scripts/soak_kills.py [--rounds 3] [--kills 5] [--read-seconds 5] [-k EXPR]

`make test` kills each output format's run twice at random points (tests/test_resume.py,
EFX_TEST_KILLS=2) to keep the suite under ten minutes; this runs the same tests (the random-point
kills of every format, a killed --update, a killed run over shards, a killed server and a killed
run into a bucket) with EFX_TEST_KILLS=--kills, --rounds times, each round a fresh pytest. The
reader test of tests/test_writers.py reads each killed writer's output for --read-seconds
(EFX_TEST_READ_SECONDS; the suite: 1 s). The kill points are random (seeded by format), so
rounds differ only by timing: what a soak is for.
"""

from __future__ import annotations

import argparse
import ast
import os
import re
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KILL_TESTS = "killed or kill_9"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--kills", type=int, default=5)
    parser.add_argument("--read-seconds", type=float, default=5.0)
    parser.add_argument("-k", dest="expression", default=KILL_TESTS, help="pytest -k")
    args = parser.parse_args()
    env = {
        **os.environ,
        "EFX_TEST_KILLS": str(args.kills),
        "EFX_TEST_READ_SECONDS": str(args.read_seconds),
    }
    passed = 0
    landed: list[int] = []
    for round_ in range(1, args.rounds + 1):
        started = time.monotonic()
        result = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-s", "-p", "no:cacheprovider", "-k",
             args.expression, "tests"],
            cwd=REPO, env=env, capture_output=True, text=True,
        )  # fmt: skip
        found = re.findall(r"rows committed at each kill: (\[.*\])", result.stdout)
        kills = [len(ast.literal_eval(each)) for each in found]
        landed += kills
        summary = result.stdout.strip().splitlines()[-1] if result.stdout.strip() else "?"
        print(
            f"round {round_}: {summary} in {time.monotonic() - started:.0f} s; kills mid-way "
            f"per random-point run: {kills}",
            flush=True,
        )
        passed += result.returncode == 0
        if result.returncode != 0:
            print(result.stdout[-4000:], result.stderr[-2000:], sep="\n")
    print(f"{passed} of {args.rounds} rounds passed; {sum(landed)} kills landed mid-way in all")
    sys.exit(0 if passed == args.rounds else 1)


if __name__ == "__main__":
    main()
