"""efx: batch image feature extraction with TF-Hub EfficientNet, to HDF5, Parquet or .npy
shards."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .errors import EfxError
from .version import __version__

if TYPE_CHECKING:
    from .api import Summary, extract, info, load
    from .config import Settings
    from .parts import ConvertSummary, MergeSummary, convert, merge
    from .process import Interrupted
    from .search import duplicates, similar

__all__ = [
    "ConvertSummary",
    "EfxError",
    "Interrupted",
    "MergeSummary",
    "Settings",
    "Summary",
    "__version__",
    "convert",
    "extract",
    "info",
    "load",
    "merge",
    "duplicates",
    "similar",
]

# Where each public name lives; imported on first use.
_API = {
    "Summary": "api",
    "extract": "api",
    "info": "api",
    "load": "api",
    "Settings": "config",
    "ConvertSummary": "parts",
    "MergeSummary": "parts",
    "convert": "parts",
    "merge": "parts",
    "Interrupted": "process",
    "similar": "search",
    "duplicates": "search",
}


def __getattr__(name: str) -> Any:
    """The API (and its numpy and h5py) is imported on first use, so that `efx --help` and
    `efx extract --help`, which import this package, start in a tenth of a second."""
    if name in _API:
        return getattr(importlib.import_module(f".{_API[name]}", __name__), name)
    if not name.startswith("_"):
        try:
            return importlib.import_module(f".{name}", __name__)  # efx.writers, efx.model, …
        except ModuleNotFoundError as missing:
            if missing.name != f"{__name__}.{name}":
                raise
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
