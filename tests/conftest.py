"""Shared fixtures: real images on disk (good, odd and broken) and small real SavedModels."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
# No efx serve of the developer's own answers the suite's runs; tests/test_serve.py starts its
# own servers and points EFX_SOCKET at them.
os.environ["EFX_SOCKET"] = ""

import numpy as np
import pytest
from PIL import Image, ImageOps

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SAMPLES = os.path.join(REPO, "samples")
EFX = os.path.join(os.path.dirname(sys.executable), "efx")  # the installed command
TINY_DIM = 16  # deliberately not 2304: efx must read the dimension from the model
KERAS_DIM = 24


def run_efx(*args: str, **options) -> subprocess.CompletedProcess:
    """The installed `efx` command in a process of its own (signals, exit codes, stdin, fd 2)."""
    options.setdefault("timeout", 300)
    return subprocess.run([EFX, *args], capture_output=True, text=True, **options)


def run_cli(*args: str, input: bytes | None = None):
    """`efx` in this process through Click's runner; a bug's exception is raised, not kept."""
    from click.testing import CliRunner

    from efx.cli import main

    return CliRunner().invoke(main, list(args), input=input, catch_exceptions=False)


def ctrl_c_after(seconds: float, *args: str) -> tuple[int, str]:
    """`efx ARGS` in a process of its own, Ctrl-C'd (SIGINT, as in a terminal) after `seconds`:
    its exit status and stderr, which must come within 30 s of the signal."""
    process = subprocess.Popen(
        [EFX, *args],
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        time.sleep(seconds)
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=30)
    finally:
        process.kill()
    return process.returncode, stderr


def assert_user_error(result, message: str) -> None:
    """Exit 1 with `efx: ...` on stderr naming `message`, and no traceback."""
    stderr = result.stderr
    assert result.exit_code == 1 if hasattr(result, "exit_code") else result.returncode == 1, stderr
    assert message in stderr, stderr
    assert stderr.startswith("efx: "), stderr
    assert "Traceback" not in stderr + result.stdout


def sample(name: str) -> Image.Image:
    return Image.open(os.path.join(SAMPLES, name)).convert("RGB")


def pillow_input(path: str, size: int) -> np.ndarray:
    """An independently prepared model input: Pillow decodes (turning by EXIF orientation, as
    viewers do, and scaling large JPEGs in the decoder) and resizes; float32 RGB
    [size, size, 3] in [0, 1]."""
    image = Image.open(path)
    if image.format == "JPEG":
        # Large JPEGs: libjpeg's reduced-scale decode (Pillow's draft) to the smallest scale
        # that keeps both sides >= size, as efx does; the same library and DCT, so same pixels.
        image.draft(image.mode, (size, size))
    image = ImageOps.exif_transpose(image)
    if image.mode.startswith("I"):  # 16-bit grayscale: keep the precision
        gray = np.asarray(image, dtype=np.float32) / 65535.0
        rgb = np.stack([gray] * 3, axis=-1)
    else:
        rgb = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
    # Pillow's BILINEAR on float channels is the same antialiased triangle filter efx uses.
    channels = [
        np.asarray(Image.fromarray(rgb[:, :, c], mode="F").resize((size, size), Image.BILINEAR))
        for c in range(3)
    ]
    return np.stack(channels, axis=-1)


def write_good_images(root: str) -> list[str]:
    """Real photos in several formats and modes, in nested folders; returns sorted rel paths."""
    cat = sample("chelsea.png")
    coffee = sample("coffee.jpg")
    os.makedirs(os.path.join(root, "nested", "deeper"), exist_ok=True)
    cat.save(os.path.join(root, "a_cat.jpg"), quality=92)
    coffee.save(os.path.join(root, "B_coffee.PNG"))  # upper-case extension
    cat.convert("L").save(os.path.join(root, "nested", "gray.png"))
    coffee.convert("P", palette=Image.Palette.ADAPTIVE).save(
        os.path.join(root, "nested", "palette.png")
    )
    rgba = cat.convert("RGBA")
    rgba.putalpha(200)
    rgba.save(os.path.join(root, "nested", "rgba.png"))
    sixteen = (np.asarray(coffee.convert("L"), dtype=np.uint16) * 257).astype(np.uint16)
    Image.fromarray(sixteen).save(os.path.join(root, "nested", "sixteen.png"))
    frames = [cat.resize((120, 80)), coffee.resize((120, 80))]
    frames[0].save(
        os.path.join(root, "nested", "deeper", "anim.gif"),
        save_all=True,
        append_images=frames[1:],
        duration=100,
        loop=0,
    )
    coffee.save(os.path.join(root, "nested", "deeper", "coffee.bmp"))
    cat.save(os.path.join(root, "nested", "deeper", "cat.webp"), quality=90)
    Path(root, "notes.txt").write_text("not walked")  # not an image extension: skipped
    return sorted(
        [
            "B_coffee.PNG",
            "a_cat.jpg",
            "nested/deeper/anim.gif",
            "nested/deeper/cat.webp",
            "nested/deeper/coffee.bmp",
            "nested/gray.png",
            "nested/palette.png",
            "nested/rgba.png",
            "nested/sixteen.png",
        ]
    )


def write_broken_images(root: str) -> dict[str, str]:
    """Files with image extensions that cannot be embedded, with the reason efx should give."""
    os.makedirs(root, exist_ok=True)
    buffer_path = os.path.join(root, "whole.jpg")
    sample("chelsea.png").save(buffer_path, quality=90)
    data = Path(buffer_path).read_bytes()
    os.remove(buffer_path)
    Path(root, "truncated.jpg").write_bytes(data[: len(data) // 3])
    Path(root, "empty.png").write_bytes(b"")
    Path(root, "text.jpg").write_text("this is not an image\n")
    sample("coffee.jpg").save(os.path.join(root, "tiff.png"), format="TIFF")
    return {
        "empty.png": "empty file",
        "text.jpg": "not an image (text file)",
        "tiff.png": "unsupported format: TIFF",
        "truncated.jpg": "truncated or corrupt JPEG",
    }


@pytest.fixture
def good_dir(tmp_path):
    root = tmp_path / "photos"
    root.mkdir()
    rels = write_good_images(str(root))
    return str(root), rels


def save_tiny_model(folder: str, sleep_seconds: float = 0.0, dim: int = TINY_DIM) -> str:
    """A tiny TF2 SavedModel with the module's interface: float32 [n, h, w, 3] -> [n, dim]
    (16: TINY_DIM); with `sleep_seconds`, each call first sleeps (a tf.data sleep: no CPU) as
    long as the file `sleep_file(folder)` says, `sleep_seconds` to begin with (`calls_sleep`
    changes it: a test's set-up runs need not wait)."""
    import tensorflow as tf

    if sleep_seconds:
        with open(sleep_file(folder), "w") as file:
            file.write(str(int(sleep_seconds * 1e6)))

    def sleep() -> tf.Tensor:
        one = tf.data.Dataset.from_tensors(tf.constant(0, tf.int64))
        microseconds = tf.strings.to_number(tf.io.read_file(sleep_file(folder)), tf.int64)
        slept = tf.raw_ops.SleepDataset(
            input_dataset=one._variant_tensor,
            sleep_microseconds=microseconds,
            output_types=[tf.int64],
            output_shapes=[[]],
        )
        dataset = tf.data.experimental.from_variant(slept, one.element_spec)
        return dataset.reduce(tf.constant(0, tf.int64), lambda n, _: n + 1)

    class Tiny(tf.Module):
        def __init__(self) -> None:
            super().__init__()
            self.kernel = tf.Variable(tf.random.stateless_normal([5, 5, 3, dim], seed=[1, 2]))

        @tf.function(input_signature=[tf.TensorSpec([None, None, None, 3], tf.float32)])
        def __call__(self, images):
            if sleep_seconds:  # Python-level: the sleep is in the graph or not at all
                with tf.control_dependencies([sleep()]):
                    images = tf.identity(images)
            features = tf.nn.conv2d(images, self.kernel, strides=4, padding="SAME")
            return tf.reduce_mean(tf.nn.relu(features), axis=[1, 2])

    tf.saved_model.save(Tiny(), folder)
    return folder


def sleep_file(model: str) -> str:
    """Where a slow tiny model reads how long each call sleeps (microseconds), beside it."""
    return os.path.normpath(model) + ".sleep"


def no_sleep(model: str):
    """The block's runs on `model` at full speed, if it is the slow model (see calls_sleep)."""
    exists = os.path.exists(sleep_file(model))
    return calls_sleep(model, 0) if exists else contextlib.nullcontext()


@contextlib.contextmanager
def calls_sleep(model: str, seconds: float):
    """The slow model's calls sleep `seconds` (0: the tiny model's speed) during the block, in
    this process and in every efx process started meanwhile; SLOW_CALL_SECONDS again after."""
    with open(sleep_file(model), "w") as file:
        file.write(str(int(seconds * 1e6)))
    try:
        yield
    finally:
        with open(sleep_file(model), "w") as file:
            file.write(str(int(SLOW_CALL_SECONDS * 1e6)))


@pytest.fixture(scope="session", autouse=True)
def caches_below_the_sessions_temporary_folder(tmp_path_factory):
    """Every cache a run fills (efx's OpenVINO conversions and unpacked models, Hugging Face's,
    Chromium's) goes below this session's temporary folder, not the developer's ~/.cache: the
    suite writes nowhere else. One per test worker, shared by its tests and the processes they
    start; a test about a cache sets its own."""
    caches = str(tmp_path_factory.mktemp("caches"))
    os.environ["XDG_CACHE_HOME"] = caches
    os.environ.pop("EFX_CACHE_DIR", None)
    os.environ.pop("HF_HOME", None)
    os.environ.pop("HF_DATASETS_CACHE", None)
    return caches


def pytest_runtest_setup(item: pytest.Item) -> None:
    """With `--dist loadgroup`, a grouped test's id ends in @GROUP on its worker. pytest 9.2
    changed node ids and pytest-xdist 3.8's grouping stopped, silently (pytest-xdist#1386): the
    Ray tests ran on both workers, each starting a Ray of its own. Fail them, saying so."""
    grouped = any(item.iter_markers("xdist_group"))
    if grouped and getattr(item.config.option, "loadgroup", False) and "@" not in item.nodeid:
        pytest.fail(
            "--dist loadgroup did not group this test: this pytest and pytest-xdist do not work "
            "together (pytest-xdist#1386); install the pytest that pyproject.toml names",
            pytrace=False,
        )


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> str:
    return save_tiny_model(str(tmp_path_factory.mktemp("models") / "tiny"))


SLOW_CALL_SECONDS = 0.5


@pytest.fixture(scope="session")
def slow_model(tmp_path_factory) -> str:
    """The tiny model, but each call first sleeps SLOW_CALL_SECONDS, so that a signal can be
    sent while a batch is surely inside the model. TensorFlow only (OpenVINO has no conversion
    rule for the sleep)."""
    folder = str(tmp_path_factory.mktemp("models") / "slow")
    return save_tiny_model(folder, sleep_seconds=SLOW_CALL_SECONDS)


@pytest.fixture(scope="session")
def keras_model(tmp_path_factory) -> str:
    """A small Keras 2 model exported the way the real module was (tf.saved_model.save)."""
    import tensorflow as tf
    import tf_keras

    tf_keras.utils.set_random_seed(0)
    inputs = tf_keras.Input(shape=(None, None, 3))
    x = tf_keras.layers.Conv2D(KERAS_DIM, 3, strides=2)(inputs)
    x = tf_keras.layers.BatchNormalization()(x)
    outputs = tf_keras.layers.GlobalAveragePooling2D()(x)
    folder = str(tmp_path_factory.mktemp("models") / "keras")
    tf.saved_model.save(tf_keras.Model(inputs, outputs), folder)
    return folder


@pytest.fixture
def tiny_tarball(tiny_model, tmp_path) -> str:
    """The tiny model as TF-Hub serves models: a .tar.gz of the SavedModel folder's contents."""
    base = str(tmp_path / "tiny-model")
    return shutil.make_archive(base, "gztar", root_dir=tiny_model)
