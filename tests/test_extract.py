"""End to end: real images through the real pipeline and real SavedModels into real files."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import h5py
import numpy as np
import pytest
from conftest import (
    KERAS_DIM,
    REPO,
    SAMPLES,
    TINY_DIM,
    pillow_input,
    run_cli,
    write_broken_images,
    write_good_images,
)
from PIL import Image

import efx

SIZE = 64  # small input size keeps the tiny models fast; decode + resize are the same code


@pytest.fixture
def mixed_dir(tmp_path):
    """Good photos in nested folders plus broken files in one of them."""
    root = tmp_path / "mixed"
    root.mkdir()
    good = write_good_images(str(root))
    broken = write_broken_images(str(root / "broken"))
    return str(root), good, {f"broken/{name}": reason for name, reason in broken.items()}


def reference_embedding(model_dir: str, path: str, size: int) -> np.ndarray:
    """The model applied to an independently prepared input: Pillow decode and resize."""
    import tensorflow as tf

    batch = tf.constant(pillow_input(path, size)[None])
    return tf.saved_model.load(model_dir)(batch).numpy()[0]


@pytest.mark.parametrize("output_name", ["out.h5", "shards"])
def test_mixed_folder_embeds_good_images_in_order_and_reports_broken_ones(
    mixed_dir, tiny_model, tmp_path, output_name
):
    root, good, broken = mixed_dir
    output = str(tmp_path / output_name)
    result = run_cli(
        "extract",
        root,
        output,
        "--model",
        tiny_model,
        "--image-size",
        str(SIZE),
        "--shard-size",
        "4",
        "--json",
    )
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["embedded"] == len(good)
    assert summary["failed"] == len(broken)
    assert summary["feature_dim"] == TINY_DIM
    assert summary["format"] == ("hdf5" if output_name.endswith(".h5") else "npy")

    paths, embeddings = efx.load(output)
    assert paths == [os.path.join(root, rel) for rel in good]
    assert embeddings.shape == (len(good), TINY_DIM)
    assert embeddings.dtype == np.float32
    assert np.isfinite(embeddings).all()
    # Different pictures give different embeddings (no placeholder rows slipped through).
    assert len({row.tobytes() for row in embeddings}) == len(good)

    info = efx.info(output)
    assert info["complete"] is True
    assert info["image_size"] == SIZE
    assert info["feature_dim"] == TINY_DIM
    assert info["model"] == tiny_model
    reasons = {os.path.relpath(f["path"], root): f["error"] for f in info["failures"]}
    assert reasons == broken


def test_hdf5_layout_and_attributes(good_dir, tiny_model, tmp_path):
    root, good = good_dir
    output = str(tmp_path / "out.hdf5")
    efx.extract(root, output, model=tiny_model, image_size=SIZE)
    with h5py.File(output, "r") as file:
        assert file["embeddings"].dtype == np.float32
        assert file["embeddings"].shape == (len(good), TINY_DIM)
        assert file["embeddings"].chunks is not None
        assert file["paths"].shape == (len(good),)
        assert file["failures/paths"].shape == (0,)
        assert file["failures/errors"].shape == (0,)
        attrs = dict(file.attrs)
        for key in (
            "model",
            "image_size",
            "feature_dim",
            "efx_version",
            "tensorflow_version",
            "created",
            "complete",
        ):
            assert key in attrs, key
        assert bool(attrs["complete"]) is True
        assert attrs["feature_dim"] == TINY_DIM
        assert attrs["efx_version"] == efx.__version__


def test_npy_shards_are_plain_numpy_and_text(good_dir, tiny_model, tmp_path):
    root, good = good_dir
    output = tmp_path / "shards"
    efx.extract(root, str(output), model=tiny_model, image_size=SIZE, shard_size=4)
    manifest = json.loads((output / "manifest.json").read_text())
    assert manifest["complete"] is True
    assert manifest["count"] == len(good)
    assert [s["rows"] for s in manifest["shards"]] == [4, 4, 1]
    rows = []
    for number, shard in enumerate(manifest["shards"]):
        assert shard["embeddings"] == f"embeddings-{number:05d}.npy"
        block = np.load(output / shard["embeddings"], allow_pickle=False)
        lines = (output / shard["paths"]).read_text(encoding="utf-8").splitlines()
        assert block.shape == (shard["rows"], TINY_DIM) and block.dtype == np.float32
        assert len(lines) == shard["rows"]
        rows += lines
    assert rows == [os.path.join(root, rel) for rel in good]
    assert (output / "failures.jsonl").read_text() == ""


def test_embeddings_equal_the_model_on_pillow_prepared_inputs(tmp_path, tiny_model):
    root = tmp_path / "photos"
    root.mkdir()
    Image.open("samples/chelsea.png").save(root / "1_cat.png")  # downscaled 451x300 -> 64
    Image.open("samples/space/astronaut.jpg").save(root / "2_astronaut.jpg", quality=95)
    Image.open("samples/coffee.jpg").resize((40, 30)).save(root / "3_small.png")  # upscaled
    output = str(tmp_path / "out.h5")
    efx.extract(str(root), output, model=tiny_model, image_size=SIZE)
    paths, embeddings = efx.load(output)
    for path, row in zip(paths, embeddings, strict=True):
        expected = reference_embedding(tiny_model, path, SIZE)
        # The inputs agree to ~3e-7 (JPEG decoded with libjpeg's accurate DCT as Pillow does;
        # the same triangle filter); 1e-5 leaves room for float summation order in the model.
        np.testing.assert_allclose(row, expected, rtol=1e-4, atol=1e-5)


def test_keras_exported_model_runs_with_its_own_feature_dim(good_dir, keras_model, tmp_path):
    root, good = good_dir
    summary = efx.extract(root, str(tmp_path / "k.h5"), model=keras_model, image_size=SIZE)
    assert summary.feature_dim == KERAS_DIM
    assert summary.embedded == len(good)


def test_same_input_gives_same_rows_whatever_the_batch_size(good_dir, tiny_model, tmp_path):
    root, _ = good_dir
    first = str(tmp_path / "b1.h5")
    second = str(tmp_path / "b5.h5")
    efx.extract(root, first, model=tiny_model, image_size=SIZE, batch_size=1)
    efx.extract(root, second, model=tiny_model, image_size=SIZE, batch_size=5)
    paths_1, emb_1 = efx.load(first)
    paths_5, emb_5 = efx.load(second)
    assert paths_1 == paths_5
    np.testing.assert_allclose(emb_1, emb_5, rtol=1e-5, atol=1e-6)


def test_sources_keep_the_order_given_and_files_are_taken_as_named(good_dir, tiny_model, tmp_path):
    root, good = good_dir
    single = os.path.join(root, "nested", "gray.png")
    output = str(tmp_path / "o.h5")
    efx.extract(
        [single, os.path.join(root, "nested", "deeper")], output, model=tiny_model, image_size=SIZE
    )
    paths, _ = efx.load(output)
    deeper = os.path.join(root, "nested", "deeper")
    assert paths == [single] + [
        os.path.join(deeper, n) for n in ("anim.gif", "cat.webp", "coffee.bmp")
    ]


@pytest.mark.parametrize("null", [False, True])
def test_paths_from_stdin(good_dir, tiny_model, tmp_path, null):
    root, good = good_dir
    wanted = [os.path.join(root, rel) for rel in reversed(good[:3])]
    separator = "\0" if null else "\n"
    data = separator.join(wanted + [os.path.join(root, "missing.jpg")]).encode() + b"\n"
    if null:
        data = data[:-1]
    output = str(tmp_path / "stdin.h5")
    args = ["extract", "-", output, "--model", tiny_model, "--image-size", str(SIZE), "--json"]
    result = run_cli(*(args + (["-0"] if null else [])), input=data)
    assert result.exit_code == 0, result.output
    paths, _ = efx.load(output)
    assert paths == wanted  # stdin order, not sorted
    info = efx.info(output)
    assert info["failures"] == [
        {
            "path": os.path.join(root, "missing.jpg"),
            "error": "file not found (removed, or a broken symlink)",
        }
    ]


def test_strict_exits_1_after_writing_everything_else(mixed_dir, tiny_model, tmp_path):
    root, good, broken = mixed_dir
    output = str(tmp_path / "strict.h5")
    result = run_cli(
        "extract", root, output, "--model", tiny_model, "--image-size", str(SIZE), "--strict"
    )
    assert result.exit_code == 1
    assert f"efx: {len(broken)} image(s) failed (--strict)" in result.stderr
    assert len(efx.load(output)[0]) == len(good)
    assert efx.info(output)["complete"] is True


def test_summary_line_and_failure_reasons_on_stderr(mixed_dir, tiny_model, tmp_path):
    root, good, broken = mixed_dir
    output = str(tmp_path / "s.h5")
    result = run_cli("extract", root, output, "--model", tiny_model, "--image-size", str(SIZE))
    assert result.exit_code == 0
    assert result.stdout == ""
    total = len(good) + len(broken)
    assert f"efx: embedded {len(good)} of {total} images, {len(broken)} failed" in result.stderr
    assert "truncated or corrupt JPEG" in result.stderr
    quiet = run_cli(
        "extract",
        root,
        str(tmp_path / "q.h5"),
        "--model",
        tiny_model,
        "--image-size",
        str(SIZE),
        "--quiet",
    )
    assert quiet.exit_code == 0 and quiet.output == ""


def test_existing_output_is_refused_then_replaced_with_overwrite(good_dir, tiny_model, tmp_path):
    root, good = good_dir
    for name in ("o.h5", "shards"):
        output = str(tmp_path / name)
        common = ["extract", root, output, "--model", tiny_model, "--image-size", str(SIZE)]
        assert run_cli(*common).exit_code == 0
        before = efx.load(output)[0]
        refused = run_cli(*common)
        assert refused.exit_code == 1
        assert "already exists; pass --overwrite" in refused.stderr
        assert efx.load(output)[0] == before
        assert run_cli(*common, "--overwrite").exit_code == 0
        assert efx.load(output)[0] == before


def test_a_non_efx_folder_is_never_deleted(good_dir, tiny_model, tmp_path):
    root, _ = good_dir
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "thesis.tex").write_text("years of work")
    result = run_cli(
        "extract",
        root,
        str(precious),
        "--model",
        tiny_model,
        "--image-size",
        str(SIZE),
        "--overwrite",
    )
    assert result.exit_code == 1
    assert "is not empty and is not an efx output" in result.stderr
    assert (precious / "thesis.tex").read_text() == "years of work"


def test_failed_model_load_leaves_an_existing_output_untouched(good_dir, tiny_model, tmp_path):
    root, _ = good_dir
    output = str(tmp_path / "keep.h5")
    efx.extract(root, output, model=tiny_model, image_size=SIZE)
    before = efx.load(output)
    broken_model = tmp_path / "not-a-model"
    broken_model.mkdir()
    (broken_model / "saved_model.pb").write_bytes(b"garbage")
    result = run_cli("extract", root, output, "--model", str(broken_model), "--overwrite")
    assert result.exit_code == 1
    assert "could not load the SavedModel" in result.stderr
    after = efx.load(output)
    assert after[0] == before[0]
    np.testing.assert_array_equal(after[1], before[1])


def test_format_flag_overrides_the_extension(good_dir, tiny_model, tmp_path):
    root, good = good_dir
    output = str(tmp_path / "data.h5")
    efx.extract(root, output, model=tiny_model, image_size=SIZE, format="npy")
    assert os.path.isfile(os.path.join(output, "manifest.json"))
    assert len(efx.load(output)[0]) == len(good)


def test_a_library_call_leaves_the_process_as_it_found_it(good_dir, tiny_model, tmp_path):
    """Signal handlers and TensorFlow's precision rewrite are set for the run, then restored."""
    import signal

    import tensorflow as tf

    from efx.model import _cpu_has_bfloat16

    def state():
        return (
            signal.getsignal(signal.SIGINT),
            signal.getsignal(signal.SIGTERM),
            {k: v for k, v in tf.config.optimizer.get_experimental_options().items() if v},
        )  # the rewrites in force (TensorFlow cannot unset an option, only set it False)

    before = state()
    precision = "bfloat16" if _cpu_has_bfloat16() else "float32"  # bfloat16: a global rewrite
    summary = efx.extract(
        good_dir[0], str(tmp_path / "o.h5"), model=tiny_model, image_size=SIZE,
        backend="tensorflow", precision=precision,
    )  # fmt: skip
    assert summary.precision == precision
    assert state() == before


LIBRARY_CALLS = """
import sys
import efx
for verbose in (False, True):
    print(f"efx.extract(verbose={verbose})", file=sys.stderr, flush=True)
    efx.extract(sys.argv[1], f"{sys.argv[2]}-{verbose}.h5", model=sys.argv[3], verbose=verbose)
"""


def test_the_library_is_as_quiet_as_the_command_unless_verbose(tmp_path, tiny_model):
    # A PNG whose ICC profile libpng warns about: TensorFlow logs "PNG warning: iCCP ..." from
    # C++, straight to file descriptor 2, like its CUDA probes ("Could not find cuda drivers").
    folder = tmp_path / "photos"
    folder.mkdir()
    Image.open(os.path.join(SAMPLES, "chelsea.png")).save(folder / "x.png", icc_profile=b"bad" * 9)
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}  # the default
    result = subprocess.run(
        [sys.executable, "-c", LIBRARY_CALLS, str(folder), str(tmp_path / "o"), tiny_model],
        capture_output=True, text=True, env=env, cwd=REPO, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    quiet, loud = result.stderr.split("efx.extract(verbose=True)\n")
    assert quiet == "efx.extract(verbose=False)\n"  # not even TensorFlow's import-time lines
    assert "PNG warning: iCCP" in loud
