"""Measure sources in an object store (issue 22): the figures in the README's "Buckets, measured".

Part 1, does the model wait on the network? The same photos (1024x768 JPEGs) on local disk and
in an S3-compatible store on 127.0.0.1 (moto's server, run by this script) that sleeps
`--latency` seconds (default 0.05: a same-region request) before answering each request; as
loose files/objects and as 4 WebDataset tar shards. `efx extract` with the B6 stand-in
(OpenVINO float32), in alternating rounds: images/s while streaming and for whole runs, remote
against local, side by side; and whether the rows are the same bit for bit.
Part 2, the network's own ceiling: the same with the tiny test model at 64x64 (the model costs
almost nothing, so images/s is what the reading delivers).
Part 3, memory: peak RSS (GNU time) of `efx extract` over one tar shard of `--big-gb` GB
(default 2) read by URL, and over one of a tenth of that: flat means a batch in flight, not the
shard. Served over HTTP on 127.0.0.1 (see big_shard for why not by moto).

    python scripts/bench_remote.py [--photos 2000] [--model-photos N] [--rounds 1]
                                   [--latency 0.05] [--big-gb 2] [--skip-tiny] [--skip-model]
                                   [--skip-big]

The store runs in this script's process, on the same 2 cores as efx: its CPU counts against
efx's figures (a real store's does not). Name the CPU with the figures.
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
from servers import HTTPServer, S3Server, filesystem  # noqa: E402


def timed(args: list[str], env: dict[str, str]) -> tuple[float, float, dict]:
    """Wall seconds, peak RSS in MiB and the --json summary of `efx extract ARGS`."""
    done = subprocess.run(
        ["/usr/bin/time", "-f", "%e %M", EFX, "extract", *args, "--json", "--quiet"],
        capture_output=True, text=True, env={**os.environ, **env},
    )  # fmt: skip
    if done.returncode != 0:
        sys.exit(f"efx {' '.join(args)} failed:\n{done.stderr}")
    wall, peak = done.stderr.strip().splitlines()[-1].split()
    return float(wall), int(peak) / 1024, json.loads(done.stdout)


def write_tars(folder: str, photos: list[str], shards: int) -> list[str]:
    os.makedirs(folder, exist_ok=True)
    per = -(-len(photos) // shards)
    tars = []
    for shard in range(shards):
        tars.append(os.path.join(folder, f"{shard:05d}.tar"))
        with tarfile.open(tars[-1], "w") as tar:
            for i, photo in enumerate(photos[shard * per : (shard + 1) * per], shard * per):
                tar.add(photo, f"{i:09d}.jpg")
    return tars


def upload(server: S3Server, folder: str, bucket: str) -> str:
    fs = filesystem(server)
    if not fs.exists(bucket):
        fs.mkdir(bucket)
    fs.put(folder.rstrip("/") + "/", f"{bucket}/", recursive=True)
    return f"s3://{bucket}/"


def pace(
    work: str, server: S3Server, label: str, model: list[str], count: int, rounds: int
) -> None:
    """Local against remote, loose and in tars, alternating; the figures of one model."""
    from make_photos import make_photos

    import efx

    photos = make_photos(os.path.join(work, "photos"), count, 1024, 768, seed=22)
    tars = os.path.join(work, "tars")
    write_tars(tars, photos, 4)
    latency, server.latency = server.latency, 0.0  # uploading is not measured
    bucket = label.split()[0].lower()  # a bucket of each part's own
    sources = {
        "folder": os.path.join(work, "photos"),
        "s3 objects": upload(server, os.path.join(work, "photos"), f"{bucket}-photos"),
        "4 tars": tars,
        "s3 4 tars": upload(server, tars, f"{bucket}-tars"),
    }
    server.latency = latency
    env = server.env()
    stream: dict[str, list[float]] = {name: [] for name in sources}
    whole: dict[str, list[float]] = {name: [] for name in sources}
    for round_ in range(rounds):
        for name, source in sources.items():
            output = os.path.join(work, f"{label}-{name.replace(' ', '-')}-{round_}.h5")
            wall, _, summary = timed([*model, source, output], env)
            assert summary["embedded"] == count, summary
            stream[name].append(summary["images_per_second"])
            whole[name].append(count / wall)
            print(f"{label} round {round_ + 1} {name:<11} {stream[name][-1]:8.3f} images/s "
                  f"streaming, {whole[name][-1]:8.3f} whole run", flush=True)  # fmt: skip
    print(f"\nCPU: {cpu()}; {label}; {count} photos 1024x768; {latency * 1000:.0f} ms per "
          f"request; medians of {rounds} alternating round(s)")  # fmt: skip
    for local, there in (("folder", "s3 objects"), ("4 tars", "s3 4 tars")):
        a, b = statistics.median(stream[local]), statistics.median(stream[there])
        c, d = statistics.median(whole[local]), statistics.median(whole[there])
        rows_here = efx.load(os.path.join(work, f"{label}-{local.replace(' ', '-')}-0.h5"))[1]
        rows_there = efx.load(os.path.join(work, f"{label}-{there.replace(' ', '-')}-0.h5"))[1]
        same = rows_here.shape == rows_there.shape and np.array_equal(rows_here, rows_there)
        print(
            f"{there:<11} {b:8.3f} images/s streaming against {local} {a:8.3f} ({b / a:6.1%}); "
            f"whole runs {d:8.3f} against {c:8.3f} ({d / c:6.1%}); rows bit-equal: {same}"
        )


def unique_png(png: bytes, number: int) -> bytes:
    """`png` with a text chunk naming `number` before its end: other bytes (efx embeds identical
    bytes once), the same picture."""
    import struct
    import zlib

    body = b"tEXt" + b"n\0" + str(number).encode()
    chunk = struct.pack(">I", len(body) - 4) + body + struct.pack(">I", zlib.crc32(body))
    return png[:-12] + chunk + png[-12:]


def big_shard(work: str, server: S3Server, gigabytes: float) -> None:
    """Peak RSS over a shard of `gigabytes` GB and one of a tenth of that, read by URL in
    ranges. Served by the loopback HTTP server (Range requests, read from disk): moto's S3
    reads a whole object into memory for every ranged GET (moto 5.2.5, FakeKey.value), which
    for 2 GB in 8 MiB ranges is hours of copying. efx reads both the same way (fsspec's file,
    8 MiB read-ahead ranges)."""
    from conftest import save_tiny_model
    from PIL import Image

    model = save_tiny_model(os.path.join(work, "tiny"))
    rng = np.random.default_rng(0)
    images = []  # PNGs of noise, 512x512 (~0.8 MB each: they do not compress)
    for _ in range(8):
        buffer = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (512, 512, 3), dtype=np.uint8)).save(buffer, "PNG")
        images.append(buffer.getvalue())
    site = os.path.join(work, "site")
    os.makedirs(site)
    web = HTTPServer(site)
    results = []
    for size in (gigabytes / 10, gigabytes):
        path = os.path.join(site, f"shard-{size:g}.tar")
        members = int(size * 1e9 // len(images[0]))
        with tarfile.open(path, "w") as tar:  # every byte an image's: both passes read them all
            for i in range(members):
                data = unique_png(images[i % 8], i)
                info = tarfile.TarInfo(f"{i:09d}.png")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
        url = f"{web.url}/{os.path.basename(path)}"
        wall, peak, summary = timed(
            ["-m", model, "--image-size", "64", url, os.path.join(work, f"big-{size:g}.h5")], {}
        )
        os.remove(path)
        results.append((size, members, wall, peak, summary["embedded"]))
    web.stop()
    print(f"\nCPU: {cpu()}; tiny model at 64x64, one tar shard over HTTP on 127.0.0.1")
    for size, members, wall, peak, embedded in results:
        print(f"{size:5.2f} GB shard ({members:,} PNGs of 512x512 noise): {wall:7.1f} s, "
              f"peak RSS {peak:6.0f} MiB, {embedded:,} rows")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--photos", type=int, default=2000)
    parser.add_argument(
        "--model-photos", type=int, default=None, help="B6 part (default: --photos)"
    )
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--latency", type=float, default=0.05)
    parser.add_argument("--big-gb", type=float, default=2.0)
    parser.add_argument("--skip-tiny", action="store_true", help="no tiny-model part")
    parser.add_argument("--skip-model", action="store_true", help="no B6 stand-in part")
    parser.add_argument("--skip-big", action="store_true", help="no large-shard part")
    args = parser.parse_args()
    server = S3Server(latency=args.latency)
    with tempfile.TemporaryDirectory(prefix="efx-bench-remote-") as work:
        os.environ["EFX_CACHE_DIR"] = os.path.join(work, "cache")
        from conftest import save_tiny_model

        tiny = save_tiny_model(os.path.join(work, "tiny-model"))
        small = ["-m", tiny, "--image-size", "64"]
        if not args.skip_tiny:
            label = "tiny model 64x64"
            pace(os.path.join(work, "tiny"), server, label, small, args.photos, args.rounds)
        if not args.skip_model:
            if not os.path.isdir(STANDIN):
                subprocess.run([EFX, "make-standin", STANDIN], check=True)
            b6 = ["-m", STANDIN, "--backend", "openvino"]
            label = "B6 stand-in, OpenVINO float32"
            count = args.model_photos or args.photos
            pace(os.path.join(work, "b6"), server, label, b6, count, args.rounds)
        if not args.skip_big:
            big_shard(work, server, args.big_gb)
    server.stop()


if __name__ == "__main__":
    main()
