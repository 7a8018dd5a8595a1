"""efx bench and --precision: real models, real files; no timing asserted (figures vary)."""

from __future__ import annotations

import importlib.util
import json
import os
import statistics
import subprocess

import numpy as np
import pytest
from conftest import EFX, SAMPLES
from conftest import run_efx as run

import efx
from efx.model import _cpu_has_bfloat16

HAVE_OPENVINO = importlib.util.find_spec("openvino") is not None


def test_bench_reports_both_backends_speeds_ratios_memory_and_device(tiny_model, tmp_path):
    result = subprocess.run(
        [EFX, "bench", "-m", tiny_model, "--image-size", "48", "--count", "6", "--size",
         "320x240", "--rounds", "2", "--json"],
        capture_output=True, text=True, timeout=300,
        env={**os.environ, "EFX_CACHE_DIR": str(tmp_path / "cache")},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["images"] == 6 and report["device"] == "CPU"
    backends = [figures["backend"] for figures in report["results"]]
    assert backends == (["tensorflow", "openvino"] if HAVE_OPENVINO else ["tensorflow"])
    for figures in report["results"]:
        assert figures["model_alone"] > 0 and figures["pipeline"] > 0
        assert len(figures["rounds"]) == 2
        ratios = [r["pipeline"] / r["model_alone"] for r in figures["rounds"]]
        assert figures["ratio"] == pytest.approx(statistics.median(ratios))
    assert 100 < report["peak_rss_mib"] < 8000
    assert result.stderr == ""  # TensorFlow's chatter hidden


def test_bench_on_given_photos_and_in_words(tiny_model):
    result = run(
        "bench", SAMPLES, "-m", tiny_model, "--image-size", "48", "--rounds", "1",
        "--backend", "tensorflow",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    for line in ("model alone", "pipeline", "ratio", "peak memory:", "images:       6 ("):
        assert line in result.stdout, result.stdout
    (row,) = [line for line in result.stdout.splitlines() if line.startswith("tensorflow ")]
    assert row.split()[1] == "float32" and len(row.split()) == 5
    assert "round 1, tensorflow:" in result.stderr


def test_bench_rejects_a_bad_size():
    result = run("bench", "--size", "big")
    assert result.returncode == 1 and "--size must be WIDTHxHEIGHT" in result.stderr


def test_float16_is_refused_on_cpu_with_the_alternative(tiny_model, tmp_path):
    result = run(
        "extract", SAMPLES, str(tmp_path / "o.h5"), "-m", tiny_model, "--image-size", "48",
        "--precision", "float16", "--backend", "tensorflow",
    )  # fmt: skip
    assert result.returncode == 1
    assert "--precision float16 needs a GPU" in result.stderr and "bfloat16" in result.stderr


@pytest.mark.skipif(not _cpu_has_bfloat16(), reason="this CPU has no bfloat16 instructions")
def test_tensorflow_bfloat16_embeddings_stay_close_to_float32_and_are_labelled(
    keras_model, tmp_path
):
    outputs = {}
    for precision in ("float32", "bfloat16"):
        outputs[precision] = str(tmp_path / f"{precision}.h5")
        result = run(
            "extract", SAMPLES, outputs[precision], "-m", keras_model, "--image-size", "96",
            "--precision", precision, "--backend", "tensorflow",
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
    assert efx.info(outputs["bfloat16"])["precision"] == "bfloat16"
    full, half = efx.load(outputs["float32"])[1], efx.load(outputs["bfloat16"])[1]
    cosine = (full * half).sum(1) / (np.linalg.norm(full, axis=1) * np.linalg.norm(half, axis=1))
    assert cosine.min() >= 0.999, cosine
    assert not np.array_equal(full, half)  # the rewrite really ran in 16 bits


def test_resume_refuses_another_precision(tiny_model, tmp_path):
    output = str(tmp_path / "o.h5")
    efx.extract(SAMPLES, output, model=tiny_model, image_size=48)
    with pytest.raises(efx.EfxError, match="precision: 'float32' there, 'bfloat16' here"):
        efx.extract(
            SAMPLES, output, model=tiny_model, image_size=48, precision="bfloat16", resume=True
        )
