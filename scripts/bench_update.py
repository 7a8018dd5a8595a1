"""Measure `efx extract --update` (issue 14): the figures in the README's "Measured here".

Part 1, model time (B6 stand-in, same compute as the real module): 2,000 photos (1024x768 JPEGs)
in 20 folders -> OUTPUT; then 1% new files (sorted first in some folders, last in others), 1%
edited, 1% moved to another folder, 1% deleted. Side by side, one after the other:
  update       efx extract TREE OUTPUT --update
  only-new     efx extract (the new and edited files only, from stdin) ONLY.h5
  fresh        efx extract TREE FRESH.h5           (and OUTPUT is checked equal to FRESH)
  unchanged    efx extract TREE OUTPUT --update    (nothing changed: no model load, proven
               by `"tensorflow" in sys.modules` after efx.extract in a fresh interpreter)
Part 2, number of files (the tiny test model at 32x32, with 2304 features as B6 has): 100,000
small PNGs in 100 folders; a no-change update of 10,000 and of 100,000 files, and a
100,000-file update where one file changed (every other row, 0.9 GB, copied), each with wall
time and peak RSS (GNU time).

    python scripts/bench_update.py [--photos 2000] [--files 100000] [--skip-model] [--skip-files]

Each command runs in its own process; times include start-up. Name the CPU with the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # the tiny model is built here

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
EFX = os.path.join(os.path.dirname(sys.executable), "efx")
STANDIN = os.path.join(ROOT, ".cache", "standin-b6")
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(ROOT, "tests"))


def timed(args: list[str], stdin: str | None = None) -> tuple[float, float, dict]:
    """Wall seconds, peak RSS in MiB, and the --json summary of `efx ARGS`."""
    done = subprocess.run(
        ["/usr/bin/time", "-f", "%e %M", EFX, "extract", *args, "--json", "--quiet"],
        input=stdin, capture_output=True, text=True,
    )  # fmt: skip
    if done.returncode != 0:
        sys.exit(f"efx {' '.join(args)} failed:\n{done.stderr}")
    wall, peak = done.stderr.strip().splitlines()[-1].split()
    return float(wall), int(peak) / 1024, json.loads(done.stdout)


def cpu() -> str:
    for line in subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines():
        if line.startswith("Model name:"):
            name = line.split(":", 1)[1].strip()
            with open("/proc/cpuinfo") as file:
                flags = file.read()
            extras = [f for f in ("avx512f", "avx512_bf16", "amx_bf16") if f" {f}" in flags]
            return f"{name} ({os.cpu_count()} cores; {', '.join(extras) or 'AVX2 only'})"
    return "unknown CPU"


def model_part(work: str, count: int) -> None:
    from make_photos import make_photos

    if not os.path.isdir(STANDIN):
        subprocess.run([EFX, "make-standin", STANDIN], check=True)
    tree = os.path.join(work, "photos")
    folders = 20
    for f in range(folders):
        make_photos(os.path.join(tree, f"folder-{f:02d}"), count // folders, 1024, 768, seed=f)
    model = ["-m", STANDIN]
    output = os.path.join(work, "out.h5")
    wall, _, first = timed([*model, tree, output])
    print(f"first run: {first['images']} photos in {wall:.1f} s")

    rng = random.Random(14)
    every = sorted(
        os.path.join(d, n) for d, _, names in os.walk(tree) for n in names
    )  # fmt: skip
    share = max(1, count // 100)
    picked = rng.sample(every, 3 * share)
    edited, moved, deleted = picked[:share], picked[share : 2 * share], picked[2 * share :]
    from PIL import Image

    for path in edited:  # new bytes: the photo turned a little
        Image.open(path).rotate(3).save(path, quality=90)
    for i, path in enumerate(moved):
        folder = os.path.join(tree, f"folder-{(i * 7 + 3) % folders:02d}")
        shutil.move(path, os.path.join(folder, f"moved-{i:03d}-" + os.path.basename(path)))
    for path in deleted:
        os.remove(path)
    new = []
    for i in range(share):  # sorted first ("0-…") in some folders, last ("zz-…") in others
        folder = os.path.join(tree, f"folder-{i % folders:02d}")
        name = ("0-new" if i % 2 else "zz-new") + f"-{i:03d}"
        new += make_photos(os.path.join(work, "new", name), 1, 1024, 768, seed=1000 + i)
        os.rename(new[-1], os.path.join(folder, name + ".jpg"))
        new[-1] = os.path.join(folder, name + ".jpg")
    print(f"changes: {share} new, {share} edited, {share} moved, {share} deleted")

    update, _, summary = timed([*model, tree, output, "--update"])
    keys = ("kept", "computed", "new", "changed", "reused", "removed", "embedded", "failed")
    print("update:", {k: summary[k] for k in keys}, f"load {summary['load_seconds']} s")
    only_list = "".join(path + "\n" for path in sorted(new + edited))
    only, _, summary_only = timed([*model, "-", os.path.join(work, "only.h5")], only_list)
    fresh_out = os.path.join(work, "fresh.h5")
    fresh, _, _ = timed([*model, tree, fresh_out])
    unchanged, _, summary_unchanged = timed([*model, tree, output, "--update"])
    import time

    import efx
    from efx.facts import hash_files

    every = sorted(os.path.join(d, n) for d, _, names in os.walk(tree) for n in names)
    clock = time.perf_counter()
    hash_files(every)  # what every fresh run now does before the model loads
    hashing = time.perf_counter() - clock
    megabytes = sum(os.path.getsize(p) for p in every) / 1e6

    paths, rows = efx.load(output)
    fresh_paths, fresh_rows = efx.load(fresh_out)
    equal = paths == fresh_paths
    gap = float(np.abs(rows - fresh_rows).max()) if equal else float("nan")
    code = (
        "import efx, json, sys; s = efx.extract([sys.argv[1]], sys.argv[2], model=sys.argv[3], "
        "update=True); print(json.dumps([s.up_to_date, s.model_loaded, "
        "'tensorflow' in sys.modules]))"
    )
    proof = subprocess.run(
        [sys.executable, "-c", code, tree, output, STANDIN], capture_output=True, text=True
    )
    up_to_date, loaded, imported = json.loads(proof.stdout)

    print(f"\nCPU: {cpu()}; B6 stand-in, {summary['backend']} {summary['precision']}")
    print(f"update (--update)                    {update:7.1f} s  ({summary['computed']} embedded)")
    print(f"embed only the new + edited files    {only:7.1f} s  ({summary_only['images']} files)")
    print(f"fresh run of the new tree            {fresh:7.1f} s")
    print(f"update / only-new                    {update / only:7.2f}")
    print(f"update / fresh                       {update / fresh:7.3f}")
    print(f"update equals fresh: paths {equal}, largest difference {gap:.2e}")
    print(
        f"hashing all {len(every)} photos ({megabytes:.0f} MB, page cache): {hashing:.2f} s, "
        f"{hashing / fresh:.2%} of the fresh run"
    )
    print(
        f"nothing changed: {unchanged:.2f} s wall (up_to_date "
        f"{summary_unchanged['up_to_date']}, model_loaded {summary_unchanged['model_loaded']});"
        f" through efx.extract: up_to_date {up_to_date}, model_loaded {loaded}, TensorFlow "
        f"imported {imported}"
    )


def files_part(work: str, count: int) -> None:
    from conftest import save_tiny_model
    from PIL import Image

    # The tiny test model, but with B6's 2304 features: an output of 100,000 rows is then
    # 0.9 GB, so that copying it (an update with one file changed) shows whether memory grows.
    model = save_tiny_model(os.path.join(work, "tiny"), dim=2304)
    tree = os.path.join(work, "files")
    rng = np.random.default_rng(0)
    per = count // 100
    for f in range(100):
        folder = os.path.join(tree, f"f{f:02d}")
        os.makedirs(folder)
        for i in range(per):
            pixels = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(os.path.join(folder, f"{i:05d}.png"))
    base = ["-m", model, "--image-size", "32", "-b", "256"]
    small = [os.path.join(tree, f"f{f:02d}") for f in range(10)]
    results = []
    for name, sources in (("10%", small), ("all", [tree])):
        output = os.path.join(work, f"{name}.h5")
        wall, peak, summary = timed([*base, *sources, output])
        print(f"first run, {summary['images']} files: {wall:.1f} s, peak {peak:.0f} MiB")
        wall, peak, summary = timed([*base, *sources, output, "--update"])
        assert summary["up_to_date"] and not summary["model_loaded"], summary
        results.append((f"no change, {summary['images']:,} files", wall, peak))
    changed = os.path.join(tree, "f50", f"{per // 2:05d}.png")
    Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(changed)
    wall, peak, summary = timed([*base, tree, os.path.join(work, "all.h5"), "--update"])
    assert summary["computed"] == 1 and summary["kept"] == count - 1, summary
    results.append((f"1 file changed, {summary['images']:,} files", wall, peak))
    print(f"\nCPU: {cpu()}; tiny model (2304 features) at 32x32, HDF5 output")
    for label, wall, peak in results:
        print(f"{label:<32} {wall:6.2f} s  peak RSS {peak:6.0f} MiB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--photos", type=int, default=2000)
    parser.add_argument("--files", type=int, default=100_000)
    parser.add_argument("--skip-model", action="store_true")
    parser.add_argument("--skip-files", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="efx-update-") as work:
        if not args.skip_files:
            files_part(work, args.files)
        if not args.skip_model:
            model_part(work, args.photos)


if __name__ == "__main__":
    main()
