"""Start-up time without changed results: a one-image run is computed in a batch of one where
the backend's rows do not depend on the batch (OpenVINO), in the usual batch otherwise
(TensorFlow), and is bit for bit the row the same image gets in a larger run."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest
from conftest import run_efx, write_good_images

import efx


@pytest.mark.parametrize("backend", ["openvino", "tensorflow"])
def test_one_image_alone_is_bit_equal_to_its_row_in_a_larger_run(keras_model, tmp_path, backend):
    images = [
        str(tmp_path / "images" / name) for name in write_good_images(str(tmp_path / "images"))
    ]
    many = efx.extract(str(tmp_path / "images"), str(tmp_path / "many.h5"), model=keras_model,
                       image_size=64, backend=backend)  # fmt: skip
    assert many.batch_size == 8 and many.embedded >= 9
    paths, rows = efx.load(str(tmp_path / "many.h5"))
    one = sorted(images)[3]
    alone = efx.extract(one, str(tmp_path / "one.h5"), model=keras_model, image_size=64,
                        backend=backend)  # fmt: skip
    assert alone.batch_size == (1 if backend == "openvino" else 8)
    (path,), (row,) = efx.load(str(tmp_path / "one.h5"))
    assert np.array_equal(row, rows[paths.index(path)])


def test_the_command_reports_its_moments_and_leaves_at_once_with_its_status(tiny_model, tmp_path):
    """EFX_TIMINGS=1: one JSON line of the run's moments; the exit status survives the
    process's quick exit (no teardown), and so does everything written before it."""
    os.makedirs(tmp_path / "in")
    write_good_images(str(tmp_path / "src"))
    shutil.copy(tmp_path / "src" / "a_cat.jpg", tmp_path / "in" / "a.jpg")
    env = {**os.environ, "EFX_TIMINGS": "1"}
    done = run_efx("extract", str(tmp_path / "in"), str(tmp_path / "o.h5"), "-m", tiny_model,
                   "--json", env=env)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["embedded"] == 1
    (line,) = [x for x in done.stderr.splitlines() if x.startswith("efx-timings ")]
    moments = json.loads(line.split(" ", 1)[1])
    order = ["started", "planned", "model loaded", "first rows written", "written", "finished"]
    assert [moments[name] for name in order] == sorted(moments[name] for name in order)
    assert efx.info(str(tmp_path / "o.h5"))["complete"]
    strict = run_efx("extract", str(tmp_path / "in"), str(tmp_path / "b.h5"), "-m", tiny_model,
                     "--strict", "--max-pixels", "1")  # fmt: skip
    assert strict.returncode == 1 and "failed (--strict)" in strict.stderr
