"""Models as data, and loading one into a callable that maps image batches to embeddings.

Only `load_model` imports TensorFlow; resolving names and handles does not, so flags are checked
before the slow import.
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import inspect
import json
import os
import tarfile
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from . import files, timeline
from .errors import EfxError
from .importing import tensorflow

STANDIN_MARKER = "efx_standin.json"

# Batch sizes by device: on CPU throughput barely depends on it (1, 4, 8 within 3%), so keep it
# small for memory and a quick Ctrl-C; a GPU needs larger batches to stay busy.
DEFAULT_BATCH_SIZE = {"CPU": 8, "GPU": 32}


@dataclass(frozen=True)
class ModelSpec:
    """What a model is: where to get it and the input size it was trained at (None: ask it)."""

    handle: str
    image_size: int | None = None


def _efficientnet(variant: str, size: int) -> ModelSpec:
    return ModelSpec(f"https://tfhub.dev/tensorflow/efficientnet/{variant}/feature-vector/1", size)


# The EfficientNet feature-vector collection on TF-Hub, with each model's training resolution.
MODELS: dict[str, ModelSpec] = {
    "b0": _efficientnet("b0", 224),
    "b1": _efficientnet("b1", 240),
    "b2": _efficientnet("b2", 260),
    "b3": _efficientnet("b3", 300),
    "b4": _efficientnet("b4", 380),
    "b5": _efficientnet("b5", 456),
    "b6": _efficientnet("b6", 528),
    "b7": _efficientnet("b7", 600),
}
DEFAULT_MODEL = MODELS["b6"].handle
DEFAULT_IMAGE_SIZE = 528  # the module efx is built for: EfficientNet-B6
_BY_HANDLE = {spec.handle: spec for spec in MODELS.values()}


def asked_model(model: str | None) -> ModelSpec:
    """The model a run asks for: `model` (--model), else the EFX_MODEL variable, else
    DEFAULT_MODEL (EfficientNet-B6 from TF-Hub), resolved (see resolve_model)."""
    return resolve_model(model or os.environ.get("EFX_MODEL") or DEFAULT_MODEL)


def resolve_model(name: str) -> ModelSpec:
    """A short name, TF-Hub/Kaggle handle, SavedModel folder or .tar.gz to a ModelSpec."""
    name = name.strip()
    if name.lower() in MODELS:
        return MODELS[name.lower()]
    if name.rstrip("/") in _BY_HANDLE:
        return _BY_HANDLE[name.rstrip("/")]
    if _is_url(name):
        return ModelSpec(name)
    if os.path.isdir(name):
        if not _has_saved_model(name):
            raise EfxError(
                f"--model folder is not a SavedModel (no saved_model.pb inside). Received: {name}"
            )
        return ModelSpec(os.path.abspath(name), _standin_size(name))
    if os.path.isfile(name):
        if not name.endswith((".tar.gz", ".tgz", ".tar")):
            raise EfxError(
                "--model file must be a .tar.gz of a SavedModel (as TF-Hub serves them). "
                f"Received: {name}"
            )
        return ModelSpec(os.path.abspath(name))
    short = ", ".join(MODELS)
    raise EfxError(
        "--model is not a short name, a URL, a SavedModel folder or a .tar.gz. "
        f"Short names: {short}. Received: {name}"
    )


@dataclass
class LoadedModel:
    """A ready model: `embed` maps float32 [n, s, s, 3] in [0, 1] to float32 [n, feature_dim]."""

    name: str  # what outputs record as the model; says "stand-in" for the offline stand-in
    image_size: int
    feature_dim: int
    batch_size: int
    standin: bool
    device: str
    precision: str
    embed: Callable[[Any], np.ndarray]
    backend: str = "tensorflow"  # what runs the model: "tensorflow" or "openvino"
    notes: list[str] = field(default_factory=list)  # said once to the user (a fallback, and why)
    # The TensorFlow installed where the model runs (it decodes the images there): outputs
    # record it. Read from the package's metadata: the model may load before TensorFlow does.
    tensorflow_version: str = field(default_factory=lambda: _installed("tensorflow"))


def load_model(
    spec: ModelSpec,
    image_size: int | None = None,
    batch_size: int | None = None,
    precision: str = "float32",
    backend: str = "auto",
    images: int | None = None,
) -> LoadedModel:
    """Fetch (cached by tensorflow-hub), load and probe a model, or raise EfxError saying why.

    `backend`: "tensorflow", "openvino" (CPU), or "auto": OpenVINO on a CPU when it is
    installed and converts the model, TensorFlow otherwise (and always on a GPU).
    `images`: how many images the caller will embed, when known: OpenVINO then compiles for
    batches of at most that many (one image is not computed as a padded batch of 8; OpenVINO's
    rows do not depend on the batch they are computed in, tests/test_startup.py checks it).

    TensorFlow is imported only where it is needed: a GPU to look for (a device file says
    whether there is one), a handle to resolve, a conversion, or the TensorFlow backend. So
    OpenVINO with a converted model cached loads while another thread imports TensorFlow for
    the decoders (efx.engine).

    The probe runs one full batch: the first call at a new input shape costs about a batch's
    compute again (kernel selection), so paying it here keeps it out of the streaming rate, and
    `embed` pads short batches to the same shape so that it is paid once.
    """
    device = _device()
    folder = _local_folder(spec)
    marker = _standin_marker(folder)
    name = spec.handle
    if marker:
        name = f"STAND-IN {marker['architecture']}, random weights, not real embeddings ({name})"
    wanted = _Wanted(
        name, image_size or spec.image_size or (marker or {}).get("image_size"),
        batch_size or DEFAULT_BATCH_SIZE[device], precision, bool(marker),
    )  # fmt: skip
    notes: list[str] = []
    if backend == "openvino" or (backend == "auto" and device == "CPU"):
        from . import openvino_model

        if batch_size is None and images:
            wanted = replace(wanted, batch_size=max(1, min(wanted.batch_size, images)))
        try:
            return _load_openvino(folder, wanted, notes)
        except openvino_model.Unavailable as why:
            if backend == "openvino":
                raise EfxError(f"--backend openvino: {why}") from None
            if not isinstance(why, openvino_model.NotInstalled):  # an optional extra: no news
                notes.append(f"using TensorFlow for the model, not OpenVINO: {why}")
            wanted = replace(wanted, batch_size=batch_size or DEFAULT_BATCH_SIZE[device])
    return _load_tensorflow(folder, wanted, device, notes)


def _device() -> str:
    """ "GPU" when TensorFlow finds one, else "CPU"; without a GPU device file there is none to
    find, and TensorFlow is not imported to say so."""
    if not _gpu_device_present():
        return "CPU"
    tf = tensorflow()
    for gpu in tf.config.list_physical_devices("GPU"):
        # Take GPU memory as needed so that several runs can share a GPU; a GPU already
        # initialised in this process (library use) keeps its setting.
        with contextlib.suppress(RuntimeError):
            tf.config.experimental.set_memory_growth(gpu, True)
    return "GPU" if tf.config.list_physical_devices("GPU") else "CPU"


@dataclass(frozen=True)
class _Wanted:
    """What the caller asked of the model, with the defaults filled in that need no loading."""

    name: str
    image_size: int | None  # None: the model's signature decides, else DEFAULT_IMAGE_SIZE
    batch_size: int
    precision: str
    standin: bool


def _load_openvino(folder: str, wanted: _Wanted, notes: list[str]) -> LoadedModel:
    from . import openvino_model

    batch = wanted.batch_size
    cache = os.path.join(cache_dir(), "openvino")
    ov = openvino_model.load(
        folder, wanted.image_size, batch, wanted.precision, cache, DEFAULT_IMAGE_SIZE
    )
    size = wanted.image_size or ov.image_size or _flexible_size(notes)
    notes += ov.notes
    timeline.mark("model compiled")
    ov.embed(np.zeros([batch, size, size, 3], np.float32))  # the first call's set-up
    return LoadedModel(
        wanted.name, int(size), ov.feature_dim, batch, wanted.standin, "CPU", ov.precision,
        ov.embed, "openvino", notes,
    )  # fmt: skip


def _load_tensorflow(folder: str, wanted: _Wanted, device: str, notes: list[str]) -> LoadedModel:
    tf = tensorflow()
    _set_precision(tf, wanted.precision, device)
    try:
        module = _restore(tf, folder)
    except Exception as error:  # noqa: BLE001 - any load failure is reported, not raised
        raise EfxError(
            f"could not load the SavedModel in {folder}: {_first_line(error)}. If this is a "
            "cached download, delete that folder and try again."
        ) from error
    call = _model_call(module)
    size = wanted.image_size or _fixed_size(module) or _flexible_size(notes)
    batch = wanted.batch_size
    probe = call(tf.zeros([batch, size, size, 3], tf.float32))
    if probe.shape.rank != 2 or probe.shape[0] != batch:
        raise EfxError(
            f"{folder} is not an image feature-vector model: it returned shape "
            f"{probe.shape.as_list()} for {batch} images, expected [{batch}, features]."
        )

    def embed(images: Any) -> np.ndarray:
        count = int(images.shape[0])
        if count < batch:
            images = tf.pad(images, [[0, batch - count], [0, 0], [0, 0], [0, 0]])
        return np.asarray(call(images), dtype=np.float32)[:count]

    return LoadedModel(
        wanted.name, int(size), int(probe.shape[1]), batch, wanted.standin, device,
        wanted.precision, embed, "tensorflow", notes,
    )  # fmt: skip


def _installed(package: str) -> str:
    import importlib.metadata

    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:  # (a build of one's own, say)
        return str(tensorflow().__version__)


def _flexible_size(notes: list[str]) -> int:
    """The input size for a model that accepts any size and is not one efx knows (the real
    module's tarball, or its unpacked folder): the size of the module efx is built for."""
    notes.append(
        f"the model accepts any input size and does not say which it was trained at: using "
        f"{DEFAULT_IMAGE_SIZE}x{DEFAULT_IMAGE_SIZE} (EfficientNet-B6's); pass --image-size "
        "to use another"
    )
    return DEFAULT_IMAGE_SIZE


def check_precision(precision: str, backend: str) -> None:
    """Refuse, before TensorFlow is imported, a precision this machine cannot run: without a
    GPU device file there is no GPU for TensorFlow to find, and only OpenVINO computes in
    reduced precision on a CPU, where the CPU has the instructions for it."""
    if _gpu_device_present():
        return  # TensorFlow decides once loaded (_set_precision)
    if precision == "float16" and (backend == "tensorflow" or not _cpu_has_float16()):
        raise EfxError(f"{_NEEDS_GPU} Received: --precision float16 --backend {backend}")
    if precision == "bfloat16" and backend == "tensorflow" and not _cpu_has_bfloat16():
        raise EfxError(f"{_NEEDS_BF16} Received: --precision bfloat16 --backend tensorflow")


_NEEDS_GPU = (
    "--precision float16 needs a GPU, or OpenVINO on a CPU with float16 instructions "
    "(AVX512_FP16 or AMX-FP16); here use float32, or --precision bfloat16 on CPUs with "
    "bfloat16 instructions."
)
_NEEDS_BF16 = (
    "--precision bfloat16 with TensorFlow needs a CPU with bfloat16 instructions (AVX512_BF16 "
    "or AMX); this one would only emulate them, slower than float32 (OpenVINO runs it in "
    "float32 and says so)."
)


def _gpu_device_present() -> bool:
    """A CUDA device file (Linux), or WSL2's GPU bridge."""
    return bool(glob.glob("/dev/nvidia[0-9]*")) or os.path.exists("/dev/dxg")


def _set_precision(tf: Any, precision: str, device: str) -> None:
    """Mixed precision by graph rewrite: TensorFlow's grappler rewrites every function it runs,
    the loaded SavedModel's included, computing in 16 bits where that is safe. The option is
    process-wide; `process.tensorflow_options_restored` puts it back after the run."""
    if precision == "float32":
        return
    if precision == "float16" and device == "CPU":
        raise EfxError(_NEEDS_GPU)
    if precision == "bfloat16" and device == "GPU":
        raise EfxError(
            "--precision bfloat16 is TensorFlow's CPU (oneDNN) rewrite; on a GPU use "
            "--precision float16"
        )
    if precision == "bfloat16" and not _cpu_has_bfloat16():
        raise EfxError(_NEEDS_BF16)
    rewrite = {
        "bfloat16": "auto_mixed_precision_onednn_bfloat16",
        "float16": "auto_mixed_precision",
    }
    tf.config.optimizer.set_experimental_options({rewrite[precision]: True})


def _cpu_flags() -> set[str] | None:
    """The CPU's instruction-set flags (Linux), or None where they cannot be read."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as file:
            return set(file.read().split())
    except OSError:
        return None


def _cpu_has_bfloat16() -> bool:
    flags = _cpu_flags()
    return flags is None or bool(flags & {"avx512_bf16", "amx_bf16"})  # unknown: let TF decide


def _cpu_has_float16() -> bool:
    """What OpenVINO's CPU plugin needs to offer FP16 (its OPTIMIZATION_CAPABILITIES)."""
    flags = _cpu_flags()
    return flags is None or bool(flags & {"avx512_fp16", "amx_fp16"})


def _restore(tf: Any, folder: str) -> Any:
    """What `hub.load(folder)` does for a local folder (tensorflow_hub/module_v2.py: a TF1 Hub
    module loads with tags=[]), without importing tensorflow-hub, which imports tf-keras."""
    tags: list[str] | None = [] if os.path.isfile(os.path.join(folder, "tfhub_module.pb")) else None
    return tf.saved_model.load(folder, tags=tags)


def _local_folder(spec: ModelSpec) -> str:
    """A local SavedModel folder for the spec: as given, unpacked from a tarball, or downloaded
    (tensorflow-hub, imported only then)."""
    handle = spec.handle
    if os.path.isdir(handle):
        return handle
    if os.path.isfile(handle):
        return _unpack_tarball(handle)
    tensorflow()
    import tensorflow_hub as hub

    try:
        return str(hub.resolve(handle))
    except Exception as error:  # noqa: BLE001 - network, HTTP and cache errors all end here
        cache = os.environ.get("TFHUB_CACHE_DIR") or os.path.join(
            tempfile.gettempdir(), "tfhub_modules"
        )
        raise EfxError(
            f"could not fetch the model {handle}: {_first_line(error)}.\n"
            f"  tensorflow-hub looked in its cache ({cache}, set by TFHUB_CACHE_DIR) and then "
            "tried to download it.\n"
            "  To run offline, download the model's .tar.gz on a machine with internet "
            "(from Kaggle Models, or the handle with ?tf-hub-format=compressed), then pass "
            "--model path/to/model.tar.gz or an unpacked SavedModel folder."
        ) from error


def _unpack_tarball(path: str) -> str:
    """Unpack a SavedModel tarball once into the efx cache, keyed by its path, size and mtime."""
    stat = os.stat(path)
    key = hashlib.sha1(
        f"{os.path.abspath(path)}|{stat.st_size}|{stat.st_mtime_ns}".encode()
    ).hexdigest()
    root = os.path.join(cache_dir(), "unpacked")
    target = os.path.join(root, key[:16])
    if _has_saved_model(target):
        return target
    with files.scratch_folder(root, ".unpack-") as scratch:
        try:
            with tarfile.open(path) as archive:
                archive.extractall(scratch, filter="data")
        except (tarfile.TarError, OSError, EOFError) as error:
            raise EfxError(f"could not unpack --model {path}: {_first_line(error)}") from error
        folder = _find_saved_model(scratch)
        if folder is None:
            raise EfxError(f"--model {path} holds no SavedModel (no saved_model.pb inside)")
        files.replace(folder, target, sync=False)  # a cache: a lost rename unpacks again
    return target


def cache_dir() -> str:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.environ.get("EFX_CACHE_DIR") or os.path.join(base, "efx")


def _find_saved_model(root: str) -> str | None:
    for folder, _dirs, names in os.walk(root):
        if "saved_model.pb" in names or "saved_model.pbtxt" in names:
            return folder
    return None


def _has_saved_model(folder: str) -> bool:
    return any(
        os.path.isfile(os.path.join(folder, name))
        for name in ("saved_model.pb", "saved_model.pbtxt")
    )


def _standin_marker(folder: str) -> dict[str, Any] | None:
    try:
        with open(os.path.join(folder, STANDIN_MARKER), encoding="utf-8") as file:
            marker: dict[str, Any] = json.load(file)
            return marker
    except (OSError, ValueError):
        return None


def _standin_size(folder: str) -> int | None:
    marker = _standin_marker(folder)
    return int(marker["image_size"]) if marker and "image_size" in marker else None


def _model_call(module: Any) -> Callable[[Any], Any]:
    """The module's forward function: its __call__ (TF2 hub modules), else its serving signature."""
    if callable(module):
        # Asked of the signature, not tried: a call that fails to bind its arguments leaves the
        # restored function's lock held (TensorFlow 2.21), and every later call from another
        # thread (efx serve answers in threads) then waits forever.
        try:
            training = "training" in inspect.signature(module.__call__).parameters
        except (TypeError, ValueError):
            training = False
        if training:
            return lambda images: module(images, training=False)
        return lambda images: module(images)
    signature = module.signatures.get("serving_default") if hasattr(module, "signatures") else None
    if signature is None:
        raise EfxError("the model is neither callable nor has a serving_default signature")
    (input_name,) = signature.structured_input_signature[1].keys()

    def call_signature(images: Any) -> Any:
        outputs = signature(**{input_name: images})
        return next(iter(outputs.values()))

    return call_signature


def _fixed_size(module: Any) -> int | None:
    """The square input size a model's signature fixes, if it fixes one."""
    try:
        spec = next(
            iter(module.signatures["serving_default"].structured_input_signature[1].values())
        )
        height, width = spec.shape[1], spec.shape[2]
        return int(height) if height and height == width else None
    except (AttributeError, KeyError, StopIteration, TypeError, IndexError):
        return None


def _is_url(name: str) -> bool:
    return name.startswith(("http://", "https://", "gs://"))


def _first_line(error: BaseException) -> str:
    text = str(error).strip() or type(error).__name__
    return text.splitlines()[0]
