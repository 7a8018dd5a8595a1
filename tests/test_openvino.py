"""--backend openvino|tensorflow|auto: the same SavedModels through both runtimes, the fallback,
the conversion cache, and that OpenVINO's telemetry never runs."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys

import h5py
import numpy as np
import pytest
from conftest import EFX, SAMPLES, run_cli, write_broken_images

import efx
from efx.model import _cpu_has_bfloat16

# Asked without importing it: an `import openvino` here would load OpenVINO's telemetry into the
# test process (efx hides it only from an import of its own), and every conversion after it would
# fork a process to send events.
if importlib.util.find_spec("openvino") is None:
    pytest.skip(
        "OpenVINO is an optional extra: pip install 'efx[openvino]'", allow_module_level=True
    )


@pytest.fixture(autouse=True)
def no_telemetry_in_this_process():
    """efx's OpenVINO runs in this process never load OpenVINO's telemetry client."""
    yield
    assert sys.modules.get("openvino_telemetry", None) is None, "OpenVINO telemetry was imported"


@pytest.fixture(autouse=True)
def own_cache(tmp_path, monkeypatch):
    """Each test converts into its own cache, so that none sees another's conversions."""
    monkeypatch.setenv("EFX_CACHE_DIR", str(tmp_path / "efx-cache"))


@pytest.fixture(scope="module")
def area_model(tmp_path_factory) -> str:
    """A model with an op OpenVINO has no conversion rule for (ResizeArea)."""
    import tensorflow as tf

    class Area(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None, None, None, 3], tf.float32)])
        def __call__(self, images):
            return tf.reduce_mean(tf.image.resize(images, [8, 8], method="area"), axis=[1, 2])

    folder = str(tmp_path_factory.mktemp("models") / "area")
    tf.saved_model.save(Area(), folder)
    return folder


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def both_backends(model: str, source: str, tmp_path, **options) -> dict[str, str]:
    outputs = {}
    for backend in ("tensorflow", "openvino"):
        outputs[backend] = str(tmp_path / f"{backend}.h5")
        summary = efx.extract(source, outputs[backend], model=model, backend=backend, **options)
        assert summary.backend == backend
        assert efx.info(outputs[backend])["backend"] == backend
    return outputs


@pytest.mark.parametrize("fixture", ["tiny_model", "keras_model"])
def test_both_backends_give_the_same_rows_failures_and_embeddings(
    fixture, request, good_dir, tmp_path
):
    root, _ = good_dir
    broken = write_broken_images(root)
    model = request.getfixturevalue(fixture)
    outputs = both_backends(model, root, tmp_path, image_size=96, batch_size=4)
    (tf_paths, tf_rows), (ov_paths, ov_rows) = (efx.load(o) for o in outputs.values())
    assert tf_paths == ov_paths and len(tf_paths) > 5
    failures = [efx.writers.read_failures(o) for o in outputs.values()]
    assert failures[0] == failures[1] and len(failures[0]) == len(broken)
    # Both compute in float32; only the order of the sums differs (oneDNN vs OpenVINO kernels),
    # which moves each value by a few float32 ulps of the largest partial sums: ~1e-6 relative.
    scale = np.abs(tf_rows).max()
    np.testing.assert_allclose(ov_rows, tf_rows, rtol=0, atol=1e-5 * scale)
    assert cosines(tf_rows, ov_rows).min() > 0.99999


@pytest.mark.skipif(not _cpu_has_bfloat16(), reason="this CPU has no bfloat16 instructions")
def test_openvino_bfloat16_stays_close_to_float32_and_is_labelled(keras_model, tmp_path):
    outputs = {}
    for precision in ("float32", "bfloat16"):
        outputs[precision] = str(tmp_path / f"{precision}.h5")
        summary = efx.extract(
            SAMPLES, outputs[precision], model=keras_model, image_size=96,
            backend="openvino", precision=precision,
        )  # fmt: skip
        assert (summary.backend, summary.precision) == ("openvino", precision)
    full, half = efx.load(outputs["float32"])[1], efx.load(outputs["bfloat16"])[1]
    assert cosines(full, half).min() >= 0.999
    assert not np.array_equal(full, half)  # the hint really made it compute in bfloat16


@pytest.fixture
def cpu_without_bfloat16(monkeypatch):
    """OpenVINO sees a CPU without bfloat16 (as on AVX2-only machines), whatever this one is."""
    from efx import openvino_model

    real = openvino_model.cpu_capabilities
    monkeypatch.setattr(
        openvino_model, "cpu_capabilities", lambda core: [c for c in real(core) if c != "BF16"]
    )


def test_openvino_bfloat16_without_cpu_support_says_so_and_runs_float32(
    tiny_model, tmp_path, cpu_without_bfloat16
):
    outputs = {}
    for precision in ("float32", "bfloat16"):
        outputs[precision] = str(tmp_path / f"{precision}.h5")
        summary = efx.extract(
            SAMPLES, outputs[precision], model=tiny_model, image_size=48,
            backend="openvino", precision=precision,
        )  # fmt: skip
    # What ran is what is stored: float32, with the reason in the notes, not a bfloat16 label.
    assert (summary.backend, summary.precision) == ("openvino", "float32")
    assert len(summary.notes) == 1 and "no bfloat16 support in OpenVINO" in summary.notes[0]
    assert efx.info(outputs["bfloat16"])["precision"] == "float32"
    np.testing.assert_array_equal(efx.load(outputs["bfloat16"])[1], efx.load(outputs["float32"])[1])


def test_auto_picks_openvino_on_a_cpu(tiny_model, tmp_path):
    summary = efx.extract(SAMPLES, str(tmp_path / "o.h5"), model=tiny_model, image_size=48)
    assert (summary.backend, summary.device, summary.notes) == ("openvino", "CPU", [])


def test_auto_falls_back_to_tensorflow_and_says_why_once(area_model, tmp_path):
    result = run_cli("extract", SAMPLES, str(tmp_path / "o.h5"), "-m", area_model,
                     "--image-size", "32")  # fmt: skip
    assert result.exit_code == 0, result.stderr
    note = (
        "efx: note: using TensorFlow for the model, not OpenVINO: OpenVINO cannot convert the "
        "model: No conversion rule found for operations: ResizeArea"
    )
    assert result.stderr.count(note) == 1, result.stderr
    assert "tensorflow float32 on CPU" in result.stderr
    assert efx.info(str(tmp_path / "o.h5"))["backend"] == "tensorflow"
    assert len(efx.load(str(tmp_path / "o.h5"))[0]) == 6


def test_explicit_openvino_that_cannot_convert_is_an_error_with_the_reason(area_model, tmp_path):
    with pytest.raises(efx.EfxError, match="--backend openvino: .*ResizeArea"):
        efx.extract(
            SAMPLES, str(tmp_path / "o.h5"), model=area_model, image_size=32, backend="openvino"
        )
    assert not os.path.exists(tmp_path / "o.h5")


def test_conversion_is_cached_and_the_cache_is_what_runs(tiny_model, keras_model, tmp_path):
    cache = tmp_path / "efx-cache" / "openvino"
    efx.extract(SAMPLES, str(tmp_path / "a.h5"), model=tiny_model, image_size=48)
    (entry,) = os.listdir(cache)
    assert "-ov20" in entry and os.path.isfile(cache / entry / "model.bin")
    # Put another model's conversion under the tiny model's key: if the next run converted
    # again it would compute the tiny model; reading the cache, it computes the other one.
    efx.extract(SAMPLES, str(tmp_path / "k.h5"), model=keras_model, image_size=48)
    (other,) = set(os.listdir(cache)) - {entry}
    shutil.rmtree(cache / entry)
    shutil.copytree(cache / other, cache / entry)
    efx.extract(SAMPLES, str(tmp_path / "b.h5"), model=tiny_model, image_size=48)
    assert np.array_equal(efx.load(str(tmp_path / "b.h5"))[1], efx.load(str(tmp_path / "k.h5"))[1])
    # A damaged entry is converted again, with a note, not fatal: an unreadable model.xml, a
    # model.bin cut short (which OpenVINO might map and read as weights).
    for name, damage in [("model.xml", b"not xml"), ("model.bin", b"")]:
        written = os.path.getsize(cache / entry / name)
        (cache / entry / name).write_bytes(damage)
        notes: list[str] = []
        efx.extract(SAMPLES, str(tmp_path / "c.h5"), model=tiny_model, image_size=48,
                    overwrite=True, on_note=notes.append)  # fmt: skip
        assert notes == [
            f"the cached OpenVINO conversion of this model ({cache / entry}) was damaged ({name} "
            f"is {len(damage)} bytes, {written} were written): converted "
            "again"
        ]
        rows = efx.load(str(tmp_path / "c.h5"))[1]
        assert np.array_equal(rows, efx.load(str(tmp_path / "a.h5"))[1])


def test_runs_converting_at_once_share_the_cache(tiny_model, tmp_path, monkeypatch):
    """Two processes with an empty cache convert at the same time: both finish, one entry
    stays, whole, and a third run reads it; all three give the same rows. EFX_CACHE_DIR says
    where the cache is."""
    env = {**os.environ, "EFX_CACHE_DIR": str(tmp_path / "elsewhere")}
    runs = [
        subprocess.Popen([EFX, "extract", SAMPLES, str(tmp_path / f"{i}.h5"), "-m", tiny_model,
                          "--image-size", "48", "-q"], env=env, stderr=subprocess.PIPE, text=True)
        for i in range(2)
    ]  # fmt: skip
    for run in runs:
        assert run.wait(timeout=300) == 0, run.stderr.read() if run.stderr else ""
    monkeypatch.setenv("EFX_CACHE_DIR", env["EFX_CACHE_DIR"])  # the third run, in this process
    notes: list[str] = []
    efx.extract(SAMPLES, str(tmp_path / "2.h5"), model=tiny_model, image_size=48,
                on_note=notes.append)  # fmt: skip
    assert notes == []  # the entry was whole: read, not converted again
    (entry,) = os.listdir(tmp_path / "elsewhere" / "openvino")
    assert sorted(os.listdir(tmp_path / "elsewhere" / "openvino" / entry)) == [
        "efx-entry.json",
        "model.bin",
        "model.xml",
    ]
    rows = [efx.load(str(tmp_path / f"{i}.h5"))[1] for i in range(3)]
    assert np.array_equal(rows[0], rows[1]) and np.array_equal(rows[0], rows[2])


def test_a_changed_model_is_converted_afresh(tiny_model, tmp_path):
    model = str(tmp_path / "model")
    shutil.copytree(tiny_model, model)
    efx.extract(SAMPLES, str(tmp_path / "a.h5"), model=model, image_size=48)
    os.utime(os.path.join(model, "saved_model.pb"), ns=(0, 0))
    efx.extract(SAMPLES, str(tmp_path / "b.h5"), model=model, image_size=48)
    assert len(os.listdir(tmp_path / "efx-cache" / "openvino")) == 2


def test_openvino_telemetry_never_runs(tiny_model, tmp_path):
    """OpenVINO's telemetry writes a client id under ~/intel and sends events on import and on
    conversion unless opted out. A fresh HOME shows whether it ran at all; outside CI (where it
    switches itself off), so that this test would fail if efx stopped disabling it."""
    home = tmp_path / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("CI", "TF_BUILD", "JENKINS_URL")}
    env["HOME"] = str(home)
    script = (
        "import sys, socket\n"
        "attempts = []\n"
        "connect = socket.socket.connect\n"
        "def spy(self, address):\n"
        "    attempts.append(address)\n"
        "    return connect(self, address)\n"
        "socket.socket.connect = spy\n"
        "import efx\n"
        f"efx.extract({SAMPLES!r}, {str(tmp_path / 'o.h5')!r}, model={tiny_model!r},"
        " image_size=48, backend='openvino')\n"
        "import openvino.tools.ovc.telemetry_utils as t\n"
        "print(t.tm.__name__, attempts)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split()[0] == "openvino.tools.ovc.telemetry_stub"
    assert result.stdout.strip().endswith("[]"), result.stdout  # no connection attempted
    assert not (home / "intel").exists()


def test_without_openvino_the_backend_says_how_to_install_and_auto_uses_tensorflow(
    tiny_model, tmp_path, monkeypatch
):
    monkeypatch.setitem(sys.modules, "openvino", None)  # as when the extra is not installed
    base = ["extract", SAMPLES, "-m", tiny_model, "--image-size", "48"]
    explicit = run_cli(*base[:2], str(tmp_path / "a.h5"), *base[2:], "--backend", "openvino")
    assert explicit.exit_code == 1
    assert "pip install 'efx[openvino]'" in explicit.stderr and "Traceback" not in explicit.stderr
    assert not os.path.exists(tmp_path / "a.h5")
    auto = run_cli(*base[:2], str(tmp_path / "b.h5"), *base[2:])
    assert auto.exit_code == 0, auto.stderr
    assert "note:" not in auto.stderr  # an extra not installed is not news on every run
    assert efx.info(str(tmp_path / "b.h5"))["backend"] == "tensorflow"


def test_float32_of_either_backend_resumes_and_merges_but_bfloat16_does_not(tiny_model, tmp_path):
    common = {"model": tiny_model, "image_size": 48}
    parts = []
    for index, backend in enumerate(("tensorflow", "openvino")):
        parts.append(str(tmp_path / f"part{index}.h5"))
        efx.extract(SAMPLES, parts[-1], part=f"{index}/2", backend=backend, **common)
    efx.merge(parts, str(tmp_path / "all.h5"))
    assert efx.info(str(tmp_path / "all.h5"))["backend"] == "openvino, tensorflow"

    def unfinish(output: str) -> None:
        with h5py.File(output, "r+") as file:
            file.attrs["complete"] = False

    unfinish(parts[0])  # made by TensorFlow in float32; OpenVINO float32 may continue it
    summary = efx.extract(SAMPLES, parts[0], part="0/2", backend="openvino", resume=True, **common)
    assert summary.complete and summary.resumed == 3
    if not _cpu_has_bfloat16():
        return
    output = str(tmp_path / "bf16.h5")
    efx.extract(SAMPLES, output, backend="tensorflow", precision="bfloat16", **common)
    unfinish(output)
    with h5py.File(output, "r+") as file:  # rows left to compute, as after a kill
        for name in ("embeddings", "paths"):
            file[name].resize(1, axis=0)
    with pytest.raises(
        efx.EfxError, match=r"precision: 'bfloat16 \(tensorflow\)' there, 'bfloat16 \(openvino\)'"
    ):
        efx.extract(
            SAMPLES, output, backend="openvino", precision="bfloat16", resume=True, **common
        )


def test_resume_accepts_the_command_efx_printed_after_a_bfloat16_fallback(
    tiny_model, tmp_path, cpu_without_bfloat16
):
    """The run asked for bfloat16 and ran float32: --resume with the same command continues."""
    import h5py

    output = str(tmp_path / "o.h5")
    asked = {"model": tiny_model, "image_size": 48, "backend": "openvino", "precision": "bfloat16"}
    efx.extract(SAMPLES, output, batch_size=2, **asked)
    with h5py.File(output, "r+") as file:  # as an interrupted run leaves it: 2 rows, incomplete
        for name in ("embeddings", "paths"):
            file[name].resize(2, axis=0)
        file.attrs["complete"] = False
    summary = efx.extract(SAMPLES, output, resume=True, batch_size=2, **asked)
    assert (summary.resumed, summary.precision, summary.complete) == (2, "float32", True)
    assert efx.info(output)["precision_requested"] == "bfloat16"
