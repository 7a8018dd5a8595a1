"""The one decode function: every supported input to RGB float32 in [0, 1], matching Pillow."""

from __future__ import annotations

import os

import numpy as np
import pytest
import tensorflow as tf
from conftest import write_broken_images, write_good_images
from PIL import Image

from efx.config import DecodeOptions
from efx.decode.image import decode_image
from efx.decode.pipeline import failure_reason

SIZE = 48


def decode_file(path: str, size: int = SIZE) -> np.ndarray:
    return decode_image(tf.io.read_file(path), DecodeOptions(size)).numpy()


def test_every_good_format_decodes_to_rgb_in_unit_range(tmp_path):
    for rel in write_good_images(str(tmp_path)):
        image = decode_file(str(tmp_path / rel))
        assert image.shape == (SIZE, SIZE, 3), rel
        assert image.dtype == np.float32
        assert image.min() >= 0.0 and image.max() <= 1.0, rel
        assert image.std() > 0.01, rel  # a picture, not a blank placeholder


@pytest.mark.parametrize("name, save", [("p.png", {}), ("j.jpg", {"quality": 90})])
def test_decode_without_resize_equals_pillow_exactly(tmp_path, name, save):
    # Pillow is an independent decoder; at the target size no resampling is involved.
    Image.open("samples/chelsea.png").convert("RGB").crop((0, 0, SIZE, SIZE)).save(
        tmp_path / name, **save
    )
    expected = np.asarray(Image.open(tmp_path / name).convert("RGB"), np.float32) / 255
    np.testing.assert_allclose(decode_file(str(tmp_path / name)), expected, atol=1e-6)


def test_grayscale_becomes_three_equal_channels(tmp_path):
    Image.open("samples/camera.png").save(tmp_path / "g.png")
    image = decode_file(str(tmp_path / "g.png"))
    np.testing.assert_array_equal(image[..., 0], image[..., 1])
    np.testing.assert_array_equal(image[..., 0], image[..., 2])


def test_sixteen_bit_png_keeps_its_precision(tmp_path):
    ramp = np.tile(np.linspace(0, 65535, SIZE, dtype=np.uint16), (SIZE, 1))
    Image.fromarray(ramp).save(tmp_path / "deep.png")
    image = decode_file(str(tmp_path / "deep.png"))
    # Truncating to 8 bits would put every value on a multiple of 1/255.
    np.testing.assert_allclose(image[0, :, 0], ramp[0] / 65535, atol=1e-6)
    eight_bit = np.round(image * 255) / 255
    assert np.abs(image - eight_bit).max() > 1e-3


def test_animated_gif_gives_its_first_frame(tmp_path):
    red = Image.new("RGB", (SIZE, SIZE), (255, 0, 0))
    blue = Image.new("RGB", (SIZE, SIZE), (0, 0, 255))
    red.save(tmp_path / "a.gif", save_all=True, append_images=[blue], duration=50)
    image = decode_file(str(tmp_path / "a.gif"))
    assert image[..., 0].mean() > 0.9 and image[..., 2].mean() < 0.1


def test_content_decides_the_decoder_not_the_extension(tmp_path):
    Image.open("samples/chelsea.png").save(tmp_path / "really_png.jpg", format="PNG")
    assert decode_file(str(tmp_path / "really_png.jpg")).std() > 0.01


def test_broken_files_fail_with_a_reason_a_person_understands(tmp_path):
    for name, reason in write_broken_images(str(tmp_path)).items():
        with pytest.raises(tf.errors.OpError):
            decode_file(str(tmp_path / name))
        assert failure_reason(str(tmp_path / name), DecodeOptions(SIZE)) == reason


def test_animated_webp_gives_its_first_frame_without_crashing(tmp_path):
    # TensorFlow's animated-WebP decoder corrupts the heap; efx rewraps the first frame instead.
    frames = [Image.new("RGB", (32, 32), c) for c in ((255, 0, 0), (0, 0, 255))]
    frames[0].save(tmp_path / "anim.webp", save_all=True, append_images=frames[1:])
    image = decode_file(str(tmp_path / "anim.webp"))
    assert image[..., 0].mean() > 0.9 and image[..., 2].mean() < 0.1


def test_unreadable_and_missing_files_have_reasons(tmp_path):
    assert failure_reason(str(tmp_path / "gone.jpg"), DecodeOptions(SIZE)).startswith(
        "file not found"
    )
    os.symlink(tmp_path / "nowhere.jpg", tmp_path / "dangling.jpg")
    assert failure_reason(str(tmp_path / "dangling.jpg"), DecodeOptions(SIZE)).startswith(
        "file not found"
    )
    assert failure_reason(str(tmp_path), DecodeOptions(SIZE)) == "is a folder, not an image file"
