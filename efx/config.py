"""A run's settings, as data, validated once. No TensorFlow here.

`Settings` holds every option of `efx extract` that decides what is computed and where it goes.
The CLI and `efx.extract` both build one, and its `__post_init__` judges every value that can be
judged without the model, before any work. `DecodeOptions` is the part the decode stage reads.
The options that shape the rows are also stored in every output, so that a later run (--resume,
merge) can tell whether its rows are comparable.

Adding an option: a field here (with its check), a Click option of the same name in efx/cli/
(embed.py, or options.py when several commands share it), and the stage that reads it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from .errors import EfxError
from .formats import NAMES

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

# hdf5, parquet and npy: files on disk; jsonl and arrow: records streamed to stdout (OUTPUT -):
# the registry's names (efx.formats, which --help reads without importing a writer).
FORMATS = NAMES

# Pillow's limit (Image.MAX_IMAGE_PIXELS): a header that claims more pixels is a decompression
# bomb or an image no embedding model needs at full size.
# efx duplicates --method: every pair, or through the index beside OUTPUT (efx.index), or the
# index from INDEX_FROM_ROWS rows on (below, comparing every pair takes about as long as
# building the index).
DUPLICATE_METHODS = ("auto", "exact", "index")
INDEX_FROM_ROWS = 50_000

DEFAULT_MAX_PIXELS = 89_478_485
DEFAULT_SHARD_SIZE = 10_000
MAX_IMAGE_SIZE = 2048


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
        _check_choice("--resize", self.resize, RESIZE_MODES)
        check_positive("--max-pixels", self.max_pixels)


# The columns a Parquet output holds of its own: --keep-columns cannot name them.
OWN_COLUMNS = ("path", "embedding", "size", "mtime_ns", "sha256", "shard", "key")


def parse_columns(value: str | Sequence[str] | None) -> tuple[str, ...] | None:
    """--keep-columns: "caption,url" (or names) -> ("caption", "url"); None if none given."""
    if value is None:
        return None
    names = value.split(",") if isinstance(value, str) else list(value)
    names = [name.strip() for name in names if name.strip()]
    if not names:
        raise EfxError(f"--keep-columns takes names separated by commas. Received: {value!r}")
    taken = [name for name in names if name in OWN_COLUMNS]
    if taken:
        raise EfxError(
            f"--keep-columns: {', '.join(taken)} is one of the output's own columns "
            f"({', '.join(OWN_COLUMNS)}): efx writes it itself. Received: {value!r}"
        )
    return tuple(dict.fromkeys(names))


@dataclass(frozen=True)
class Settings:
    """Every option of `efx extract` that decides what is computed and where it is written.

    Field names are the Python keywords of `efx.extract` and the CLI's option names
    (`--image-size` is `image_size`; `--shard I/N` is `part`).
    """

    model: str | None = None  # None: EFX_MODEL, else EfficientNet-B6 from TF-Hub
    image_size: int | None = None  # None: the model's own
    batch_size: int | None = None  # None: by device
    format: str | None = None  # None: from OUTPUT's name
    resize: str = "squash"
    exif: bool = True
    max_pixels: int = DEFAULT_MAX_PIXELS
    precision: str = "float32"
    backend: str = "auto"
    engine: str = "local"
    ray_address: str | None = None
    shard_size: int | None = None  # None: OUTPUT's own (--update, --resume), else 10,000
    overwrite: bool = False
    resume: bool = False
    update: bool = False  # bring OUTPUT in line with the sources: embed only what changed
    checksum: bool = False  # --update: compare every file's bytes, not size and mtime
    retry_failed: bool = False  # --update: try unchanged failures again
    part: str | None = None  # "I/N": only part I of N of the inputs
    null: bool = False  # stdin paths are NUL-separated
    image_column: str | None = None  # Parquet shards: the column of image bytes
    image_key: str | None = None  # tar shards: the image member's extension; TFRecord: feature
    # Source columns carried into a Parquet output ("caption,url" or a sequence of names).
    keep_columns: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "keep_columns", parse_columns(self.keep_columns))
        check_positive("--batch-size", self.batch_size)
        check_positive("--image-size", self.image_size, MAX_IMAGE_SIZE)
        check_positive("--shard-size", self.shard_size)
        _check_choice("--format", self.format, FORMATS)
        _check_choice("--precision", self.precision, PRECISIONS)
        _check_choice("--backend", self.backend, BACKENDS)
        _check_choice("--engine", self.engine, ENGINES)
        self.decode_options(1)  # --resize, --max-pixels
        parse_part(self.part)
        if self.ray_address and self.engine != "ray":
            raise EfxError(
                f"--ray-address is for --engine ray. Received: --ray-address {self.ray_address} "
                f"with --engine {self.engine}"
            )
        if self.ray_address and not _is_ray_address(self.ray_address):
            raise EfxError(
                "--ray-address must be HOST:PORT, ray://HOST:PORT, auto or local. "
                f"Received: {self.ray_address!r}"
            )
        if self.resume and self.overwrite:
            raise EfxError("--resume continues OUTPUT and --overwrite replaces it: choose one")
        if self.update and (self.resume or self.overwrite):
            other = "--resume" if self.resume else "--overwrite"
            raise EfxError(
                f"--update brings OUTPUT in line with the sources (and continues an interrupted "
                f"one): it cannot be combined with {other}"
            )
        for flag, value in (("--checksum", self.checksum), ("--retry-failed", self.retry_failed)):
            if value and not self.update:
                raise EfxError(f"{flag} is for --update. Received: {flag} without --update")

    def decode_options(self, image_size: int) -> DecodeOptions:
        return DecodeOptions(image_size, self.resize, self.exif, self.max_pixels)

    @property
    def part_of(self) -> tuple[int, int]:
        """(I, N) of --shard I/N; (0, 1) for all the inputs."""
        return parse_part(self.part)


def parse_part(text: str | None) -> tuple[int, int]:
    """ "I/N" -> (I, N), with 0 <= I < N; None -> (0, 1)."""
    if text is None:
        return 0, 1
    index, slash, count = text.partition("/")
    try:
        part = (int(index), int(count))
    except ValueError:
        part = (-1, 0)
    if not slash or not 0 <= part[0] < part[1]:
        raise EfxError(f"--shard must be I/N with 0 <= I < N, e.g. 0/4. Received: {text!r}")
    return part


def check_positive(flag: str, value: int | None, limit: int | None = None) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise EfxError(f"{flag} must be a positive integer. Received: {value!r}")
    if limit is not None and value > limit:
        raise EfxError(f"{flag} must be at most {limit}. Received: {value}")


def _is_ray_address(address: str) -> bool:
    if address in ("auto", "local"):
        return True
    host, _, port = address.removeprefix("ray://").rpartition(":")
    return bool(host) and port.isdigit()


def _check_choice(flag: str, value: str | None, choices: tuple[str, ...]) -> None:
    if value is not None and value not in choices:
        raise EfxError(f"{flag} must be one of {', '.join(choices)}. Received: {value!r}")
