"""Model loading: short names, local folders, tarballs, and the stand-in's labelling."""

from __future__ import annotations

import os

import pytest
from conftest import SAMPLES, TINY_DIM, run_cli

import efx
from efx.errors import EfxError
from efx.model import DEFAULT_MODEL, MODELS, load_model, resolve_model


def test_short_names_carry_native_sizes():
    assert resolve_model("b6").image_size == 528
    assert resolve_model("B0").image_size == 224
    assert resolve_model(DEFAULT_MODEL) == MODELS["b6"]
    assert DEFAULT_MODEL == "https://tfhub.dev/tensorflow/efficientnet/b6/feature-vector/1"


@pytest.mark.parametrize("backend", ["tensorflow", "openvino"])
def test_a_flexible_model_efx_does_not_know_runs_at_528_with_a_note(
    tiny_tarball, good_dir, tmp_path, monkeypatch, backend
):
    """The README's offline path: the real module's tarball accepts any size and names none."""
    monkeypatch.setenv("EFX_CACHE_DIR", str(tmp_path / "efx-cache"))
    source, rels = good_dir
    output = str(tmp_path / "o.h5")
    result = run_cli("extract", "--model", tiny_tarball, "--backend", backend, source, output)
    assert result.exit_code == 0, result.stderr
    note = "efx: note: the model accepts any input size and does not say which it was trained at"
    assert result.stderr.count(note) == 1, result.stderr
    assert "using 528x528 (EfficientNet-B6's); pass --image-size to use another" in result.stderr
    info = efx.info(output)
    assert (info["image_size"], info["count"]) == (528, len(rels))


def test_feature_dim_is_read_from_the_model(tiny_model):
    loaded = load_model(resolve_model(tiny_model), 32)
    assert loaded.feature_dim == TINY_DIM
    assert loaded.standin is False
    assert loaded.name == tiny_model


def test_local_tarball_is_unpacked_once_and_loaded(tiny_tarball, tmp_path, monkeypatch):
    monkeypatch.setenv("EFX_CACHE_DIR", str(tmp_path / "efx-cache"))
    first = load_model(resolve_model(tiny_tarball), 32)
    assert first.feature_dim == TINY_DIM
    unpacked = list((tmp_path / "efx-cache" / "unpacked").iterdir())
    assert len(unpacked) == 1
    load_model(resolve_model(tiny_tarball), 32)
    assert list((tmp_path / "efx-cache" / "unpacked").iterdir()) == unpacked


def test_a_tarball_without_a_savedmodel_is_refused(tmp_path, monkeypatch):
    import tarfile

    monkeypatch.setenv("EFX_CACHE_DIR", str(tmp_path / "efx-cache"))
    (tmp_path / "readme.txt").write_text("hi")
    archive = tmp_path / "bad.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(tmp_path / "readme.txt", arcname="readme.txt")
    with pytest.raises(EfxError, match="holds no SavedModel"):
        load_model(resolve_model(str(archive)), 32)
    assert os.listdir(tmp_path / "efx-cache" / "unpacked") == []  # no scratch folder left


def test_standin_is_labelled_everywhere(tiny_model, tmp_path):
    """The stand-in's outputs say so in the stored model name and a flag, never passing as real,
    whichever backend runs it."""
    import shutil

    from efx.model import STANDIN_MARKER
    from efx.standin import build_standin

    folder = str(tmp_path / "standin-b0")
    build_standin(folder, "b0")
    output = str(tmp_path / "o.h5")
    # TensorFlow runs B0 (OpenVINO would convert it first); OpenVINO runs a copy of the tiny
    # model carrying the same marker.
    summary = efx.extract(
        os.path.join(SAMPLES, "space"), output, model=folder, image_size=64, backend="tensorflow"
    )
    assert summary.standin is True
    assert summary.feature_dim == 1280  # EfficientNet-B0's pooled features
    info = efx.info(output)
    assert info["model"].startswith("STAND-IN EfficientNet-B0 architecture, random weights")
    assert "not real embeddings" in info["model"]
    # Its native size comes with it.
    assert resolve_model(folder).image_size == 224
    marked = shutil.copytree(tiny_model, tmp_path / "marked")
    shutil.copy(os.path.join(folder, STANDIN_MARKER), marked)
    on_openvino = efx.extract(os.path.join(SAMPLES, "space"), str(tmp_path / "ov.h5"),
                              model=str(marked), image_size=64, backend="openvino")  # fmt: skip
    assert (on_openvino.standin, on_openvino.backend) == (True, "openvino")
    assert "not real embeddings" in efx.info(str(tmp_path / "ov.h5"))["model"]
