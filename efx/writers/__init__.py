"""Output formats: one writer class per format with the same small interface, chosen by name.

Every writer takes `(path, attrs)`, where `attrs` holds the run's metadata (model, image_size,
feature_dim, versions, created), and offers:
- `write(paths, embeddings)`: append rows, in order;
- `fail(path, reason)`: record an input that could not be embedded;
- `close()`: finish, marking the output complete; `abort()`: flush, leaving it marked incomplete.

Each format module also has `read(path)` -> (paths, embeddings) and `describe(path)` -> dict,
which import neither TensorFlow nor anything slow.
"""

from __future__ import annotations

import os
from typing import Any, Protocol

import numpy as np

from ..errors import EfxError
from . import hdf5, npy

WRITERS = {"hdf5": hdf5.Hdf5Writer, "npy": npy.NpyWriter}
FORMATS = tuple(WRITERS)
_MODULES = {"hdf5": hdf5, "npy": npy}


class Writer(Protocol):
    def write(self, paths: list[str], embeddings: np.ndarray) -> None: ...
    def fail(self, path: str, reason: str) -> None: ...
    def close(self) -> None: ...
    def abort(self) -> None: ...


def format_for(output: str, override: str | None = None) -> str:
    """The output format: --format if given, else HDF5 for .h5/.hdf5 paths, else .npy shards."""
    if override:
        if override not in WRITERS:
            raise EfxError(f"--format must be one of {', '.join(FORMATS)}. Received: {override}")
        return override
    return "hdf5" if output.lower().endswith((".h5", ".hdf5")) else "npy"


def check_output(output: str, fmt: str, overwrite: bool) -> None:
    """Refuse, before any work, an output that exists (without --overwrite) or cannot be written."""
    parent = os.path.dirname(os.path.abspath(output))
    if not os.path.isdir(parent):
        raise EfxError(f"the folder for OUTPUT does not exist: {parent}")
    if not os.access(parent, os.W_OK):
        raise EfxError(f"cannot write to the folder for OUTPUT (permission denied): {parent}")
    _MODULES[fmt].check_target(output, overwrite)


def open_writer(fmt: str, output: str, attrs: dict[str, Any], **options: Any) -> Writer:
    writer: Writer = WRITERS[fmt](output, attrs, **options)
    return writer


def unstorable(fmt: str, path: str) -> str | None:
    """Why format `fmt` cannot store `path` as a row, or None."""
    return _MODULES[fmt].unstorable(path)  # type: ignore[no-any-return]


def detect_format(output: str) -> str:
    """The format of an existing output, or EfxError if it is not one."""
    if os.path.isdir(output):
        if os.path.isfile(os.path.join(output, npy.MANIFEST)):
            return "npy"
        raise EfxError(f"not an efx output: folder {output} has no {npy.MANIFEST}")
    if os.path.isfile(output):
        if hdf5.is_hdf5(output):
            return "hdf5"
        raise EfxError(f"not an efx output: {output} is neither HDF5 nor a folder of .npy shards")
    raise EfxError(f"output not found: {output}")


def read(output: str) -> tuple[list[str], np.ndarray]:
    return _MODULES[detect_format(output)].read(output)  # type: ignore[no-any-return]


def describe(output: str) -> dict[str, Any]:
    fmt = detect_format(output)
    info: dict[str, Any] = {"output": output, "format": fmt}
    info.update(_MODULES[fmt].describe(output))
    return info
