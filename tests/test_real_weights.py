"""A picture's class survives efx's decoding, on a real ImageNet classifier (EfficientNet-Lite0
with its trained weights, ../shared/models): the cat stays an Egyptian cat and the coffee an
espresso whatever container, orientation tag or colour model holds them, exactly as when
Pillow decodes them. A wrong turn, channel order or value range would change the class."""

from __future__ import annotations

import os

import numpy as np
import pytest
import tensorflow as tf
from conftest import REPO, pillow_input
from PIL import Image
from test_inputs import exif_bytes, rle_bmp, saved

import efx

# One test worker runs them all: their module-scoped fixtures are built once, not on each
# worker (make test runs pytest-xdist with --dist loadgroup).
pytestmark = pytest.mark.xdist_group("real-weights")

CLASSIFIER = os.path.join(REPO, "..", "shared", "models", "efficientnet-lite0-classifier")
SIZE = 224  # the size Lite0 was trained at
EGYPTIAN_CAT, ESPRESSO = 285, 967  # imagenet_classes.txt: one class per line, from 0


@pytest.fixture(scope="module")
def classifier() -> str:
    if not os.path.isdir(CLASSIFIER):
        if os.environ.get("CI"):
            pytest.fail(f"the real-weight classifier is missing: {CLASSIFIER}")
        pytest.skip(f"the real-weight classifier is not at {CLASSIFIER}")
    return CLASSIFIER


def photo(name: str) -> Image.Image:
    return Image.open(os.path.join(REPO, "samples", name)).convert("RGB")


def stored(image: Image.Image, orientation: int) -> Image.Image:
    """The picture as a camera stores it when it writes this EXIF orientation."""
    turn = {3: Image.Transpose.ROTATE_180, 6: Image.Transpose.ROTATE_90}
    return image.transpose(turn[orientation]) if orientation in turn else image


def variants(image: Image.Image) -> dict[str, bytes]:
    """The same picture in the containers and forms efx meets."""
    rgba = image.convert("RGBA")
    rgba.putalpha(200)
    return {
        "plain.jpg": saved(image, "JPEG", quality=92),
        "sideways-exif6.jpg": saved(stored(image, 6), "JPEG", quality=92, exif=exif_bytes(6)),
        "upside-down-exif3.png": saved(stored(image, 3), "PNG", exif=exif_bytes(3)),
        "sideways-exif6.webp": saved(stored(image, 6), "WEBP", quality=92, exif=exif_bytes(6)),
        "cmyk.jpg": saved(image.convert("CMYK"), "JPEG", quality=92),
        "rgba.png": saved(rgba, "PNG"),
        "palette.gif": saved(image.quantize(256), "GIF"),
        "bgr-would-show.bmp": saved(image, "BMP"),
    }


@pytest.fixture(scope="module")
def logits(classifier, tmp_path_factory) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Every variant of both photos, and an RLE BMP with its PNG twin, through one efx run:
    file name -> (efx's logits, the logits of Pillow's decode of the same file)."""
    folder = tmp_path_factory.mktemp("classes")
    for sample in ("chelsea.png", "coffee.jpg"):
        for name, data in variants(photo(sample)).items():
            (folder / f"{sample.split('.')[0]}-{name}").write_bytes(data)
    (folder / "cat-rle8.bmp").write_bytes(rle_bmp(8))
    rgb = np.asarray(Image.open(folder / "cat-rle8.bmp").convert("RGB"))
    Image.fromarray(rgb).save(folder / "cat-same-pixels.png")
    output = str(folder / "logits.h5")
    summary = efx.extract(str(folder), output, model=classifier, image_size=SIZE)
    assert (summary.failed, summary.feature_dim) == (0, 1000)
    paths, ours = efx.load(output)
    model = tf.saved_model.load(classifier)
    pillow = model(tf.constant(np.stack([pillow_input(p, SIZE) for p in paths]))).numpy()
    return {os.path.basename(p): (o, t) for p, o, t in zip(paths, ours, pillow, strict=True)}


@pytest.mark.parametrize("sample, expected", [("chelsea", EGYPTIAN_CAT), ("coffee", ESPRESSO)])
def test_a_pictures_class_survives_every_container_as_with_pillow(logits, sample, expected):
    found = {name: pair for name, pair in logits.items() if name.startswith(f"{sample}-")}
    assert len(found) == len(variants(photo("coffee.jpg")))
    for name, (ours, theirs) in found.items():
        assert int(np.argmax(ours)) == expected, (name, int(np.argmax(ours)))
        assert int(np.argmax(theirs)) == expected, name  # the reference agrees
        cosine = ours @ theirs / np.linalg.norm(ours) / np.linalg.norm(theirs)
        assert cosine > 0.999, (name, cosine)


def test_an_rle_bmp_keeps_its_class(logits):
    # Decoded by Pillow inside the graph: the same class as the same pixels in a PNG.
    (bmp, _), (png, _) = logits["cat-rle8.bmp"], logits["cat-same-pixels.png"]
    np.testing.assert_allclose(bmp, png, atol=1e-4)
    assert int(np.argmax(bmp)) in (281, 282, 285)  # tabby, tiger cat, Egyptian cat: 16 colours
