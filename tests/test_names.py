"""Every name efx stores reads back exactly, through every reader the README shows: tabs, line
breaks, backslashes, bytes that are not UTF-8. The README's own recipes are run as written."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess

import pytest
from conftest import EFX, REPO, SAMPLES

import efx
from efx.names import escape, to_json, unescape

NAMES = [
    "beach.png",
    "beach\tcopy.png",
    "beach\n2.png",
    "back\\slash.png",
    "日本の写真.png",
    "line\u2028separator.png",
    os.fsdecode(b"caf\xe9.png"),  # Latin-1, from an old share: not UTF-8
]
BROKEN = os.fsdecode(b"broken\xff\tname.jpg")  # fails: its reason is stored under this name


@pytest.fixture(scope="module")
def odd_names(tmp_path_factory, tiny_model):
    """out.h5 and out/ (.npy shards) made from images with every awkward kind of name."""
    root = tmp_path_factory.mktemp("names")
    photos = root / "photos"
    photos.mkdir()
    for name in NAMES:
        shutil.copy(os.path.join(SAMPLES, "chelsea.png"), os.path.join(photos, name))
    with open(os.path.join(os.fsencode(photos), os.fsencode(BROKEN)), "wb") as file:
        file.write(b"not a picture\n")
    efx.extract(str(photos), str(root / "out.h5"), model=tiny_model, image_size=32)
    efx.extract(str(photos), str(root / "out"), model=tiny_model, image_size=32)
    return root


def readme_recipe(marker: str) -> str:
    """The README's Python block that contains `marker`, as written there."""
    with open(os.path.join(REPO, "README.md"), encoding="utf-8") as file:
        blocks = re.findall(r"```python\n(.*?)```", file.read(), re.S)
    (block,) = [b for b in blocks if marker in b]
    return block


def run_recipe(marker: str, folder, monkeypatch) -> dict:
    monkeypatch.chdir(folder)
    monkeypatch.setenv("PATH", os.path.dirname(EFX) + os.pathsep + os.environ["PATH"])
    scope: dict = {}
    exec(readme_recipe(marker), scope)
    return scope


def names_in(paths) -> set[str]:
    return {os.path.basename(path) for path in paths}


def test_the_readme_hdf5_recipe_reads_every_name(odd_names, monkeypatch):
    scope = run_recipe('h5py.File("out.h5")', odd_names, monkeypatch)
    assert names_in(scope["paths"]) == set(NAMES)
    assert list(scope["paths"]) == efx.load(str(odd_names / "out.h5"))[0]
    assert names_in(scope["failed"]) == {BROKEN}
    assert list(scope["reasons"]) == ["not an image (text file)"]


def test_the_readme_npy_recipe_reads_every_name_and_failure(odd_names, monkeypatch):
    scope = run_recipe('"out/manifest.json"', odd_names, monkeypatch)
    paths, embeddings = efx.load(str(odd_names / "out"))
    assert scope["paths"] == paths and (scope["embeddings"] == embeddings).all()
    # .npy shards hold one name per line: the one with a line break is a failure, by name.
    assert names_in(paths) == set(NAMES) - {"beach\n2.png"}
    failed = {os.path.basename(f["path"]): f["error"] for f in scope["failures"]}
    assert set(failed) == {BROKEN, "beach\n2.png"}
    assert os.fsencode(BROKEN) in {
        os.fsencode(os.path.basename(f["path"])) for f in scope["failures"]
    }


def test_the_readme_tsv_recipe_and_every_line_is_one_record(odd_names, monkeypatch):
    scope = run_recipe("from efx.names import unescape", odd_names, monkeypatch)
    lines = scope["found"].splitlines()
    assert len(lines) == len(NAMES)  # one group of identical pictures, one line each
    assert all(len(line.split("\t")) == 3 for line in lines)
    assert names_in(unescape(line.split("\t")[2]) for line in lines) == set(NAMES)


def test_similar_prints_one_escaped_line_per_hit_and_valid_json(odd_names):
    query = str(odd_names / "photos" / "beach\tcopy.png")
    result = subprocess.run(
        [EFX, "similar", str(odd_names / "out.h5"), query, "-k", "10"], capture_output=True
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.decode("utf-8").splitlines()  # strict: the output is valid UTF-8
    assert len(lines) == len(NAMES) - 1
    fields = [line.split("\t") for line in lines]
    assert all(unescape(f[0]) == query and len(f) == 4 for f in fields)
    assert names_in(unescape(f[2]) for f in fields) == set(NAMES) - {"beach\tcopy.png"}
    as_json = subprocess.run(
        [EFX, "similar", str(odd_names / "out.h5"), query, "--json"], capture_output=True
    )
    hits = json.loads(as_json.stdout.decode("utf-8"))[0]["hits"]
    assert names_in(hit["path"] for hit in hits) == set(NAMES) - {"beach\tcopy.png"}


def test_info_and_the_run_summary_name_a_failure_on_one_line(odd_names):
    result = subprocess.run([EFX, "info", str(odd_names / "out.h5")], capture_output=True)
    assert b"broken\\xff\\tname.jpg: not an image (text file)" in result.stdout
    described = subprocess.run([EFX, "info", str(odd_names / "out"), "--json"], capture_output=True)
    failures = json.loads(described.stdout.decode("utf-8"))["failures"]
    assert BROKEN in {os.path.basename(f["path"]) for f in failures}


@pytest.mark.parametrize("name", [*NAMES, "a\x1cb\x85c\x00\x7fd", "\\x41", "tab\\t"])
def test_escape_and_json_round_trip_every_name(name):
    field = escape(name)
    assert unescape(field) == name
    assert len(field.splitlines()) == 1 and "\t" not in field
    assert json.loads(to_json(name)) == name
    to_json(name).encode("utf-8")  # valid UTF-8, whatever the name held


def test_npy_failures_keep_a_name_that_is_not_utf8_for_update(odd_names, tiny_model):
    # The stored name is the name: an update finds the failure unchanged and does not retry it.
    again = efx.extract(
        str(odd_names / "photos"), str(odd_names / "out"), model=tiny_model, image_size=32,
        update=True,
    )  # fmt: skip
    assert (again.computed, again.kept, again.new) == (0, 7, 0)  # 6 rows, the broken file


@pytest.mark.parametrize("command", ["duplicates", "similar"])
def test_a_contact_sheet_shows_every_name(odd_names, command):
    page = odd_names / f"{command}.html"
    query = [str(odd_names / "photos" / NAMES[-1])] if command == "similar" else []
    result = subprocess.run(
        [EFX, command, str(odd_names / "out.h5"), *query, "--html", str(page)],
        capture_output=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    html = page.read_text(encoding="utf-8")
    assert "caf\\xe9.png" in html and "日本の写真.png" in html and "beach\tcopy.png" in html
    assert html.count("<img ") == len(NAMES)  # every one shown, the query's own included
