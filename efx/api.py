"""The library entry points: `extract` (the loop joining the stages) and `load` (the reader).

Data flows one way: discover (paths) -> decode (tf.data) -> model (embeddings) -> writers.
Everything before the model load is checked without importing TensorFlow.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, replace
from datetime import datetime, timezone
from typing import Any, BinaryIO

import numpy as np

from . import writers
from .config import DEFAULT_MAX_PIXELS, DecodeOptions
from .discover import check_sources, find_images
from .errors import EfxError
from .model import DEFAULT_MODEL, LoadedModel, load_model, resolve_model

DEFAULT_SHARD_SIZE = 10_000
MAX_IMAGE_SIZE = 2048


@dataclass
class Summary:
    """What a run did; `efx extract --json` prints exactly this."""

    output: str
    format: str
    model: str
    standin: bool
    device: str
    image_size: int
    feature_dim: int
    batch_size: int
    images: int
    embedded: int
    failed: int
    seconds: float  # the whole run
    load_seconds: float  # of which loading the model (download, restore, first call)
    images_per_second: float  # embedded images per second of streaming, after the model load
    complete: bool

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def extract(
    sources: str | Iterable[str],
    output: str,
    *,
    model: str | None = None,
    image_size: int | None = None,
    batch_size: int | None = None,
    format: str | None = None,  # noqa: A002 - mirrors --format
    resize: str = "squash",
    exif: bool = True,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    shard_size: int = DEFAULT_SHARD_SIZE,
    overwrite: bool = False,
    null: bool = False,
    stdin: BinaryIO | None = None,
    progress: bool = False,
) -> Summary:
    """Embed every image of `sources` into `output` (HDF5 file or folder of .npy shards).

    `sources` are folders (walked recursively), image files, or "-" for paths read from `stdin`.
    Images that cannot be read or decoded are recorded as failures; the run goes on.
    """
    sources = [sources] if isinstance(sources, str) else list(sources)
    check_sources(sources)
    fmt = writers.format_for(output, format)
    _check_positive("--batch-size", batch_size)
    _check_positive("--image-size", image_size, MAX_IMAGE_SIZE)
    _check_positive("--shard-size", shard_size)
    options = DecodeOptions(image_size or 1, resize=resize, exif=exif, max_pixels=max_pixels)
    writers.check_output(output, fmt, overwrite)
    spec = resolve_model(model or os.environ.get("EFX_MODEL") or DEFAULT_MODEL)
    paths = find_images(sources, stdin=stdin, null=null)
    if not paths:
        raise EfxError(
            f"no images found in {', '.join(sources)} "
            "(folders are searched for .jpg .jpeg .png .gif .bmp .webp files)"
        )

    started = time.monotonic()
    if progress:  # the load takes seconds to minutes (a first run downloads): say what is going on
        print(f"efx: loading {spec.handle} ...", file=sys.stderr, flush=True)
    loaded = load_model(spec, image_size, batch_size)
    loaded_at = time.monotonic()
    options = replace(options, image_size=loaded.image_size)
    attrs = {
        "model": loaded.name,
        "standin": loaded.standin,
        "image_size": loaded.image_size,
        "feature_dim": loaded.feature_dim,
        "resize": options.resize,
        "exif_orientation": options.exif,
        "efx_version": _version(),
        "tensorflow_version": _tf_version(),
        "device": loaded.device,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    writer_options = {"shard_size": shard_size} if fmt == "npy" else {}
    try:
        writer = writers.open_writer(fmt, output, attrs, **writer_options)
    except OSError as error:
        raise EfxError(f"cannot create OUTPUT {output}: {error.strerror or error}") from error
    try:
        embedded, failed = _stream(paths, fmt, options, loaded, writer, progress)
        writer.close()
    except OSError as error:
        _abort(writer)
        raise EfxError(
            f"writing {output} failed: {error.strerror or error} (disk full?). The rows written "
            "so far are kept and the output is marked incomplete."
        ) from error
    except BaseException:
        _abort(writer)
        raise

    finished = time.monotonic()
    streaming = finished - loaded_at
    return Summary(
        output=output,
        format=fmt,
        model=loaded.name,
        standin=loaded.standin,
        device=loaded.device,
        image_size=loaded.image_size,
        feature_dim=loaded.feature_dim,
        batch_size=loaded.batch_size,
        images=len(paths),
        embedded=embedded,
        failed=failed,
        seconds=round(finished - started, 3),
        load_seconds=round(loaded_at - started, 3),
        images_per_second=round(embedded / streaming, 3) if streaming > 0 else 0.0,
        complete=True,
    )


def _stream(
    paths: list[str],
    fmt: str,
    options: DecodeOptions,
    loaded: LoadedModel,
    writer: writers.Writer,
    progress: bool,
) -> tuple[int, int]:
    """The loop: decoded batches -> model -> writer, failures recorded as they come."""
    from . import decode  # imports TensorFlow; deferred so that the checks stay instant

    embedded = failed = 0
    storable = []
    for path in paths:
        problem = writers.unstorable(fmt, path)
        if problem:
            writer.fail(path, problem)
            failed += 1
        else:
            storable.append(path)

    batches = decode.image_batches(storable, options, loaded.batch_size)
    with _progress_bar(len(paths), progress) as bar:
        bar.update(failed)
        for index, images, ok in batches:
            index, ok = index.numpy(), ok.numpy()
            if ok.any():
                good = images if ok.all() else _select(images, ok)
                writer.write([storable[i] for i in index[ok]], loaded.embed(good))
                embedded += int(ok.sum())
            for i in index[~ok]:
                writer.fail(storable[i], decode.failure_reason(storable[i], options))
                failed += 1
            bar.update(len(index))
    return embedded, failed


def _abort(writer: writers.Writer) -> None:
    """Leave the output marked incomplete; a second failure here must not hide the first."""
    with contextlib.suppress(Exception):
        writer.abort()


def load(output: str) -> tuple[list[str], np.ndarray]:
    """Read an efx output of either format: (paths, float32 embeddings), row i with path i."""
    return writers.read(output)


def _check_positive(flag: str, value: int | None, limit: int | None = None) -> None:
    if value is None:
        return
    if not isinstance(value, int) or value < 1:
        raise EfxError(f"{flag} must be a positive integer. Received: {value!r}")
    if limit is not None and value > limit:
        raise EfxError(f"{flag} must be at most {limit}. Received: {value}")


def _select(images: Any, ok: np.ndarray) -> Any:
    import tensorflow as tf

    return tf.boolean_mask(images, ok)


def _progress_bar(total: int, enabled: bool) -> Any:
    from tqdm import tqdm

    return tqdm(
        total=total,
        unit="img",
        disable=not enabled,
        file=sys.stderr,
        dynamic_ncols=True,
        desc="efx",
        smoothing=0.1,
    )


def _version() -> str:
    from . import __version__

    return __version__


def _tf_version() -> str:
    import tensorflow as tf

    return str(tf.__version__)
