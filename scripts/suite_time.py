"""How long `make test` takes from a clean clone, for several commits side by side in one run.

    python scripts/suite_time.py 1473045 HEAD

Each commit is cloned afresh beside this repository (the suite reads ../shared beside its
clone), and `make test` runs there: a new virtualenv installed from pip's cache, then the whole
suite. Printed per commit: the wall time of `make test`, of pytest within it (pytest's own
"in N s"), the CPU time of everything it ran (user + sys, from wait4), and pytest's result line;
then each commit's time as a ratio of the first's. Commits run one after the other, on a machine
doing nothing else: they compete for the same cores otherwise. The clones are removed after.

`--pytest-only` skips the installs: every clone runs pytest with this repository's .venv (which
must hold what each commit needs), for a quicker comparison of the suites alone.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import time

from bench_update import cpu  # the CPU named as the other scripts name it

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def timed(command: list[str], cwd: str, env: dict[str, str], log: str) -> tuple[float, float, int]:
    """(wall seconds, CPU seconds of the command and everything it waited for, exit status)."""
    start = time.monotonic()
    with open(log, "w", encoding="utf-8") as out:
        process = subprocess.Popen(command, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    return time.monotonic() - start, usage.ru_utime + usage.ru_stime, process.returncode


def run_commit(commit: str, pytest_only: bool) -> dict[str, object]:
    sha = subprocess.run(
        ["git", "-C", REPO, "rev-parse", "--short", commit],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    clone = os.path.join(os.path.dirname(REPO), f".suite-time-{sha}")
    shutil.rmtree(clone, ignore_errors=True)
    subprocess.run(["git", "clone", "--quiet", REPO, clone], check=True)
    subprocess.run(["git", "-C", clone, "checkout", "--quiet", sha], check=True)
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
    log = os.path.join(clone, "suite-time.log")
    if pytest_only:
        python = os.path.join(REPO, ".venv", "bin", "python")
        env["PYTHONPATH"] = clone  # this commit's efx, not the .venv's editable one
        command = [python, "-m", "pytest", "-n", "2", "--dist", "loadgroup", "-q"]
    else:
        command = ["make", "test"]
    try:
        wall, cpu, status = timed(command, clone, env, log)
        with open(log, encoding="utf-8") as file:
            text = file.read()
    finally:
        shutil.rmtree(clone, ignore_errors=True)
    results = re.findall(r"^=*\s*(\d+ (?:passed|failed).*?) in ([\d.]+)s", text, re.M)
    result, pytest_seconds = results[-1] if results else (text.strip()[-300:], "nan")
    return {
        "commit": sha, "wall": wall, "pytest": float(pytest_seconds), "cpu": cpu,
        "status": status, "result": result,
    }  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("commits", nargs="+", help="commits to time, the first is the baseline")
    parser.add_argument("--pytest-only", action="store_true", help="skip the installs")
    args = parser.parse_args()
    print(f"machine: {cpu()}; {time.strftime('%Y-%m-%d')}", flush=True)
    what = "pytest -n 2 --dist loadgroup" if args.pytest_only else "make test"
    rows = []
    for commit in args.commits:
        row = run_commit(commit, args.pytest_only)
        rows.append(row)
        print(
            f"{row['commit']}: {what} {row['wall']:.0f} s (pytest {row['pytest']:.0f} s), "
            f"CPU {row['cpu']:.0f} s, exit {row['status']}: {row['result']}",
            flush=True,
        )
    first = rows[0]
    for row in rows[1:]:
        print(
            f"{row['commit']} / {first['commit']}: wall {row['wall'] / first['wall']:.2f}, "
            f"CPU {row['cpu'] / first['cpu']:.2f}"
        )
    return 0 if all(row["status"] == 0 for row in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
