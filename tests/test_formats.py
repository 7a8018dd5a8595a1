"""The output formats' registry (efx.formats) is the one list: every other list of formats in
efx, its CLI and its README is tied to it here, and every file format offers what efx asks of
it (a writer, and the readers --resume, --update, merge and search use)."""

from __future__ import annotations

import os
import re

import pytest
from conftest import REPO

from efx import config, formats, writers
from efx.writers import bucket, npy, parquet

# What efx.writers calls on a file format's module.
FILE_FORMAT_FUNCTIONS = (
    "check_target", "unstorable", "read", "rows", "iter_rows", "RowReader", "read_failures",
    "read_state", "refresh_facts", "describe",
)  # fmt: skip


def test_every_list_of_formats_is_the_registry():
    assert config.FORMATS == formats.NAMES == writers.FORMATS
    assert list(writers.WRITERS) == list(formats.FORMATS)
    assert set(formats.FILE_FORMATS) | set(formats.STREAM_FORMATS) == set(formats.NAMES)
    assert bucket.MANIFESTS == {"npy": npy.MANIFEST, "parquet": parquet.MANIFEST}
    assert set(bucket.MANIFESTS) == set(formats.FOLDER_FORMATS)


def test_the_cli_and_the_readme_offer_the_registrys_formats():
    from efx.cli import main

    extract = main.commands["extract"]
    choices = next(p for p in extract.params if p.name == "format").type.choices
    assert tuple(choices) == formats.NAMES
    with open(os.path.join(REPO, "README.md"), encoding="utf-8") as file:
        readme = file.read()
    listed = re.findall(r"`--format ([a-z0-9|\\]*\|[a-z0-9|\\]*)`", readme)  # (\| in a table)
    assert len(listed) >= 2
    assert all(found.replace("\\", "") == "|".join(formats.NAMES) for found in listed)


@pytest.mark.parametrize("name", formats.FILE_FORMATS)
def test_each_file_format_offers_the_writer_and_readers_efx_uses(name):
    found = formats.FORMATS[name]
    assert isinstance(writers.WRITERS[name], type)
    module = found.code()
    missing = [f for f in FILE_FORMAT_FUNCTIONS if not hasattr(module, f)]
    assert missing == []


@pytest.mark.parametrize(
    "output, expected",
    [("a.h5", "hdf5"), ("A.HDF5", "hdf5"), ("e.parquet", "parquet"), ("e.parquet/", "parquet"),
     ("shards", "npy"), ("x.npy", "npy"), ("-", "jsonl")],
)  # fmt: skip
def test_an_outputs_name_chooses_its_format_from_the_registrys_suffixes(output, expected):
    assert writers.format_for(output) == expected
