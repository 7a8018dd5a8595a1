"""`efx bench`: the model alone next to the whole extract pipeline, measured in one run.

The model alone runs on ready tensors (no reading, decoding or writing): the ceiling. The
pipeline is exactly `efx extract`'s loop (read, decode, resize, model, HDF5 writer) on real
files. Rounds alternate the two so that a noisy machine slows both alike; the ratio of their
medians says how much of the model's speed the pipeline keeps.
"""

from __future__ import annotations

import os
import resource
import statistics
import tempfile
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any, BinaryIO

from .config import BACKENDS, DecodeOptions, Settings, check_positive
from .discover import check_sources, find_files
from .engine import LocalEngine
from .errors import EfxError
from .inputs import Input, loose
from .model import (
    LoadedModel,
    ModelSpec,
    asked_model,
    check_precision,
    load_model,
)
from .sources import ShardOptions, list_inputs


@dataclass
class BackendFigures:
    """One backend's figures: images/s of the model alone and of the pipeline, medians."""

    backend: str
    precision: str
    model_alone: float
    pipeline: float
    ratio: float  # pipeline / model alone, median of the per-round ratios
    rounds: list[dict[str, float]]


@dataclass
class BenchReport:
    model: str
    device: str
    batch_size: int
    image_size: int
    images: int
    source: str  # the folders measured, or what was generated
    results: list[BackendFigures]  # one per backend measured
    peak_rss_mib: float  # of the whole process, every backend loaded
    notes: list[str] = field(default_factory=list)  # a backend that could not be measured, why

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def bench(
    sources: Iterable[str] = (),
    settings: Settings | None = None,
    *,
    backend: str = "all",
    count: int = 48,
    size: tuple[int, int] = (1024, 768),
    rounds: int = 2,
    stdin: BinaryIO | None = None,
    progress: Any = None,
    **options: Any,
) -> BenchReport:
    """Measure images/s of the model alone and of the extract pipeline, side by side, for each
    backend (`backend="all"`: TensorFlow and, on a CPU, OpenVINO when it can run the model).
    `settings`, or `options` (its fields, as efx.extract takes them), give the model, image
    size, batch size and precision (efx.config.Settings)."""
    sources = list(sources)
    settings = settings or Settings(**options)
    check_positive("--rounds", rounds)
    check_positive("--count", count)
    if backend not in (*BACKENDS, "all"):
        raise EfxError(
            f"--backend must be one of {', '.join(BACKENDS)}, all. Received: {backend!r}"
        )
    if sources:
        check_sources(sources)
    spec = asked_model(settings.model)
    check_precision(settings.precision, backend)
    inputs = list_inputs(find_files(sources, stdin=stdin), ShardOptions()) if sources else []
    paths: list[str] | list[Input] = inputs
    if sources and not paths:
        raise EfxError(f"no images found in {', '.join(sources)}")
    models, notes = _load_backends(spec, settings, backend)
    with tempfile.TemporaryDirectory(prefix="efx-bench-") as work:
        if not sources:
            paths = generate_photos(os.path.join(work, "photos"), count, size)
        measured = _rounds(models, paths, rounds, progress)
    first = models[0]
    return BenchReport(
        model=first.name,
        device=first.device,
        batch_size=first.batch_size,
        image_size=first.image_size,
        images=len(paths),
        source=", ".join(sources) or f"{count} generated JPEGs of {size[0]}x{size[1]}",
        results=[
            BackendFigures(
                backend=loaded.backend,
                precision=loaded.precision,
                model_alone=statistics.median(r["model_alone"] for r in figures),
                pipeline=statistics.median(r["pipeline"] for r in figures),
                ratio=statistics.median(r["ratio"] for r in figures),
                rounds=figures,
            )
            for loaded, figures in zip(models, measured, strict=True)
        ],
        peak_rss_mib=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        notes=notes,
    )


def _rounds(
    models: list[LoadedModel],
    paths: list[str] | list[Input],
    rounds: int,
    progress: Any,
) -> list[list[dict[str, float]]]:
    """Alternating rounds: each backend's model alone, then its pipeline, round after round."""
    options = DecodeOptions(models[0].image_size)
    measured: list[list[dict[str, float]]] = [[] for _ in models]
    for round_ in range(rounds):
        for loaded, figures in zip(models, measured, strict=True):
            alone = _model_alone(loaded, len(paths))
            pipeline = time_pipeline(loaded, paths, options)
            figures.append({"model_alone": alone, "pipeline": pipeline, "ratio": pipeline / alone})
            if progress:
                progress(round_ + 1, loaded.backend, figures[-1])
    return measured


def time_pipeline(
    loaded: LoadedModel, paths: list[str] | list[Input], options: DecodeOptions
) -> float:
    """Images/s of `efx extract`'s streaming phase on `paths` (image files, or inputs of any
    source), set-up included: read, decode, resize, model, and the loop handing rows to a
    writer (efx.run.loop.stream, into memory: a file format's own cost is not in the figure)."""
    from .reuse import embed_all
    from .run.loop import Feed, stream
    from .writers.memory import MemoryWriter

    inputs = [loose(p) if isinstance(p, str) else p for p in paths]
    start = time.perf_counter()
    feed = Feed(LocalEngine(), options, loaded)
    embedded, _ = stream(inputs, embed_all(len(inputs)), [], MemoryWriter(), None, feed)
    return embedded / (time.perf_counter() - start)


def _load_backends(
    spec: ModelSpec, settings: Settings, backend: str
) -> tuple[list[LoadedModel], list[str]]:
    """The model on each backend to measure; "all" skips OpenVINO (with a note) where it
    cannot run, and does not load the same backend twice."""
    asked = (settings.image_size, settings.batch_size, settings.precision)
    if backend != "all":
        loaded = load_model(spec, *asked, backend)
        return [loaded], loaded.notes
    tensorflow = load_model(spec, *asked, "tensorflow")
    if tensorflow.device != "CPU":
        return [tensorflow], ["OpenVINO not measured: efx runs it on CPUs only"]
    try:
        openvino = load_model(spec, *asked, "openvino")
    except EfxError as error:
        return [tensorflow], [f"OpenVINO not measured: {error}"]
    return [tensorflow, openvino], openvino.notes


def _model_alone(loaded: LoadedModel, count: int) -> float:
    """Images/s of the model on ready tensors, as many batches as the pipeline will run."""
    import tensorflow as tf

    size = loaded.image_size
    images = tf.random.stateless_uniform([loaded.batch_size, size, size, 3], seed=[0, 0])
    loaded.embed(images)  # warm: the first call after a pause pays for caches
    batches = max(1, -(-count // loaded.batch_size))
    start = time.perf_counter()
    for _ in range(batches):
        loaded.embed(images)
    return batches * loaded.batch_size / (time.perf_counter() - start)


def generate_photos(folder: str, count: int, size: tuple[int, int]) -> list[str]:
    """JPEGs with photo-like content (smooth shapes plus grain), so that decoding costs what
    real photos of that size cost. Pass real photos to `efx bench` for real figures."""
    import tensorflow as tf

    os.makedirs(folder, exist_ok=True)
    width, height = size
    paths = []
    for index in range(count):
        seed = [index, 1]
        coarse = tf.random.stateless_uniform(
            [1, max(2, height // 64), max(2, width // 64), 3], seed
        )
        smooth = tf.image.resize(coarse, [height, width], method="bicubic")[0]
        grain = tf.random.stateless_normal([height, width, 3], seed, stddev=0.03)
        pixels = tf.image.convert_image_dtype(tf.clip_by_value(smooth + grain, 0, 1), tf.uint8)
        path = os.path.join(folder, f"photo-{index:05d}.jpg")
        tf.io.write_file(path, tf.io.encode_jpeg(pixels, quality=90))
        paths.append(path)
    return paths
