"""A few hundred real, unrelated photos for measuring search quality offline, from Debian's
archive (the only image collections this workplace can download).

- `gcompris-qt-data` (GPL-3+; each folder's README names the Wikimedia source and licence of
  each photo, mostly public domain or CC): photos of fish, monuments, tools, wind and solar
  plants, household objects, animals and musicians, packed in Qt resource files (.rcc), read
  here with a small parser of that format;
- `scratch` (media CC-BY-SA 3.0): the photo backgrounds (480x360), without the drawings.

Near-identical photos (the same photo in two GCompris activities) are dropped by a 64-bit
difference hash (dHash, Hamming distance <= 10), so that every photo left is a negative for
every other. The photos are written once to .cache/real-photos/ (about 15 MB):

    python scripts/real_photos.py            # apt-get download + unpack; prints the count

Needs `apt-get download` to work (Debian or Ubuntu, package lists present: `apt-get update`).
"""

from __future__ import annotations

import glob
import io
import os
import struct
import subprocess
import sys
import tempfile
import zlib

import numpy as np
from PIL import Image

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CACHE = os.path.join(REPO, ".cache", "real-photos")
PACKAGES = ("gcompris-qt-data", "scratch")
# GCompris activities whose pictures are photos (the others: drawings, paintings, symbols).
GCOMPRIS_PHOTOS = {
    "categorization": ("fishes", "monuments", "others", "renewable", "tools"),
    "explore_monuments": (),
    "explore_world_animals": (),
    "explore_farm_animals": (),
    "erase": (),
    "explore_world_music": (),
}
SCRATCH_DRAWINGS = {
    "party-room", "room1", "room2", "room3", "spotlight-stage", "woods-and-bench", "school2",
    # one of each pair of photos of the same scene: these are near-duplicates, not negatives
    "brick-wall2", "city-with-water2", "basketball-court1-b", "train-tracks2",
}  # fmt: skip
MIN_SIDE = 100
SAME_PHOTO_BITS = 10


def real_photos() -> list[str]:
    """The photos' paths, sorted; fetched and unpacked on the first call."""
    listing = os.path.join(CACHE, "photos.txt")
    if not os.path.exists(listing):
        _build()
    with open(listing, encoding="utf-8") as file:
        return [os.path.join(CACHE, line) for line in file.read().splitlines()]


def _build() -> None:
    with tempfile.TemporaryDirectory(prefix="efx-photos-") as work:
        try:
            subprocess.run(["apt-get", "download", *PACKAGES], cwd=work, check=True)
        except (OSError, subprocess.CalledProcessError) as error:
            sys.exit(f"real_photos: apt-get download {' '.join(PACKAGES)} failed: {error}")
        for deb in glob.glob(os.path.join(work, "*.deb")):
            subprocess.run(["dpkg-deb", "-x", deb, os.path.join(work, "root")], check=True)
        candidates = _gcompris(os.path.join(work, "root")) + _scratch(os.path.join(work, "root"))
        os.makedirs(CACHE, exist_ok=True)
        kept: list[str] = []
        hashes: list[np.ndarray] = []
        for name, data in sorted(candidates):
            try:
                image = Image.open(io.BytesIO(data)).convert("RGB")
            except OSError:
                continue
            if min(image.size) < MIN_SIDE:
                continue
            found = _dhash(image)
            if any(np.count_nonzero(found != other) <= SAME_PHOTO_BITS for other in hashes):
                continue  # the same photo again (another activity, another crop)
            hashes.append(found)
            target = name.replace("/", "_").rsplit(".", 1)[0] + ".png"
            image.save(os.path.join(CACHE, target))
            kept.append(target)
    with open(os.path.join(CACHE, "photos.txt"), "w", encoding="utf-8") as file:
        file.write("".join(f"{name}\n" for name in kept))


def _gcompris(root: str) -> list[tuple[str, bytes]]:
    found = []
    for activity, folders in GCOMPRIS_PHOTOS.items():
        rcc = os.path.join(root, "usr/share/gcompris-qt/rcc", f"{activity}.rcc")
        for path, data in _rcc_files(rcc):
            if not path.endswith((".webp", ".jpg", ".png")) or "/resource/" not in path:
                continue
            inside = path.split("/resource/", 1)[1]
            if folders and not any(f"/{folder}/" in f"/{inside}" for folder in folders):
                continue
            found.append((f"gcompris/{activity}/{inside}", data))
    return found


def _scratch(root: str) -> list[tuple[str, bytes]]:
    found = []
    for path in sorted(
        glob.glob(os.path.join(root, "usr/share/scratch/Media/Backgrounds/*/*.jpg"))
    ):
        stem = os.path.splitext(os.path.basename(path))[0]
        if stem not in SCRATCH_DRAWINGS:
            with open(path, "rb") as file:
                found.append((f"scratch/{stem}.jpg", file.read()))
    return found


def _rcc_files(path: str) -> list[tuple[str, bytes]]:
    """The files in a Qt resource file (.rcc, format versions 1-3): a tree of entries, each a
    directory (flag 2) or a file, zlib-compressed when flag 1 is set (4 bytes of size first)."""
    with open(path, "rb") as file:
        data = file.read()
    if data[:4] != b"qres":
        raise ValueError(f"{path} is not a Qt resource file")
    version, tree, payload, names = struct.unpack(">IIII", data[4:20])
    entry = 14 if version == 1 else 22

    def name(offset: int) -> str:
        length = struct.unpack(">H", data[names + offset : names + offset + 2])[0]
        return data[names + offset + 6 : names + offset + 6 + 2 * length].decode("utf-16-be")

    found: list[tuple[str, bytes]] = []
    pending = [(0, "")]
    while pending:
        index, prefix = pending.pop()
        at = tree + index * entry
        name_offset, flags = struct.unpack(">IH", data[at : at + 6])
        path_here = f"{prefix}/{name(name_offset)}" if index else ""
        if flags & 2:
            count, first = struct.unpack(">II", data[at + 6 : at + 14])
            pending += [(child, path_here) for child in range(first, first + count)]
            continue
        offset = struct.unpack(">I", data[at + 10 : at + 14])[0]
        size = struct.unpack(">I", data[payload + offset : payload + offset + 4])[0]
        raw = data[payload + offset + 4 : payload + offset + 4 + size]
        if flags & 1:
            raw = zlib.decompress(raw[4:])
        elif flags & 4:
            continue  # zstd (newer Qt): not used by the Debian 12 package
        found.append((path_here, raw))
    return found


def _dhash(image: Image.Image) -> np.ndarray:
    small = np.asarray(image.convert("L").resize((9, 8), Image.LANCZOS), np.int16)
    return (small[:, 1:] > small[:, :-1]).ravel()


if __name__ == "__main__":
    print(f"{len(real_photos())} photos in {CACHE}")
