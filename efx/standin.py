"""The offline stand-in: a SavedModel with the TF-Hub EfficientNet module's exact interface and
architecture but random weights, for demos and benchmarks where the real model cannot be fetched.

It computes as much as the real module, so it measures real speed; its embeddings mean nothing.
A marker file inside the folder makes efx label every output made with it as a stand-in.
"""

from __future__ import annotations

import json
import os

from . import files
from .errors import EfxError
from .model import STANDIN_MARKER

# keras.applications constructors and their native sizes, the same as the TF-Hub collection.
ARCHITECTURES = {
    "b0": ("EfficientNetB0", 224),
    "b1": ("EfficientNetB1", 240),
    "b2": ("EfficientNetB2", 260),
    "b3": ("EfficientNetB3", 300),
    "b4": ("EfficientNetB4", 380),
    "b5": ("EfficientNetB5", 456),
    "b6": ("EfficientNetB6", 528),
    "b7": ("EfficientNetB7", 600),
}


def build_standin(folder: str, arch: str = "b6", seed: int = 0) -> str:
    """Export a random-weight EfficientNet feature-vector SavedModel to `folder` (atomically)."""
    if arch not in ARCHITECTURES:
        raise EfxError(
            f"unknown stand-in architecture; choose from {', '.join(ARCHITECTURES)}. "
            f"Received: {arch}"
        )
    if os.path.exists(folder):
        raise EfxError(f"refusing to overwrite existing {folder}")
    import tensorflow as tf
    import tf_keras

    constructor, size = ARCHITECTURES[arch]
    tf_keras.utils.set_random_seed(seed)
    # The real module takes [0, 1] and scales internally; keras.applications expects [0, 255].
    inputs = tf_keras.Input(shape=(None, None, 3), dtype="float32")
    scaled = tf_keras.layers.Rescaling(255.0)(inputs)
    backbone = getattr(tf_keras.applications, constructor)(
        include_top=False, weights=None, pooling="avg", input_shape=(None, None, 3)
    )
    model = tf_keras.Model(inputs, backbone(scaled), name=f"efficientnet_{arch}_standin")

    parent = os.path.dirname(os.path.abspath(folder))
    with files.scratch_folder(parent, ".standin-") as scratch:
        # Exported the way the real module was: a Keras 2 model through tf.saved_model.save.
        tf.saved_model.save(model, scratch)
        marker = {
            "architecture": f"EfficientNet-{arch.upper()} architecture",
            "weights": f"random (seed {seed})",
            "image_size": size,
            "note": "efx offline stand-in: real compute, meaningless embeddings",
        }
        with open(os.path.join(scratch, STANDIN_MARKER), "w", encoding="utf-8") as file:
            json.dump(marker, file, indent=2)
        files.replace(scratch, folder)
    return folder
