"""The performance targets, measured side by side in one process: model alone, `efx extract`'s
pipeline, and the Keras recipe a TensorFlow user would write instead, on typical and on large
photos; plus how close reduced-scale JPEG decoding stays to full-size decoding.

    python scripts/bench_targets.py [--model DIR] [--typical 96] [--large 24] [--rounds 2]
                                    [--configs tensorflow,openvino,openvino:bfloat16]
                                    [--sets typical,large]

The Keras recipe: `tf_keras.utils.image_dataset_from_directory` (its own decode and bilinear
resize to 528x528) scaled to [0, 1], feeding `hub.KerasLayer(model)` through `model.predict`,
same model and batch size. Each backend/precision in --configs is measured model alone and
through efx. Rounds alternate all of them so that machine noise hits all alike.
Without --model it uses the EfficientNet-B6 stand-in in .cache/standin-b6 (real compute).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import numpy as np  # noqa: E402
from make_photos import make_photos  # noqa: E402

from efx import writers  # noqa: E402
from efx.bench import _model_alone, time_pipeline  # noqa: E402
from efx.config import DecodeOptions  # noqa: E402
from efx.discover import find_images  # noqa: E402
from efx.engine import LocalEngine  # noqa: E402
from efx.inputs import loose  # noqa: E402
from efx.model import load_model, resolve_model  # noqa: E402
from efx.reuse import embed_all  # noqa: E402
from efx.run.loop import Feed, stream  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def efx_pipeline(loaded, paths: list[str]) -> float:
    """`efx extract`'s streaming phase, its input pipeline's set-up included, rows kept in
    memory as the Keras recipe's `predict` keeps them."""
    return time_pipeline(loaded, paths, DecodeOptions(loaded.image_size))


def embed_to(loaded, paths: list[str], output: str, scaling: bool) -> None:
    options = DecodeOptions(loaded.image_size, jpeg_scaling=scaling)
    attrs = {"feature_dim": loaded.feature_dim}
    writer = writers.open_writer("hdf5", output, attrs, inputs=paths)
    inputs = [loose(path) for path in paths]
    feed = Feed(LocalEngine(), options, loaded)
    stream(inputs, embed_all(len(inputs)), [], writer, None, feed)
    writer.close()


def keras_model(model_dir: str, size: int, batch: int):
    """The Keras recipe's model, loaded and warmed outside the timing, as efx's is: both are
    timed from their input pipeline to the last embedding, without the model load."""
    import tensorflow_hub as hub
    import tf_keras

    model = tf_keras.Sequential([hub.KerasLayer(model_dir)])
    model.predict(np.zeros([batch, size, size, 3], np.float32), verbose=0)
    return model


def keras_recipe(model, folder: str, size: int, batch: int) -> tuple[float, np.ndarray]:
    import tf_keras

    start = time.perf_counter()
    dataset = tf_keras.utils.image_dataset_from_directory(
        folder, labels=None, image_size=(size, size), batch_size=batch, shuffle=False
    ).map(lambda x: x / 255.0)
    embeddings = model.predict(dataset, verbose=0)
    return len(embeddings) / (time.perf_counter() - start), embeddings


def median_ratio(numerators: list[float], denominators: list[float]) -> float:
    """The median of the per-round ratios: each round's figures were measured side by side."""
    return round(statistics.median(n / d for n, d in zip(numerators, denominators, strict=True)), 3)


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=os.path.join(REPO, ".cache", "standin-b6"))
    parser.add_argument("--typical", type=int, default=96, help="1024x768 JPEGs")
    parser.add_argument("--large", type=int, default=24, help="4000x3000 JPEGs")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument(
        "--configs",
        default="tensorflow,openvino,openvino:bfloat16",
        help="backend[:precision] list, each measured model alone and through efx",
    )
    parser.add_argument("--sets", default="typical,large", help="which photo sets to measure")
    args = parser.parse_args()
    if not os.path.isdir(args.model):
        from efx.standin import build_standin

        build_standin(args.model, "b6")
    work = tempfile.mkdtemp(prefix="efx-targets-")
    sets = {
        "typical 1024x768": (os.path.join(work, "typical"), args.typical, 1024, 768),
        "large 4000x3000": (os.path.join(work, "large"), args.large, 4000, 3000),
    }
    sets = {name: s for name, s in sets.items() if name.split()[0] in args.sets.split(",")}
    for folder, count, width, height in sets.values():
        make_photos(folder, count, width, height)
    spec = resolve_model(args.model)
    models = {}
    for config in args.configs.split(","):
        backend, _, precision = config.partition(":")
        models[config] = load_model(spec, None, args.batch_size, precision or "float32", backend)
        print(f"{config}: {models[config].backend} {models[config].precision}", flush=True)
    loaded = next(iter(models.values()))
    print(f"model {loaded.name}, {loaded.device}, batch {loaded.batch_size}", flush=True)
    keras = keras_model(args.model, loaded.image_size, loaded.batch_size)
    report = {}
    for name, (folder, _, _, _) in sets.items():
        paths = find_images([folder])
        figures: dict[str, list[float]] = {"keras": []}
        for round_ in range(args.rounds):
            for config, model in models.items():
                alone = _model_alone(model, len(paths))
                figures.setdefault(f"{config} model alone", []).append(alone)
                speed = efx_pipeline(model, paths)
                figures.setdefault(f"{config} efx", []).append(speed)
            speed, _ = keras_recipe(keras, folder, loaded.image_size, loaded.batch_size)
            figures["keras"].append(speed)
            print(name, "round", round_ + 1, {k: round(v[-1], 3) for k, v in figures.items()})
        report[name] = {"images/s": {k: round(statistics.median(v), 3) for k, v in figures.items()}}
        for config in models:
            efx_speeds = figures[f"{config} efx"]
            report[name][f"{config}: efx / model alone"] = median_ratio(
                efx_speeds, figures[f"{config} model alone"]
            )
            report[name][f"{config}: efx / keras recipe"] = median_ratio(
                efx_speeds, figures["keras"]
            )
    if "large 4000x3000" not in sets:
        print(json.dumps(report, indent=2))
        return
    # Reduced-scale JPEG decoding on the large photos: embeddings next to full-size decoding.
    folder = sets["large 4000x3000"][0]
    paths = find_images([folder])
    embed_to(loaded, paths, os.path.join(work, "scaled.h5"), scaling=True)
    embed_to(loaded, paths, os.path.join(work, "full.h5"), scaling=False)
    similarity = cosines(
        writers.read(os.path.join(work, "scaled.h5"))[1],
        writers.read(os.path.join(work, "full.h5"))[1],
    )
    report["large: cosine, reduced-scale vs full-size decode"] = {
        "min": round(float(similarity.min()), 6),
        "mean": round(float(similarity.mean()), 6),
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
