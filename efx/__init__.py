"""efx: batch image feature extraction with TF-Hub EfficientNet, to HDF5 or .npy shards."""

from __future__ import annotations

__version__ = "0.1.0"

from .api import MergeSummary, Summary, extract, load, merge
from .errors import EfxError

__all__ = ["EfxError", "MergeSummary", "Summary", "__version__", "extract", "load", "merge"]
