"""How images become model input: the decode settings, as data. No TensorFlow here.

The CLI builds a `DecodeOptions`, `efx.extract` validates it before any work, and the decode
stage reads it. The same options are stored in every output, so that a later run (--resume,
merge) can tell whether its rows are comparable.
"""

from __future__ import annotations

from dataclasses import dataclass

from .errors import EfxError

# squash: stretch to the square (the TF-Hub convention); crop: centre square of the shorter
# side; pad: fit inside the square and pad with black.
RESIZE_MODES = ("squash", "crop", "pad")

# float32: the module as published. bfloat16: for CPUs with bfloat16 instructions (OpenVINO's
# inference hint, or TensorFlow's oneDNN graph rewrite). float16: TensorFlow's CUDA graph
# rewrite, for GPUs.
PRECISIONS = ("float32", "bfloat16", "float16")

# What runs the model. auto: OpenVINO on a CPU when installed and able to convert the model
# (faster there), TensorFlow otherwise and always on a GPU.
BACKENDS = ("auto", "tensorflow", "openvino")

# Where the work runs. local: tf.data and the model in this process. ray: a Ray cluster, through
# Ray Data (the same decode function and model code, run by Ray workers).
ENGINES = ("local", "ray")

# Pillow's limit (Image.MAX_IMAGE_PIXELS): a header that claims more pixels is a decompression
# bomb or an image no embedding model needs at full size.
DEFAULT_MAX_PIXELS = 89_478_485


@dataclass(frozen=True)
class DecodeOptions:
    image_size: int
    resize: str = "squash"
    exif: bool = True  # apply the EXIF orientation tag of JPEGs
    max_pixels: int = DEFAULT_MAX_PIXELS
    # Decode large JPEGs at a reduced DCT scale that still covers image_size (measured: the
    # embedding stays within cosine 0.999 of full-size decoding). Off only to measure that.
    jpeg_scaling: bool = True

    def __post_init__(self) -> None:
        if self.resize not in RESIZE_MODES:
            raise EfxError(
                f"--resize must be one of {', '.join(RESIZE_MODES)}. Received: {self.resize!r}"
            )
        if not isinstance(self.max_pixels, int) or self.max_pixels < 1:
            raise EfxError(
                f"--max-pixels must be a positive integer. Received: {self.max_pixels!r}"
            )
