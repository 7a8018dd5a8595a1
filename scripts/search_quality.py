"""How well `efx duplicates` and `efx similar` find copies of a photo among real photos, and
which threshold to default to: measured on REAL features (an ImageNet-trained model).

Photos: about 300 real, unrelated photos from Debian's archive (scripts/real_photos.py). Every
fifth one (sorted by name, so every category) is an original with fifteen copies of the kinds
people make: re-encoded as JPEG at quality 60 and at 25, resized to half, a 128-px thumbnail,
a 10% and a 20% crop, turned by 2 and by 5 degrees, brightened (+25%, contrast +10%), darkened
(-30%), a colour change (saturation +60% and a warm cast), gray, a white border, a screenshot
(scaled to 70% in a window with a title bar and a side panel), and captioned (a white band with
text across the bottom). An
original and its copies form a family; the other photos are distractors, and every pair of
images from different families is a negative (hard ones among them: 28 different fish, 16
windmills, several multimeters). Every model in --models embeds all of them; then, for every
threshold: precision and recall of the pairs `duplicates` groups together (also per kind of
copy), and how often `similar` puts a family member at rank 1 for each copy.

    python scripts/search_quality.py [--models lite0,tiny] [--thresholds 0.8,0.85,...]

lite0: EfficientNet-Lite0 with its ImageNet weights (../shared/models, 1280 features at 224x224:
real features, not B6's); tiny: the test suite's tiny random model; standin: the EfficientNet-B6
stand-in (random weights, B6's architecture; built into .cache/standin-b6 if missing; slow).
"""

from __future__ import annotations

import argparse
import itertools
import os
import platform
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(REPO, "tests"))
sys.path.insert(0, HERE)

import numpy as np  # noqa: E402
from PIL import Image, ImageDraw, ImageEnhance  # noqa: E402
from real_photos import real_photos  # noqa: E402

import efx  # noqa: E402

LITE0 = os.path.join(REPO, "..", "shared", "models", "efficientnet-lite0-feature-vector")
EVERY = 5  # every fifth photo is an original with copies
TRANSFORMS = {
    "jpeg60": lambda im: im,  # saved at quality 60 below
    "jpeg25": lambda im: im,  # ... and at 25: a low-quality recompression (a messenger's)
    "half": lambda im: im.resize((im.width // 2, im.height // 2), Image.BICUBIC),
    "thumb": lambda im: _thumbnail(im, 128),
    "crop10": lambda im: _cropped(im, 0.10),
    "crop20": lambda im: _cropped(im, 0.20),
    "rotate2": lambda im: im.rotate(2, resample=Image.BICUBIC, expand=False),
    "rotate5": lambda im: im.rotate(5, resample=Image.BICUBIC, expand=False),
    "brighter": lambda im: ImageEnhance.Contrast(ImageEnhance.Brightness(im).enhance(1.25)).enhance(
        1.1
    ),
    "darker": lambda im: ImageEnhance.Brightness(im).enhance(0.7),
    "colour": lambda im: _warmer(ImageEnhance.Color(im).enhance(1.6)),
    "gray": lambda im: im.convert("L").convert("RGB"),
    "border": lambda im: _bordered(im),
    "screenshot": lambda im: _screenshot(im),
    "caption": lambda im: _captioned(im),
}


def _thumbnail(image: Image.Image, side: int) -> Image.Image:
    copy = image.copy()
    copy.thumbnail((side, side), Image.BICUBIC)
    return copy


def _cropped(image: Image.Image, part: float) -> Image.Image:
    """The centre, `part` of each side cut (half from each end)."""
    dx, dy = int(image.width * part / 2), int(image.height * part / 2)
    return image.crop((dx, dy, image.width - dx, image.height - dy))


def _warmer(image: Image.Image) -> Image.Image:
    """A warm colour cast (a filter): red up, blue down."""
    red, green, blue = image.split()
    red = red.point(lambda v: min(255, int(v * 1.12)))
    blue = blue.point(lambda v: int(v * 0.85))
    return Image.merge("RGB", (red, green, blue))


def _bordered(image: Image.Image) -> Image.Image:
    """A white frame of a tenth of the shorter side (a printed or posted look)."""
    pad = min(image.size) // 10
    frame = Image.new("RGB", (image.width + 2 * pad, image.height + 2 * pad), "white")
    frame.paste(image, (pad, pad))
    return frame


def _screenshot(image: Image.Image) -> Image.Image:
    """The photo as seen in a screenshot: scaled to 70% inside a grey window with a title bar
    and a side panel, saved as the screen's pixels."""
    inner = image.resize((image.width * 7 // 10, image.height * 7 // 10), Image.BICUBIC)
    width, height = inner.width + inner.width // 4 + 24, inner.height + 60
    screen = Image.new("RGB", (width, height), (236, 236, 236))
    draw = ImageDraw.Draw(screen)
    draw.rectangle([0, 0, width, 28], fill=(48, 48, 56))
    draw.text((10, 8), "IMG_2041.jpg - Photos", fill="white")
    draw.rectangle([width - inner.width // 4 - 8, 36, width - 8, height - 8], fill="white")
    for row in range(5):
        draw.text((width - inner.width // 4, 44 + 16 * row), f"detail {row}", fill=(90, 90, 90))
    screen.paste(inner, (8, 40))
    return screen


def _captioned(image: Image.Image) -> Image.Image:
    copy = image.copy()
    draw = ImageDraw.Draw(copy)
    band = max(12, image.height // 10)
    draw.rectangle([0, image.height - band, image.width, image.height], fill="white")
    draw.text((6, image.height - band + 2), "when you see it  #photo  2026", fill="black")
    return copy


def make_set(root: str) -> tuple[dict[str, str], dict[str, str]]:
    """(image path -> family name, image path -> kind: original, distractor or a copy's kind)."""
    families, kinds = {}, {}
    for number, source in enumerate(real_photos()):
        stem = os.path.splitext(os.path.basename(source))[0]
        image = Image.open(source).convert("RGB")
        original = os.path.join(root, f"{stem}.png")
        image.save(original)
        families[original] = stem
        if number % EVERY:
            kinds[original] = "distractor"
            continue
        kinds[original] = "original"
        for kind, transform in TRANSFORMS.items():
            path = os.path.join(root, f"{stem}--{kind}.jpg")
            quality = {"jpeg60": 60, "jpeg25": 25}.get(kind, 92)
            transform(image).save(path, quality=quality)
            families[path], kinds[path] = stem, kind
    return families, kinds


def model_folder(name: str, work: str) -> tuple[str, int | None]:
    if name == "tiny":
        from conftest import save_tiny_model

        return save_tiny_model(os.path.join(work, "tiny")), 224
    if name == "lite0":
        if not os.path.isdir(LITE0):
            sys.exit(f"search_quality: the real-weight Lite0 model is not at {LITE0}")
        return LITE0, 224
    folder = os.path.join(REPO, ".cache", "standin-b6")
    if not os.path.exists(folder):
        from efx.standin import build_standin

        build_standin(folder, "b6")
    return folder, None


def measure(output: str, families: dict[str, str], kinds: dict[str, str], thresholds) -> None:
    paths, embeddings = efx.load(output)
    unit = embeddings / np.linalg.norm(embeddings, axis=1, keepdims=True)
    similarity = unit @ unit.T
    index = {path: i for i, path in enumerate(paths)}
    positives = {
        frozenset(pair)
        for pair in itertools.combinations(paths, 2)
        if families[pair[0]] == families[pair[1]]
    }
    negatives = len(paths) * (len(paths) - 1) // 2 - len(positives)
    print(f"  {len(paths)} images, {len(positives)} copy pairs, {negatives} negative pairs")
    family_of = np.array([families[p] for p in paths])
    different = family_of[:, None] != family_of[None, :]
    top_negative = np.sort(similarity[np.triu(different, 1)])[::-1]
    print(f"  most similar different photos: {', '.join(f'{v:.3f}' for v in top_negative[:5])}")
    for kind in TRANSFORMS:
        values = [
            similarity[index[p], index[o]]
            for p in paths
            if kinds[p] == kind
            for o in paths
            if kinds[o] == "original" and families[o] == families[p]
        ]
        print(f"  original vs {kind:10s}: min {min(values):.3f}  median {np.median(values):.3f}")
    header = "  threshold  precision  recall  groups  " + " ".join(
        f"{k[:7]:>7s}" for k in TRANSFORMS
    )
    print(header + "   (recall of original-copy pairs, per kind)")
    for threshold in thresholds:
        report = efx.duplicates(output, threshold)
        found = {
            frozenset(pair)
            for group in report["groups"]
            for pair in itertools.combinations([m["path"] for m in group["members"]], 2)
        }
        right = len(found & positives)
        precision = right / len(found) if found else 1.0
        per_kind = []
        for kind in TRANSFORMS:
            pairs = {
                frozenset((p, o))
                for p in paths
                if kinds[p] == kind
                for o in paths
                if kinds[o] == "original" and families[o] == families[p]
            }
            per_kind.append(len(pairs & found) / len(pairs))
        print(
            f"  {threshold:9.3f}  {precision:9.3f}  {right / len(positives):6.3f}  "
            f"{len(report['groups']):6d}  " + " ".join(f"{r:7.3f}" for r in per_kind)
        )
    copies = [path for path in paths if kinds[path] in TRANSFORMS]
    results = efx.similar(output, copies, k=1)
    top = sum(families[r["hits"][0]["path"]] == families[r["query"]] for r in results)
    print(f"  similar: a family member at rank 1 for {top} of {len(copies)} copies")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="lite0,tiny")
    parser.add_argument(
        "--thresholds", default="0.8,0.85,0.875,0.9,0.91,0.92,0.93,0.94,0.95,0.97,0.98,0.99"
    )
    args = parser.parse_args()
    thresholds = [float(t) for t in args.thresholds.split(",")]
    print(f"machine: {_cpu()}")
    with tempfile.TemporaryDirectory(prefix="efx-quality-") as work:
        photos = os.path.join(work, "photos")
        os.makedirs(photos)
        families, kinds = make_set(photos)
        for name in args.models.split(","):
            folder, size = model_folder(name, work)
            output = os.path.join(work, f"{name}.h5")
            efx.extract(photos, output, model=folder, image_size=size)
            print(f"{name} ({efx.info(output)['model']}, {efx.info(output)['feature_dim']} dims):")
            measure(output, families, kinds, thresholds)


def _cpu() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as file:
            model = next(line.split(":", 1)[1].strip() for line in file if "model name" in line)
    except (OSError, StopIteration):
        model = platform.processor()
    return f"{model}, {os.cpu_count()} cores"


if __name__ == "__main__":
    main()
