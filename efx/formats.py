"""Output formats described as data: one `Format` per format, found through `FORMATS`, the one
registry every list of formats comes from (the CLI's --format choices, the writers, which
formats stream to stdout, which go to a bucket and with which manifest, which hold source
columns). Pure Python: `efx --help` reads it without importing a writer, numpy or h5py.

A new format is a module in efx/writers/ with a writer class (and, for a file format, the
readers: see efx.writers) plus one line here.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Format:
    """What efx knows of one output format."""

    name: str  # --format NAME
    module: str  # efx.writers.MODULE: its writer (and, for a file format, its readers)
    writer: str  # the writer class in it
    suffixes: tuple[str, ...] = ()  # an OUTPUT named so is this format (lower case)
    stream: bool = False  # records on stdout (OUTPUT -), not an output on disk
    folder: bool = False  # a folder of files (what a bucket can hold: each file uploaded whole)
    manifest: str = ""  # a folder format's manifest, relative to the folder: it says what is done
    columns: bool = False  # holds source columns beside the embeddings (--keep-columns, shard, key)

    def writer_class(self) -> Any:
        return getattr(self.code(), self.writer)

    def code(self) -> Any:
        """Its module in efx.writers, imported now."""
        return importlib.import_module(f"efx.writers.{self.module}")


FORMATS: dict[str, Format] = {
    f.name: f
    for f in (
        Format("hdf5", "hdf5", "Hdf5Writer", suffixes=(".h5", ".hdf5")),
        Format(
            "parquet",
            "parquet",
            "ParquetWriter",
            suffixes=(".parquet",),
            folder=True,
            manifest=".efx/manifest.json",
            columns=True,
        ),  # fmt: skip
        Format("npy", "npy", "NpyWriter", folder=True, manifest="manifest.json"),
        Format("jsonl", "stream", "JsonLinesWriter", stream=True),
        Format("arrow", "stream", "ArrowStreamWriter", stream=True),
    )
}
NAMES = tuple(FORMATS)
FILE_FORMATS = tuple(name for name, f in FORMATS.items() if not f.stream)  # OUTPUT on disk
STREAM_FORMATS = tuple(name for name, f in FORMATS.items() if f.stream)  # OUTPUT - (stdout)
FOLDER_FORMATS = tuple(name for name, f in FORMATS.items() if f.folder)  # also in a bucket
DEFAULT_FILE = "npy"  # an OUTPUT whose name says no format: a folder of .npy shards
DEFAULT_STREAM = "jsonl"  # OUTPUT -


def named_by(output: str) -> str:
    """The file format OUTPUT's name says (`.h5`, `.parquet` ...), else DEFAULT_FILE."""
    name = output.lower().rstrip("/")
    found = (f.name for f in FORMATS.values() if f.suffixes and name.endswith(f.suffixes))
    return next(found, DEFAULT_FILE)
