"""Measure shard sources (issue 20): the figures in the README's "Datasets in shards, measured".

Part 1, the model's pace (B6 stand-in, OpenVINO float32): the same photos (1024x768 JPEGs) as a
folder, as 4 WebDataset tar shards, as one Parquet file (row groups of 32) and as one TFRecord
file, embedded by `efx extract` in alternating rounds; images/s of each (the streaming phase,
and whole runs), and the largest difference between their embeddings.
Part 2, many small images (the tiny test model at 32x32): 100,000 small PNGs as loose files, in
20 tar shards and in 5 tar shards (4x larger each): wall time and peak RSS (GNU time) of a
first run; then a no-change --update over the 20 shards, with proof that no shard was opened
(strace: no openat of a .tar) and that garbage of the same size and date is taken for them.

    python scripts/bench_shards.py [--photos 64] [--rounds 3] [--files 100000] [--skip-model]

Each command runs in its own process; times include start-up. Name the CPU with the figures.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "tests"))

from bench_update import EFX, STANDIN, cpu  # noqa: E402


def timed(args: list[str]) -> tuple[float, float, dict, float]:
    """Wall seconds, peak RSS in MiB, the --json summary of `efx extract ARGS`, and the CPU
    seconds it used (user + system: steadier than wall time on a shared machine)."""
    done = subprocess.run(
        ["/usr/bin/time", "-f", "%e %M %U %S", EFX, "extract", *args, "--json", "--quiet"],
        capture_output=True, text=True,
    )  # fmt: skip
    if done.returncode != 0:
        sys.exit(f"efx {' '.join(args)} failed:\n{done.stderr}")
    wall, peak, user, system = done.stderr.strip().splitlines()[-1].split()
    return float(wall), int(peak) / 1024, json.loads(done.stdout), float(user) + float(system)


def write_tar(path: str, members: list[tuple[str, bytes]]) -> None:
    with tarfile.open(path, "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def layouts(work: str, photos: list[str]) -> dict[str, list[str]]:
    """The photos as a folder, 4 tars, a Parquet file and a TFRecord file."""
    from pathlib import Path

    import pyarrow as pa
    import pyarrow.parquet as pq
    import tensorflow as tf

    data = [Path(path).read_bytes() for path in photos]
    keys = [f"{i:09d}" for i in range(len(data))]
    tars = []
    quarter = -(-len(data) // 4)
    for shard in range(4):
        tars.append(os.path.join(work, f"{shard:05d}.tar"))
        chunk = range(shard * quarter, min(len(data), (shard + 1) * quarter))
        members = []
        for i in chunk:
            members += [(f"{keys[i]}.jpg", data[i]), (f"{keys[i]}.txt", b"a photo")]
        write_tar(tars[-1], members)
    table = os.path.join(work, "photos.parquet")
    pq.write_table(pa.table({"key": keys, "jpg": data}), table, row_group_size=32)
    records = os.path.join(work, "photos.tfrecord")
    with tf.io.TFRecordWriter(records) as writer:
        for item in data:
            feature = {"image": tf.train.Feature(bytes_list=tf.train.BytesList(value=[item]))}
            writer.write(
                tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()
            )
    return {
        "folder": [os.path.dirname(photos[0])], "tar": tars, "parquet": [table],
        "tfrecord": [records],
    }  # fmt: skip


def model_part(work: str, count: int, rounds: int) -> None:
    from make_photos import make_photos

    import efx

    if not os.path.isdir(STANDIN):
        subprocess.run([EFX, "make-standin", STANDIN], check=True)
    photos = make_photos(os.path.join(work, "photos"), count, 1024, 768, seed=20)
    sources = layouts(work, photos)
    pace: dict[str, list[float]] = {name: [] for name in sources}
    walls: dict[str, list[float]] = {name: [] for name in sources}
    cpus: dict[str, list[float]] = {name: [] for name in sources}
    summary = {}
    for round_ in range(rounds):
        for name, where in sources.items():  # alternating: folder, tar, parquet, tfrecord, ...
            output = os.path.join(work, f"{name}-{round_}.h5")
            wall, _, summary, used = timed(["-m", STANDIN, "--backend", "openvino", *where, output])
            assert summary["embedded"] == count, summary
            pace[name].append(summary["images_per_second"])
            walls[name].append(count / wall)
            cpus[name].append(used / count)
            print(f"round {round_ + 1} {name:<9} {summary['images_per_second']:.3f} images/s, "
                  f"{used / count:.3f} CPU s/image", flush=True)  # fmt: skip
    reference = efx.load(os.path.join(work, "folder-0.h5"))[1]
    print(f"\nCPU: {cpu()}; B6 stand-in, {summary['backend']} {summary['precision']}, "
          f"{count} photos 1024x768, medians of {rounds} alternating rounds")  # fmt: skip
    folder = statistics.median(pace["folder"])
    for name in sources:
        rows = efx.load(os.path.join(work, f"{name}-0.h5"))[1]
        gap = float(np.abs(rows - reference).max())
        median = statistics.median(pace[name])
        used = statistics.median(cpus[name])
        print(
            f"{name:<9} {median:6.3f} images/s streaming ({median / folder:6.1%} of the folder),"
            f" {statistics.median(walls[name]):6.3f} images/s whole run, {used:.3f} CPU s/image"
            f" ({used / statistics.median(cpus['folder']):6.1%}); largest difference from the "
            f"folder's rows {gap:.1e}"
        )


def small_files(work: str, count: int) -> list[tuple[str, bytes]]:
    from PIL import Image

    rng = np.random.default_rng(0)
    found = []
    for i in range(count):
        buffer = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(buffer, "PNG")
        found.append((f"{i:09d}.png", buffer.getvalue()))
    return found


def files_part(work: str, count: int) -> None:
    from conftest import save_tiny_model

    model = save_tiny_model(os.path.join(work, "tiny"))
    images = small_files(work, count)
    loose = os.path.join(work, "loose")
    for i, (name, data) in enumerate(images):
        folder = os.path.join(loose, f"f{i * 100 // count:02d}")
        os.makedirs(folder, exist_ok=True)
        with open(os.path.join(folder, name), "wb") as file:
            file.write(data)
    shard_sets = {}
    for shards in (20, 5):
        folder = os.path.join(work, f"tars-{shards}")
        os.makedirs(folder)
        per = count // shards
        for s in range(shards):
            write_tar(os.path.join(folder, f"{s:05d}.tar"), images[s * per : (s + 1) * per])
        shard_sets[shards] = folder
    base = ["-m", model, "--image-size", "32", "-b", "256"]
    results = []
    runs = [("loose files (100 folders)", loose), ("20 tar shards", shard_sets[20]),
            ("5 tar shards", shard_sets[5])]  # fmt: skip
    for label, source in runs:
        wall, peak, summary, _ = timed([*base, source, os.path.join(work, f"{label[:2]}.h5")])
        assert summary["embedded"] == count, summary
        size = sum(os.path.getsize(os.path.join(d, n)) for d, _, ns in os.walk(source) for n in ns)
        results.append((f"{label}, {size / 1e6:.0f} MB", wall, peak))
    output = os.path.join(work, "20.h5")
    wall, peak, summary, _ = timed([*base, shard_sets[20], output, "--update"])
    assert summary["up_to_date"] and not summary["model_loaded"], summary
    results.append(("no-change --update, 20 shards", wall, peak))
    opened = tar_opens([*base, shard_sets[20], output, "--update"])
    for name in os.listdir(shard_sets[20]):  # garbage of the same size and date
        path = os.path.join(shard_sets[20], name)
        stat = os.stat(path)
        with open(path, "r+b") as file:
            file.write(b"\0" * stat.st_size)
        os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    _, _, garbage, _ = timed([*base, shard_sets[20], output, "--update"])
    print(f"\nCPU: {cpu()}; tiny model at 32x32, {count:,} PNGs of 8x8, HDF5 output")
    for label, wall, peak in results:
        print(f"{label:<40} {wall:7.2f} s  peak RSS {peak:6.0f} MiB")
    print(f"no-change update: .tar files opened (strace openat): {opened}; over shards "
          f"overwritten with zeros (same size and date): up_to_date {garbage['up_to_date']}, "
          f"kept {garbage['kept']:,}")  # fmt: skip


def tar_opens(args: list[str]) -> int | str:
    """How many times `efx extract ARGS` opens a .tar file, by strace."""
    with tempfile.NamedTemporaryFile("r", suffix=".strace") as log:
        done = subprocess.run(
            ["strace", "-f", "-e", "trace=openat", "-o", log.name, EFX, "extract", *args, "-q"],
            capture_output=True, text=True,
        )  # fmt: skip
        if done.returncode != 0:
            return f"(strace failed: {done.stderr.strip().splitlines()[-1:]})"
        return sum('.tar"' in line for line in log.read().splitlines())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--photos", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--files", type=int, default=100_000)
    parser.add_argument("--skip-model", action="store_true")
    parser.add_argument("--skip-files", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="efx-shards-") as work:
        if not args.skip_model:
            model_part(work, args.photos, args.rounds)
        if not args.skip_files:
            files_part(work, args.files)


if __name__ == "__main__":
    main()
