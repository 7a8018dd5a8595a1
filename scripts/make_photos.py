"""Build a benchmark image set from the repo's real sample photos: N JPEGs of a given size.

Each image is a random crop of a sample photo, resized to WIDTHxHEIGHT and saved as JPEG
(quality 90), so decode cost is that of real photos of that size.

    python scripts/make_photos.py OUT_DIR --count 96 --size 1024x768
"""

from __future__ import annotations

import argparse
import glob
import os
import random

from PIL import Image

SAMPLES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "samples")


def make_photos(folder: str, count: int, width: int, height: int, seed: int = 0) -> list[str]:
    sources = [
        Image.open(path).convert("RGB")
        for path in sorted(glob.glob(os.path.join(SAMPLES, "**", "*.*"), recursive=True))
        if path.lower().endswith((".jpg", ".png"))
    ]
    rng = random.Random(seed)
    os.makedirs(folder, exist_ok=True)
    paths = []
    for i in range(count):
        photo = sources[i % len(sources)]
        w, h = photo.size
        cw, ch = rng.randint(w // 2, w), rng.randint(h // 2, h)
        x, y = rng.randint(0, w - cw), rng.randint(0, h - ch)
        image = photo.crop((x, y, x + cw, y + ch)).resize((width, height), Image.BICUBIC)
        path = os.path.join(folder, f"photo-{i:05d}.jpg")
        image.save(path, quality=90)
        paths.append(path)
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder")
    parser.add_argument("--count", type=int, default=96)
    parser.add_argument("--size", default="1024x768", help="WIDTHxHEIGHT")
    args = parser.parse_args()
    width, height = (int(v) for v in args.size.lower().split("x"))
    make_photos(args.folder, args.count, width, height)


if __name__ == "__main__":
    main()
