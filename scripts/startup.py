"""Interactive start-up, measured: where a one-image run's time goes, before and after, and what
efx serve gives (issue 23). B6 stand-in, float32, OpenVINO and TensorFlow backends.

    python scripts/startup.py [--rounds 3] [--base 9575cae] [--skip-jobs] [--skip-cold]

Every figure is a fresh process's wall time (spawn to exit), the median of --rounds; within a
round the configurations run in turn (alternating), so they meet the same machine. Measured:
- `efx extract one.jpg out.h5` and `efx similar out.h5 new.jpg -k 5` (an output of 1,000 rows):
  * `base`: efx as of commit --base (a git worktree, run from its own source), caches warm;
    `base cold`: its first run after clearing efx's caches (EFX_CACHE_DIR);
  * `now` / `now cold`: this working tree, the same;
  * `served`: this working tree with `efx serve` running the same model (started once per
    backend; its own start-up is reported apart).
  Each `now` run's phases come from EFX_TIMINGS=1 (efx.timeline); each `base` run's from its
  --json summary (load_seconds, seconds) and the wall time.
- `python -c "import tensorflow"` and one image through the compiled model in a warm process:
  the issue's yardstick (1.5 x their sum).
- OpenVINO's compiled-model cache (CACHE_DIR), a lever evaluated: compiling B6 without it and
  from a warm one, in fresh processes.
- 8 and 96 images (`--skip-jobs` leaves them out; 96 on TensorFlow with --tensorflow-96): the
  whole run against the model alone (the same images' batches through the loaded model, timed
  in a process of their own).
efx keeps no cache for the TensorFlow backend: its "cold" runs would be its warm ones.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from bench_update import cpu  # noqa: E402
from make_photos import make_photos  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STANDIN = os.path.join(REPO, ".cache", "standin-b6")
LAUNCH = "import sys; sys.argv[0] = 'efx'; from efx.cli import run; run()"
BACKENDS = ("openvino", "tensorflow")


def efx(source: str, args: list[str], env: dict[str, str]) -> tuple[float, dict, str]:
    """(wall seconds, EFX_TIMINGS moments relative to the spawn, stdout) of `efx ARGS` run from
    the efx source at `source`."""
    env = {**env, "PYTHONPATH": source, "EFX_TIMINGS": "1"}
    start = time.time()
    done = subprocess.run([sys.executable, "-c", LAUNCH, *args], env=env, capture_output=True,
                          text=True, cwd=source)  # fmt: skip
    wall = time.time() - start
    if done.returncode != 0:
        sys.exit(f"efx {' '.join(args)} failed:\n{done.stderr}")
    moments = {}
    for line in done.stderr.splitlines():
        if line.startswith("efx-timings "):
            moments = {k: v - start for k, v in json.loads(line.split(" ", 1)[1]).items()}
    return wall, moments, done.stdout


def yardstick(env: dict[str, str], tensorflow_96: bool) -> tuple[float, dict[str, float]]:
    """`import tensorflow` in a fresh process; one image (and 8, and 96) through the compiled
    model of each backend, as efx batches them, in a warm process."""
    start = time.time()
    subprocess.run([sys.executable, "-c", "import tensorflow"], env=env, check=True,
                   capture_output=True)  # fmt: skip
    imported = time.time() - start
    args_96 = tensorflow_96
    script = f"""
import json, time, numpy as np
from efx.model import load_model, resolve_model
spec, out = resolve_model({STANDIN!r}), {{}}
for backend in {BACKENDS!r}:
    for count in (1, 8, 96) if backend == "openvino" or {args_96} else (1, 8):
        model = load_model(spec, backend=backend, images=count)
        batch = np.random.default_rng(0).random([model.batch_size, 528, 528, 3], np.float32)
        model.embed(batch)
        start = time.perf_counter()
        for _ in range(-(-count // model.batch_size)):
            model.embed(batch)
        out[f"{{backend}} {{count}}"] = time.perf_counter() - start
print(json.dumps(out))
"""
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                          text=True, check=True)  # fmt: skip
    return imported, json.loads(done.stdout.strip().splitlines()[-1])


COMPILE = """
import os, sys, time
from efx import openvino_model
from efx.model import cache_dir
ov = openvino_model.import_openvino()
model, _ = openvino_model._converted(ov, sys.argv[1], os.path.join(cache_dir(), "openvino"))
model.reshape([1, 528, 528, 3])
config = {"INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": "LATENCY"}
if len(sys.argv) > 2:
    config["CACHE_DIR"] = sys.argv[2]
start = time.perf_counter()
ov.Core().compile_model(model, "CPU", config)
print(time.perf_counter() - start)
"""


def compile_lever(env: dict[str, str], work: str) -> dict[str, float]:
    """OpenVINO's compiled-model cache (CACHE_DIR), evaluated: compiling B6 in a fresh process
    without it, and with it warm (a blob written by an earlier process)."""
    blobs = os.path.join(work, "ov-compiled")

    def seconds(*extra: str) -> float:
        done = subprocess.run([sys.executable, "-c", COMPILE, STANDIN, *extra], env=env,
                              capture_output=True, text=True, check=True)  # fmt: skip
        return float(done.stdout.strip().splitlines()[-1])

    if not os.path.isdir(blobs):
        seconds(blobs)  # writes the blob
    return {"compile": seconds(), "compile from CACHE_DIR": seconds(blobs)}


def start_server(backend: str, sock: str, env: dict[str, str]) -> tuple[subprocess.Popen, float]:
    start = time.time()
    server = subprocess.Popen(
        [sys.executable, "-c", LAUNCH, "serve", "-m", STANDIN, "--backend", backend,
         "--socket", sock], env={**env, "PYTHONPATH": REPO}, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert server.stderr is not None
    for line in server.stderr:
        if "efx: serving" in line:
            return server, time.time() - start
    sys.exit("efx serve did not start")


def prepare(work: str, base: str, env: dict[str, str]) -> dict[str, str]:
    """Photos, the one-image input, a query not in the output, a 1,000-row output (96 photos,
    each also under ~10 other names: rows of repeated bytes are embedded once), and efx as of
    `base` in a worktree."""
    photos = make_photos(os.path.join(work, "photos"), 97, 1024, 768)
    ninety_six = os.path.join(work, "96")
    os.makedirs(ninety_six, exist_ok=True)
    for path in photos[:96]:
        shutil.copy(path, ninety_six)
    eight = os.path.join(work, "8")
    os.makedirs(eight, exist_ok=True)
    for path in photos[:8]:
        shutil.copy(path, eight)
    rows = os.path.join(work, "rows")
    os.makedirs(rows, exist_ok=True)
    for i in range(1000):
        shutil.copy(photos[i % 96], os.path.join(rows, f"{i:04d}.jpg"))
    made = {}
    for backend in BACKENDS:  # efx similar embeds a query with the output's own backend
        made[backend] = os.path.join(work, f"rows-{backend}.h5")
        efx(REPO, ["extract", rows, made[backend], "-m", STANDIN, "-q", "--backend", backend],
            {**env, "EFX_SOCKET": ""})  # fmt: skip
    tree = os.path.join(work, "base")
    subprocess.run(["git", "-C", REPO, "worktree", "add", "--detach", "-f", tree, base],
                   check=True, capture_output=True)  # fmt: skip
    return {"one": photos[0], "query": photos[96], "8": eight, "96": ninety_six, "base": tree,
            **{f"rows {backend}": path for backend, path in made.items()}}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--base", default="9575cae", help="efx before issue 23")
    parser.add_argument("--skip-jobs", action="store_true", help="no 8- and 96-image runs")
    parser.add_argument("--skip-cold", action="store_true", help="no runs with cleared caches")
    parser.add_argument(
        "--tensorflow-96",
        action="store_true",
        help="96-image runs on TensorFlow too (about 2 minutes each here)",
    )
    parser.add_argument(
        "--backends",
        default=",".join(BACKENDS),
        help="openvino,tensorflow (TensorFlow's runs take minutes each here)",
    )
    parser.add_argument("--out", default=None, help="write every measurement here (JSON)")
    args = parser.parse_args()
    globals()["BACKENDS"] = tuple(args.backends.split(","))  # (read by the functions below)
    if not os.path.isdir(STANDIN):
        subprocess.run([sys.executable, "-c", LAUNCH, "make-standin", STANDIN], check=True)
    work = tempfile.mkdtemp(prefix="efx-startup-")
    env = {**os.environ, "EFX_SOCKET": "", "TF_CPP_MIN_LOG_LEVEL": "3"}
    caches = {who: os.path.join(work, f"cache-{who}") for who in ("base", "now")}
    inputs = prepare(work, args.base, {**env, "EFX_CACHE_DIR": caches["now"]})
    servers, figures = {}, {}
    try:
        for backend in BACKENDS:
            sock = os.path.join(work, f"{backend[:2]}.sock")
            server, seconds = start_server(backend, sock, {**env, "EFX_CACHE_DIR": caches["now"]})
            servers[backend] = (server, sock)
            figures[f"serve start {backend}"] = [seconds]
        runs = plan_runs(inputs, caches, servers, env, args)
        for round_ in range(args.rounds):
            for name, (source, argv, run_env, cold) in runs.items():
                if cold:
                    shutil.rmtree(run_env["EFX_CACHE_DIR"], ignore_errors=True)
                out = os.path.join(work, "out.h5")
                argv = [out if a == "OUT" else a for a in argv]
                if os.path.exists(out):
                    os.remove(out)
                wall, moments, stdout = efx(source, argv, run_env)
                figures.setdefault(name, []).append({"wall": wall, "moments": moments,
                                                     "summary": _summary(stdout)})  # fmt: skip
            imported, model = yardstick(env, args.tensorflow_96)
            model.update(compile_lever({**env, "EFX_CACHE_DIR": caches["now"]}, work))
            figures.setdefault("import tensorflow", []).append(imported)
            figures.setdefault("model alone", []).append(model)
            print(f"round {round_ + 1} of {args.rounds} done", file=sys.stderr, flush=True)
    finally:
        for server, _sock in servers.values():
            server.send_signal(signal.SIGTERM)
            server.wait(timeout=60)
        subprocess.run(["git", "-C", REPO, "worktree", "remove", "--force", inputs["base"]],
                       capture_output=True)  # fmt: skip
    if args.out:
        with open(args.out, "w") as file:
            json.dump(figures, file, indent=1)
    report(figures)
    shutil.rmtree(work, ignore_errors=True)


def _summary(stdout: str) -> dict:
    try:
        return json.loads(stdout)
    except ValueError:
        return {}


def plan_runs(inputs, caches, servers, env, args) -> dict:
    """name -> (efx source, argv, environment, clear the cache first)."""
    runs = {}
    for backend in BACKENDS:
        one = ["extract", inputs["one"], "OUT", "-m", STANDIN, "--json", "-q", "--backend", backend]
        similar = ["similar", inputs[f"rows {backend}"], inputs["query"], "-k", "5", "--json"]
        for task, argv in (("extract one", one), ("similar", similar)):
            for who, source in (("base", inputs["base"]), ("now", REPO)):
                run_env = {**env, "EFX_CACHE_DIR": caches[who]}
                runs[f"{task} {backend} {who}"] = (source, argv, run_env, False)
                if not args.skip_cold and backend == "openvino":  # (efx caches nothing for TF)
                    runs[f"{task} {backend} {who} cold"] = (source, argv, run_env, True)
            served = {**env, "EFX_CACHE_DIR": caches["now"], "EFX_SOCKET": servers[backend][1]}
            runs[f"{task} {backend} served"] = (REPO, argv, served, False)
        if not args.skip_jobs:
            for count in ("8", "96") if backend == "openvino" or args.tensorflow_96 else ("8",):
                argv = ["extract", inputs[count], "OUT", "-m", STANDIN, "--json", "-q",
                        "--backend", backend]  # fmt: skip
                run_env = {**env, "EFX_CACHE_DIR": caches["now"]}
                runs[f"extract {count} {backend} now"] = (REPO, argv, run_env, False)
                served = {**run_env, "EFX_SOCKET": servers[backend][1]}
                runs[f"extract {count} {backend} served"] = (REPO, argv, served, False)
    return runs


PHASES = [  # (name, from moment, to moment) of a `now` run
    ("start + imports", None, "command parsed"),
    ("planning", "command parsed", "planned"),
    ("model loaded (TensorFlow importing beside it)", "planned", "model loaded"),
    ("TensorFlow + decoders imported", "model loaded", "decoders imported"),
    ("pipeline built", "decoders imported", "pipeline built"),
    ("first images decoded", "pipeline built", "first images decoded"),
    ("model + writing (first rows)", "first images decoded", "first rows written"),
    ("the rest, to exit", "first rows written", None),
]


def _timed(runs: list) -> bool:
    """Whether these are efx runs (not the yardstick's figures)."""
    return isinstance(runs[0], dict) and "wall" in runs[0]


def report(figures: dict) -> None:
    print(f"CPU: {cpu()}")
    median = statistics.median
    imported = median(figures["import tensorflow"])
    alone = {k: median(m[k] for m in figures["model alone"]) for k in figures["model alone"][0]}
    print(
        f"import tensorflow alone: {imported:.2f} s (median of {len(figures['import tensorflow'])})"
    )
    for backend in BACKENDS:
        one = alone[f"{backend} 1"]
        print(f"{backend}: one image through the loaded model {one:.2f} s; the issue's limit "
              f"1.5 x ({imported:.2f} + {one:.2f}) = {1.5 * (imported + one):.2f} s; "
              f"efx serve ready after {figures[f'serve start {backend}'][0]:.1f} s")  # fmt: skip
    print("\nwall seconds, median of the rounds (each a fresh process):")
    for name, runs in figures.items():
        if not _timed(runs):
            continue
        walls = [run["wall"] for run in runs]
        line = (
            f"  {name:38s} {median(walls):6.2f} s  (runs: {', '.join(f'{w:.2f}' for w in walls)})"
        )
        count = name.split()[1]
        if name.startswith("extract") and count.isdigit():
            model = alone[f"{name.split()[2]} {count}"]
            line += f"; model alone {model:.2f} s = {model / median(walls):.0%} of the run"
        print(line)
    print("\nphases of the `now` runs (seconds, medians):")
    for name, runs in figures.items():
        if not _timed(runs) or not name.endswith(("now", "now cold", "served")):
            continue
        parts = []
        for phase, first, last in PHASES:
            spans = []
            for run in runs:
                moments = {**run["moments"], None: 0.0}
                if first in moments and (last in moments or last is None):
                    spans.append((moments[last] if last else run["wall"]) - moments[first])
            if spans:
                parts.append(f"{phase} {median(spans):.2f}")
        print(f"  {name}: " + "; ".join(parts))
    print("\nphases of the `base` runs (seconds, medians, from the --json summary):")
    for name, runs in figures.items():
        if not _timed(runs) or not name.endswith(("base", "base cold")):
            continue
        summaries = [run["summary"] for run in runs if "load_seconds" in run["summary"]]
        if not summaries:
            continue
        load = median(s["load_seconds"] for s in summaries)
        inside = median(s["seconds"] for s in summaries)
        wall = median(run["wall"] for run in runs)
        print(
            f"  {name}: model load (TensorFlow import included) {load:.2f}; planning and "
            f"streaming {inside - load:.2f}; start, imports and exit {wall - inside:.2f}"
        )


if __name__ == "__main__":
    main()
