"""HDF5 output: `embeddings` (N, D) float32, `paths` (N,) UTF-8, `failures/{paths,errors}`."""

from __future__ import annotations

import atexit
import contextlib
import os
import re
import sys
from collections.abc import Iterator
from typing import Any

import h5py
import numpy as np

from ..errors import EfxError

_TEXT = h5py.string_dtype("utf-8")
_CHUNK_BYTES = 1 << 20  # ~1 MiB chunks: cheap appends, and reading a few rows stays cheap


def is_hdf5(path: str) -> bool:
    return bool(h5py.is_hdf5(path))


def check_target(output: str, overwrite: bool) -> None:
    if os.path.isdir(output):
        raise EfxError(f"OUTPUT {output} is a folder; an HDF5 output must be a file path")
    if os.path.exists(output) and not overwrite:
        raise EfxError(f"OUTPUT {output} already exists; pass --overwrite to replace it")


def unstorable(path: str) -> str | None:
    """HDF5 stores any path."""
    return None


def _encode(texts: list[str]) -> list[bytes]:
    # surrogateescape round-trips paths that are not valid UTF-8 byte for byte.
    return [text.encode("utf-8", "surrogateescape") for text in texts]


def _append(dataset: h5py.Dataset, rows: Any) -> None:
    start = dataset.shape[0]
    dataset.resize(start + len(rows), axis=0)
    dataset[start:] = rows


@contextlib.contextmanager
def _as_os_error() -> Iterator[None]:
    """h5py reports failed writes (disk full, EFBIG) as RuntimeError; efx expects OSError."""
    try:
        yield
    except (RuntimeError, OSError) as error:
        _skip_hdf5_shutdown()
        found = re.search(r"error message = '([^']*)'", str(error))
        raise OSError(found.group(1) if found else str(error).splitlines()[0]) from error


def _skip_hdf5_shutdown() -> None:
    """After a failed write, the HDF5 library retries the flush when the process exits and
    segfaults (HDF5 1.14, h5py 3.14). Python's atexit handlers run before the C library's, so
    one that ends the process there, with status 1, lets efx report the failure and exit cleanly.
    """
    global _shutdown_skipped
    if not _shutdown_skipped:
        _shutdown_skipped = True
        atexit.register(_exit_now)


def _exit_now() -> None:
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(1)


_shutdown_skipped = False


class Hdf5Writer:
    def __init__(self, output: str, attrs: dict[str, Any]) -> None:
        dim = int(attrs["feature_dim"])
        self._file = h5py.File(output, "w")
        rows = max(1, _CHUNK_BYTES // (4 * dim))
        self._embeddings = self._file.create_dataset(
            "embeddings", shape=(0, dim), maxshape=(None, dim), dtype="float32", chunks=(rows, dim)
        )
        self._paths = self._file.create_dataset(
            "paths", shape=(0,), maxshape=(None,), dtype=_TEXT, chunks=(1024,)
        )
        failures = self._file.create_group("failures")
        self._failed_paths = failures.create_dataset(
            "paths", shape=(0,), maxshape=(None,), dtype=_TEXT, chunks=(256,)
        )
        self._failed_errors = failures.create_dataset(
            "errors", shape=(0,), maxshape=(None,), dtype=_TEXT, chunks=(256,)
        )
        for key, value in attrs.items():
            self._file.attrs[key] = value
        self._file.attrs["complete"] = False
        self._file.flush()

    def write(self, paths: list[str], embeddings: np.ndarray) -> None:
        with _as_os_error():
            _append(self._embeddings, embeddings)
            _append(self._paths, _encode(paths))
            self._file.flush()

    def fail(self, path: str, reason: str) -> None:
        with _as_os_error():
            _append(self._failed_paths, _encode([path]))
            _append(self._failed_errors, _encode([reason]))

    def close(self) -> None:
        with _as_os_error():
            self._file.attrs["complete"] = True
            self._file.close()

    def abort(self) -> None:
        if self._file.id.valid:
            with _as_os_error():
                self._file.close()


def read(output: str) -> tuple[list[str], np.ndarray]:
    with h5py.File(output, "r") as file:
        _require(file, output)
        paths = list(file["paths"].asstr(errors="surrogateescape")[:])
        return paths, np.asarray(file["embeddings"][:], dtype=np.float32)


def describe(output: str) -> dict[str, Any]:
    with h5py.File(output, "r") as file:
        _require(file, output)
        attrs = {key: _plain(value) for key, value in file.attrs.items()}
        embeddings = file["embeddings"]
        failures = file["failures"]
        return {
            "count": int(embeddings.shape[0]),
            "feature_dim": int(embeddings.shape[1]),
            "dtype": str(embeddings.dtype),
            "model": attrs.get("model"),
            "image_size": attrs.get("image_size"),
            "resize": attrs.get("resize"),
            "exif_orientation": attrs.get("exif_orientation"),
            "failed": int(failures["paths"].shape[0]),
            "failures": [
                {"path": path, "error": error}
                for path, error in zip(
                    failures["paths"].asstr(errors="surrogateescape")[:20],
                    failures["errors"].asstr(errors="surrogateescape")[:20],
                    strict=True,
                )
            ],
            "complete": bool(attrs.get("complete", False)),
            "created": attrs.get("created"),
            "efx_version": attrs.get("efx_version"),
            "tensorflow_version": attrs.get("tensorflow_version"),
            "device": attrs.get("device"),
        }


def _require(file: h5py.File, output: str) -> None:
    if "embeddings" not in file or "paths" not in file or "failures" not in file:
        raise EfxError(f"not an efx output: {output} lacks the embeddings/paths/failures datasets")


def _plain(value: Any) -> Any:
    """HDF5 attribute values as plain Python (numpy scalars and bytes are not JSON-friendly)."""
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, np.generic):
        return value.item()
    return value
