"""Memory held in flight, in bytes: peak RSS of `efx extract` over a tar of large images, and
over a file of zeros named like an image, for efx as of --base and efx now, side by side.

    python scripts/memory_in_flight.py [--base da3d4c6] [--count 170] [--zeros-gb 3]

Inputs (in a temporary folder, removed after): a WebDataset tar of 8 and one of COUNT noise
PNGs of about 3 MB each (1000x1000, distinct bytes: efx embeds repeated bytes once); a sparse
file of ZEROS_GB GB of zeros called huge.jpg. The model is a tiny SavedModel (16 floats, at
64 px), so what the peak measures is the bytes efx holds, not the model's. Each run is a fresh
process; its peak RSS (getrusage) is printed, in MiB, with the growth from 8 to COUNT images.
Base runs use a git worktree of --base, run from its own source.
"""

from __future__ import annotations

import argparse
import io
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUN = """
import resource, sys
sys.path.insert(0, sys.argv.pop(1))
from efx.cli import main
try:
    main(sys.argv[1:])
except SystemExit as done:
    if done.code not in (0, None):
        raise
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024)
"""


def tiny_model(folder: str) -> str:
    import tensorflow as tf

    class Tiny(tf.Module):
        def __init__(self) -> None:
            super().__init__()
            self.kernel = tf.Variable(tf.random.stateless_normal([5, 5, 3, 16], seed=[1, 2]))

        @tf.function(input_signature=[tf.TensorSpec([None, None, None, 3], tf.float32)])
        def __call__(self, images):
            features = tf.nn.conv2d(images, self.kernel, strides=4, padding="SAME")
            return tf.reduce_mean(tf.nn.relu(features), axis=[1, 2])

    tf.saved_model.save(Tiny(), folder)
    return folder


def noise_tar(path: str, count: int) -> None:
    from PIL import Image

    rng = np.random.default_rng(0)
    base = rng.integers(0, 256, (1000, 1000, 3), dtype=np.uint8)
    with tarfile.open(path, "w") as tar:
        for i in range(count):
            pixels = base.copy()
            pixels[i % 1000] = i % 256  # distinct bytes
            buffer = io.BytesIO()
            Image.fromarray(np.roll(pixels, i, axis=1)).save(buffer, "PNG", compress_level=1)
            info = tarfile.TarInfo(f"{i:06d}.png")
            info.size = len(buffer.getvalue())
            tar.addfile(info, io.BytesIO(buffer.getvalue()))


def peak(source: str, argv: list[str]) -> str:
    done = subprocess.run(
        [sys.executable, "-c", RUN, source, *argv], capture_output=True, text=True,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "EFX_SOCKET": ""},
    )  # fmt: skip
    if done.returncode:
        return f"failed ({done.stderr.strip().splitlines()[-1:]})"
    return done.stdout.strip().splitlines()[-1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", default="da3d4c6", help="efx before round 3")
    parser.add_argument("--count", type=int, default=170)
    parser.add_argument("--zeros-gb", type=float, default=3.0)
    args = parser.parse_args()
    work = tempfile.mkdtemp(prefix="efx-memory-")
    try:
        model = tiny_model(os.path.join(work, "tiny"))
        tars = {n: os.path.join(work, f"noise{n}.tar") for n in (8, args.count)}
        for count, path in tars.items():
            noise_tar(path, count)
        zeros = os.path.join(work, "huge.jpg")
        with open(zeros, "wb") as file:
            file.truncate(int(args.zeros_gb * (1 << 30)))
        base = os.path.join(work, "base")
        subprocess.run(
            ["git", "-C", REPO, "worktree", "add", "--detach", "-f", base, args.base],
            check=True, capture_output=True,
        )  # fmt: skip
        size = os.path.getsize(tars[args.count]) >> 20
        print(f"tar of {args.count} noise PNGs: {size} MiB; zeros: {args.zeros_gb} GB")
        print("peak RSS, MiB (fresh process each):")
        common = ["-m", model, "--image-size", "64", "-q", "--overwrite"]
        for who, source in (("base", base), ("now", REPO)):
            out = os.path.join(work, f"out-{who}.h5")
            found = {n: peak(source, ["extract", path, out, *common]) for n, path in tars.items()}
            growth = (
                int(found[args.count]) - int(found[8])
                if all(v.isdigit() for v in found.values())
                else "?"
            )  # fmt: skip
            zero = peak(source, ["extract", zeros, out, *common])
            print(
                f"  {who:4}  tar of 8: {found[8]:>6}  tar of {args.count}: "
                f"{found[args.count]:>6}  growth: {growth:>5}  zeros huge.jpg: {zero:>6}"
            )
        subprocess.run(["git", "-C", REPO, "worktree", "remove", "--force", base], check=False)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
