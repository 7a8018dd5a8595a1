"""The model on OpenVINO: the same SavedModel, converted once (and cached), run by OpenVINO's CPU
runtime, which is faster than TensorFlow on CPUs (README: Performance).

Part of the model stage: only `model.py` imports this module. It imports OpenVINO itself, and
only when asked to, so efx works without it.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from . import files

INSTALL_HINT = "pip install 'efx[openvino]'"

# efx's precision names -> OpenVINO's INFERENCE_PRECISION_HINT, and the CPU capability each needs.
_HINTS = {"float32": ("f32", "FP32"), "bfloat16": ("bf16", "BF16"), "float16": ("f16", "FP16")}


class Unavailable(Exception):
    """OpenVINO cannot run this model here; the message says why, for a person."""


class NotInstalled(Unavailable):
    """OpenVINO is not installed (an optional extra)."""


@dataclass
class OpenVINOModel:
    embed: Callable[[Any], np.ndarray]
    image_size: int | None  # the size the converted model fixes, if it fixes one
    feature_dim: int
    precision: str  # what runs: the requested precision, or float32 where the CPU lacks it
    notes: list[str]  # said once to the user (a precision fallback, a cache entry rebuilt)


def import_openvino() -> Any:
    """`import openvino`, with its telemetry switched off and a clear error when not installed.

    OpenVINO's Python package sends usage events to Google Analytics on import and on every
    conversion (openvino-telemetry, on unless the user opted out), and writes a client id under
    ~/intel. efx runs offline and phones no one: hiding the telemetry package makes OpenVINO use
    the no-op stub it ships for when that package is absent (openvino/tools/ovc/telemetry_stub.py).
    """
    if "openvino_telemetry" not in sys.modules:
        sys.modules["openvino_telemetry"] = None  # type: ignore[assignment]
    try:
        import openvino
    except ImportError as error:
        raise NotInstalled(f"OpenVINO is not installed; install it with {INSTALL_HINT}") from error
    return openvino


def load(
    folder: str,
    image_size: int | None,
    batch_size: int,
    precision: str,
    cache_root: str,
    fallback_size: int,
) -> OpenVINOModel:
    """Convert (or fetch from the cache) and compile the SavedModel in `folder` for the CPU, at a
    fixed [batch_size, size, size, 3] input: static shapes run about twice as fast as dynamic
    ones on OpenVINO's CPU plugin. The size is `image_size`, else the one the model fixes, else
    `fallback_size`. Raises Unavailable with the reason when it cannot."""
    ov = import_openvino()
    core = ov.Core()
    model, cache_note = _converted(ov, folder, cache_root)
    if len(model.inputs) != 1 or len(model.outputs) < 1:
        raise Unavailable(
            f"the model has {len(model.inputs)} inputs; efx runs single-input image models"
        )
    fixed = _fixed_size(model)
    size = image_size or fixed or fallback_size
    try:
        model.reshape([batch_size, size, size, 3])
    except Exception as error:  # noqa: BLE001 - OpenVINO raises RuntimeError subclasses
        raise Unavailable(f"OpenVINO cannot reshape the model: {_first_line(error)}") from error

    hint, precision, note = _precision_hint(core, precision)
    try:
        # An explicit hint: OpenVINO's default on some CPUs (with AMX) is bf16, not float32.
        # LATENCY: every core on one request at a time, which is how efx calls it (one batch
        # after another); measured as fast as two THROUGHPUT requests in flight, at half the memory.
        compiled = core.compile_model(
            model, "CPU", {"INFERENCE_PRECISION_HINT": hint, "PERFORMANCE_HINT": "LATENCY"}
        )
    except Exception as error:  # noqa: BLE001
        raise Unavailable(f"OpenVINO cannot compile the model: {_first_line(error)}") from error
    request = compiled.create_infer_request()
    output = compiled.outputs[0]
    dim = output.get_partial_shape()[-1]
    if output.get_partial_shape().rank.get_length() != 2 or dim.is_dynamic:
        raise Unavailable(
            f"the model's output {output.get_partial_shape()} is not [batch, features]"
        )

    def embed(images: Any) -> np.ndarray:
        batch = np.ascontiguousarray(images, dtype=np.float32)
        count = batch.shape[0]
        if count < batch_size:  # the compiled shape is fixed: pad the last batch
            pad = np.zeros((batch_size - count, *batch.shape[1:]), np.float32)
            batch = np.concatenate([batch, pad])
        result = request.infer({0: batch}, share_inputs=True)
        return np.array(result[output][:count], dtype=np.float32)

    notes = [text for text in (cache_note, note) if text]
    return OpenVINOModel(embed, fixed, int(dim.get_length()), precision, notes)


def _precision_hint(core: Any, precision: str) -> tuple[str, str, str | None]:
    """OpenVINO's inference hint for `precision`, the precision that will run, and a note for
    the user when this CPU cannot run the one asked for (float32 runs instead)."""
    hint, capability = _HINTS[precision]
    capabilities = cpu_capabilities(core)
    if capability in capabilities:
        return hint, precision, None
    if precision == "float16":
        raise Unavailable("this CPU has no float16 support in OpenVINO; use --precision bfloat16")
    note = (
        f"this CPU has no {precision} support in OpenVINO (it offers "
        f"{', '.join(capabilities)}): running in float32"
    )
    return "f32", "float32", note


def cpu_capabilities(core: Any) -> list[str]:
    """What OpenVINO's CPU plugin computes in here: FP32, BF16 (CPUs with bfloat16), ..."""
    return list(core.get_property("CPU", "OPTIMIZATION_CAPABILITIES"))


def _converted(ov: Any, folder: str, cache_root: str) -> tuple[Any, str | None]:
    """The OpenVINO model of a SavedModel folder, converted once and kept in the cache; and a
    note when a damaged cache entry had to be converted again.

    Keyed by the folder's path, its files' sizes and modification times and the OpenVINO
    version: a changed model or another OpenVINO converts afresh. Written to a scratch folder
    and renamed into place, so a killed run never leaves half a model in the cache, and runs
    converting at once each rename a whole entry (the first one stays). The entry records its
    files' sizes (`efx-entry.json`): one cut short or unreadable is converted again, with a note.
    """
    target = os.path.join(cache_root, _cache_key(folder, ov.get_version()))
    note = None
    if os.path.isdir(target):
        model, damage = _read_entry(ov, target)
        if model is not None:
            return model, None
        note = f"the cached OpenVINO conversion of this model ({target}) {damage}: converted again"
        shutil.rmtree(target, ignore_errors=True)
    from .importing import tensorflow

    tensorflow()  # what the conversion imports, one thread at a time (efx.importing.tensorflow)
    try:
        model = ov.convert_model(folder)
    except Exception as error:  # noqa: BLE001 - conversion errors come in many types
        raise Unavailable(f"OpenVINO cannot convert the model: {_conversion_reason(error)}") from (
            error
        )
    try:
        with files.scratch_folder(cache_root, ".convert-") as scratch:
            # compress_to_fp16=False: keep the weights as published (the default halves them).
            ov.save_model(model, os.path.join(scratch, "model.xml"), compress_to_fp16=False)
            sizes = {name: os.path.getsize(os.path.join(scratch, name)) for name in _ENTRY_FILES}
            files.write_atomically(os.path.join(scratch, _ENTRY), json.dumps(sizes).encode())
            files.replace(scratch, target, sync=False)  # a cache: a lost rename converts again
    except OSError:
        pass  # an unwritable or raced cache costs a conversion next time, nothing else
    return model, note


_ENTRY = "efx-entry.json"  # the sizes of a cache entry's files, as written
_ENTRY_FILES = ("model.xml", "model.bin")


def _read_entry(ov: Any, target: str) -> tuple[Any, str]:
    """(the cached model, "") or (None, what is wrong with the entry)."""
    try:
        try:
            with open(os.path.join(target, _ENTRY), encoding="utf-8") as file:
                sizes = json.load(file)
        except FileNotFoundError:  # an entry written by efx 0.4: as read_model finds it
            sizes = {name: os.path.getsize(os.path.join(target, name)) for name in _ENTRY_FILES}
        for name in _ENTRY_FILES:
            found = os.path.getsize(os.path.join(target, name))
            if found != sizes[name]:
                return None, f"was damaged ({name} is {found} bytes, {sizes[name]} were written)"
        return ov.Core().read_model(os.path.join(target, "model.xml")), ""
    except (OSError, ValueError, KeyError, TypeError):
        return None, "was incomplete"
    except Exception as error:  # noqa: BLE001 - OpenVINO's reading errors
        return None, f"could not be read ({_first_line(error)})"


def _cache_key(folder: str, version: str) -> str:
    digest = hashlib.sha1(os.path.abspath(folder).encode())
    files.digest_tree(digest, folder)
    digest.update(version.encode())
    name = os.path.basename(os.path.normpath(folder))[:40]
    return f"{name}-{digest.hexdigest()[:16]}-ov{version.split('-')[0]}"


def _fixed_size(model: Any) -> int | None:
    shape = model.inputs[0].get_partial_shape()
    if shape.rank.is_dynamic or shape.rank.get_length() != 4:
        return None
    height, width = shape[1], shape[2]
    if height.is_static and width.is_static and height.get_length() == width.get_length():
        return int(height.get_length())
    return None


def _conversion_reason(error: BaseException) -> str:
    """The useful line of OpenVINO's long conversion error: which operations have no rule."""
    text = str(error)
    for line in text.splitlines():
        if "No conversion rule" in line or "not supported" in line.lower():
            return line.strip().lstrip("- ").rstrip(".")
    return _first_line(error)


def _first_line(error: BaseException) -> str:
    text = str(error).strip() or type(error).__name__
    return text.splitlines()[0]
