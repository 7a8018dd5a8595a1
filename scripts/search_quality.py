"""How well `efx duplicates` and `efx similar` find transformed copies of a photo.

Each photo in samples/ gets four copies: re-encoded as JPEG at quality 60, resized to half, a
10% crop, and turned by 5 degrees. A photo and its copies form a family; the other photos are
the negatives. Every model in --models embeds the 30 images; then, for every threshold:
precision and recall of the pairs `duplicates` groups together, and how often `similar` puts a
family member at rank 1 for each copy.

    python scripts/search_quality.py [--models tiny,standin] [--thresholds 0.8,0.85,...]

tiny: the test suite's tiny random model; standin: the EfficientNet-B6 stand-in (random
weights, real architecture; built into .cache/standin-b6 if missing). Neither is the real
module: these figures test the method, not the real embeddings.
"""

from __future__ import annotations

import argparse
import itertools
import os
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(REPO, "tests"))

from PIL import Image  # noqa: E402

import efx  # noqa: E402

SAMPLES = os.path.join(REPO, "samples")
TRANSFORMS = {
    "jpeg60": lambda im: im,  # saved at quality 60 below
    "half": lambda im: im.resize((im.width // 2, im.height // 2), Image.BICUBIC),
    "crop10": lambda im: im.crop(
        (im.width // 20, im.height // 20, im.width - im.width // 20, im.height - im.height // 20)
    ),
    "rotate5": lambda im: im.rotate(5, resample=Image.BICUBIC, expand=False),
}


def make_families(root: str) -> dict[str, str]:
    """image path -> family name: each sample photo and its four transformed copies."""
    families = {}
    for name in sorted(os.listdir(SAMPLES)) + sorted(
        os.path.join("space", n) for n in os.listdir(os.path.join(SAMPLES, "space"))
    ):
        if not name.endswith((".jpg", ".png")):
            continue
        stem = os.path.splitext(os.path.basename(name))[0]
        image = Image.open(os.path.join(SAMPLES, name)).convert("RGB")
        original = os.path.join(root, f"{stem}.png")
        image.save(original)
        families[original] = stem
        for kind, transform in TRANSFORMS.items():
            path = os.path.join(root, f"{stem}-{kind}.jpg")
            transform(image).save(path, quality=60 if kind == "jpeg60" else 92)
            families[path] = stem
    return families


def model_folder(name: str, work: str) -> tuple[str, int | None]:
    if name == "tiny":
        from conftest import save_tiny_model

        return save_tiny_model(os.path.join(work, "tiny")), 224
    folder = os.path.join(REPO, ".cache", "standin-b6")
    if not os.path.exists(folder):
        from efx.standin import build_standin

        build_standin(folder, "b6")
    return folder, None


def measure(output: str, families: dict[str, str], thresholds: list[float]) -> None:
    positives = {
        frozenset(pair)
        for pair in itertools.combinations(families, 2)
        if families[pair[0]] == families[pair[1]]
    }
    print(f"  {len(families)} images, {len(positives)} duplicate pairs")
    print("  threshold  precision  recall  groups")
    for threshold in thresholds:
        report = efx.duplicates(output, threshold)
        found = {
            frozenset(pair)
            for group in report["groups"]
            for pair in itertools.combinations([m["path"] for m in group["members"]], 2)
        }
        right = len(found & positives)
        precision = right / len(found) if found else 1.0
        print(
            f"  {threshold:9.3f}  {precision:9.3f}  {right / len(positives):6.3f}  "
            f"{len(report['groups']):6d}"
        )
    copies = [path for path in families if "-" in os.path.basename(path)]
    results = efx.similar(output, copies, k=1)
    top = sum(families[r["hits"][0]["path"]] == families[r["query"]] for r in results)
    print(f"  similar: a family member at rank 1 for {top} of {len(copies)} copies")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="tiny,standin")
    parser.add_argument("--thresholds", default="0.8,0.85,0.9,0.93,0.95,0.97,0.98,0.99")
    args = parser.parse_args()
    thresholds = [float(t) for t in args.thresholds.split(",")]
    with tempfile.TemporaryDirectory(prefix="efx-quality-") as work:
        photos = os.path.join(work, "photos")
        os.makedirs(photos)
        families = make_families(photos)
        for name in args.models.split(","):
            folder, size = model_folder(name, work)
            output = os.path.join(work, f"{name}.h5")
            efx.extract(list(families), output, model=folder, image_size=size)
            print(f"{name} ({efx.info(output)['model']}):")
            measure(output, families, thresholds)


if __name__ == "__main__":
    main()
