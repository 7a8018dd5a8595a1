"""efx duplicates through the index beside an output (efx.index): the same groups and pairs as
exact search on planted near-duplicates, in every format; pairs streamed to JSON Lines and
Parquet that DuckDB and pyarrow read; an index of another output, or of this one before it
changed, never used; a build killed at any moment leaves the old index or none."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from conftest import REPO, run_cli

import efx
from efx import index, writers

OUTPUTS = {"hdf5": "out.h5", "npy": "shards", "parquet": "out.parquet"}
DIM = 64


@pytest.fixture(autouse=True)
def small_index(monkeypatch):
    """Index settings scaled to these outputs' thousands of rows (the defaults are for
    millions): buckets of 100 rows on average, 16 directions kept of 64."""
    monkeypatch.setattr(index, "BUCKET_ROWS", 100)
    monkeypatch.setattr(index, "DIMS", 16)
    monkeypatch.setattr(index, "MIN_SAMPLE", 2000)
    monkeypatch.setattr(index, "BLOCK_ROWS", 512)
    monkeypatch.setattr(index, "RESCORE_PAIRS", 7)  # re-scored in several rounds


def planted_rows(count: int, seed: int = 0) -> tuple[np.ndarray, list[tuple[int, int]]]:
    """`count` rows spread like pooled image features (non-negative; around 50 centres, much of
    each row in a few directions; of 6,000 rows, a few different ones above 0.85), with
    near-copies planted at 0.65 to 0.997 (some below a 0.85 threshold), and at the end a chain
    of three rows whose ends are further apart than the threshold; and the planted (original,
    copy) rows."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((50, DIM))
    mixing = rng.standard_normal((24, DIM)) / np.sqrt(24) * 2  # much of a row in 24 directions
    rows = centres[rng.integers(0, 50, count)] * 0.6 + rng.standard_normal((count, 24)) @ mixing
    rows = np.maximum(rows + rng.standard_normal((count, DIM)), 0) + 0.05 * rng.random((count, DIM))
    planted = []
    for copy in range(10, count - 3, count // 40):
        original = int(rng.integers(0, count - 3))
        if original in (copy, copy - 1):
            continue
        scale = rng.uniform(0.1, 1.6) * np.linalg.norm(rows[original]) / np.sqrt(DIM)
        rows[copy] = rows[original] * rng.uniform(0.5, 2) + np.abs(rng.standard_normal(DIM)) * scale
        planted.append((original, copy))
    step = np.abs(rng.standard_normal((2, DIM))) * 0.7 * np.linalg.norm(rows[count - 3]) / 8
    rows[count - 2] = rows[count - 3] + step[0]
    rows[count - 1] = rows[count - 2] + step[1]
    return rows.astype(np.float32), planted


def write_output(folder, fmt: str, rows: np.ndarray, name: str | None = None) -> str:
    output = os.path.join(str(folder), name or OUTPUTS[fmt])
    paths = [f"photos/{i:06d}.jpg" for i in range(len(rows))]
    attrs = {"model": "known", "feature_dim": DIM, "image_size": 8}
    writer = writers.open_writer(fmt, output, attrs, inputs=paths, shard_size=1000)
    for start in range(0, len(rows), 700):
        writer.write(paths[start : start + 700], rows[start : start + 700])
    writer.close()
    return output


def assert_same_groups(actual: list[dict], expected: list[dict]) -> None:
    """The same groups of the same paths; similarities the same but for float rounding (the
    exact path normalises rows held in memory, the index path rows read again)."""
    assert [[m["path"] for m in g["members"]] for g in actual] == [
        [m["path"] for m in g["members"]] for g in expected
    ]
    for mine, theirs in zip(actual, expected, strict=True):
        assert abs(mine["lowest_similarity"] - theirs["lowest_similarity"]) < 1e-5
        for a, b in zip(mine["members"], theirs["members"], strict=True):
            assert abs(a["similarity"] - b["similarity"]) < 1e-5


def pair_set(report_pairs_file: str) -> dict[tuple[str, str], float]:
    import duckdb

    found = duckdb.sql(f"SELECT a, b, similarity FROM '{report_pairs_file}'").fetchall()
    return {(a, b): sim for a, b, sim in found}


@pytest.mark.parametrize("fmt", sorted(OUTPUTS))
def test_the_index_finds_the_groups_and_pairs_exact_search_finds(fmt, tmp_path, monkeypatch):
    rows, planted = planted_rows(6000)
    output = write_output(tmp_path, fmt, rows)
    notes: list[str] = []
    exact = efx.duplicates(output, method="exact", pairs=str(tmp_path / "exact.jsonl"))
    through = efx.duplicates(
        output, method="index", pairs=str(tmp_path / "index.parquet"), on_note=notes.append
    )
    assert (exact["method"], through["method"]) == ("exact", "index")
    assert len(notes) == 1 and "building the index" in notes[0] and "there is none" in notes[0]
    assert os.path.isdir(output.rstrip("/") + ".efx-index")
    # Every planted copy at 0.85 or more is a pair, none below it (and there are both).
    units = rows / np.linalg.norm(rows, axis=1, keepdims=True)
    sims = [float(units[a] @ units[b]) for a, b in planted]
    assert min(sims) < 0.85 <= max(sims)
    found = pair_set(str(tmp_path / "exact.jsonl"))
    for (a, b), sim in zip(planted, sims, strict=True):
        key = tuple(f"photos/{row:06d}.jpg" for row in sorted((a, b)))
        assert (key in found) == (sim >= 0.85), (key, sim)
    assert_same_groups(through["groups"], exact["groups"])
    assert through["pairs"] == exact["pairs"]
    exact_pairs, index_pairs = (
        pair_set(str(tmp_path / "exact.jsonl")),
        pair_set(str(tmp_path / "index.parquet")),
    )
    assert exact_pairs.keys() == index_pairs.keys()
    for key, sim in exact_pairs.items():
        assert abs(index_pairs[key] - sim) < 1e-5 and sim >= 0.85
    # The chain: linked pair by pair, its two ends below the threshold.
    chain = next(g for g in exact["groups"] if g["members"][-1]["path"] == "photos/005999.jpg")
    assert chain["size"] == 3 and chain["lowest_similarity"] < 0.85, chain
    # Re-scored through whole products of blocks and buckets (where candidates are many): the
    # same.
    monkeypatch.setattr(index, "DENSE", 0)
    assert_same_groups(efx.duplicates(output, method="index")["groups"], exact["groups"])
    monkeypatch.setattr(index, "DENSE", 8)
    # A second run finds the index current: no note, no rebuild.
    again = efx.duplicates(output, on_note=notes.append)  # auto: an index exists
    assert again["method"] == "index" and len(notes) == 1
    assert_same_groups(again["groups"], exact["groups"])


def test_an_index_of_another_output_or_of_this_one_before_it_changed_is_rebuilt(tmp_path):
    rows, _ = planted_rows(3000)
    first = write_output(tmp_path, "hdf5", rows, "first.h5")
    index.build(first)
    other_rows = rows.copy()
    other_rows[1500] = other_rows[7] * 1.1  # a new pair
    second = write_output(tmp_path, "hdf5", other_rows, "second.h5")
    shutil.copytree(first + ".efx-index", second + ".efx-index")  # a foreign index
    notes: list[str] = []
    found = efx.duplicates(second, method="index", on_note=notes.append)
    assert notes and "OUTPUT changed since it was built (or it indexes another output)" in notes[0]
    assert_same_groups(found["groups"], efx.duplicates(second, method="exact")["groups"])
    # The same name rewritten with other rows (as --overwrite does): the old index is stale.
    os.remove(first)
    write_output(tmp_path, "hdf5", other_rows, "first.h5")
    assert index.open_index(first)[0] is None
    notes.clear()
    efx.duplicates(first, method="index", on_note=notes.append)
    assert len(notes) == 1 and index.open_index(first)[0] is not None
    # A damaged index (an array cut short) is rebuilt, not read.
    with open(first + ".efx-index/projected.npy", "r+b") as file:
        file.truncate(1000)
    notes.clear()
    assert_same_groups(
        efx.duplicates(first, on_note=notes.append)["groups"],
        efx.duplicates(first, method="exact")["groups"],
    )
    assert len(notes) == 1 and "is damaged" in notes[0], notes


BUILD_SECONDS = 1.2  # about how long a build of the output below takes here, start-up included
BUILD = """
import sys
from efx import index
index.BUCKET_ROWS, index.DIMS, index.BLOCK_ROWS = 100, 16, 256
index.build(sys.argv[1], seed=int(sys.argv[2]))
"""


def test_a_build_killed_at_any_moment_leaves_the_old_index_or_none(tmp_path):
    rows, _ = planted_rows(30000, seed=1)
    output = write_output(tmp_path, "npy", rows)
    index.build(output, seed=0)
    rng = random.Random(0)
    latest, killed = 0, 0  # the seed of the last index known whole
    for seed in range(1, 5):
        process = subprocess.Popen([sys.executable, "-c", BUILD, output, str(seed)], cwd=REPO)
        time.sleep(rng.uniform(0.2, BUILD_SECONDS))
        process.send_signal(signal.SIGKILL)
        killed += process.wait() != 0
        found, why = index.open_index(output)
        assert found is not None, why  # the old index, or the new one whole
        assert found.meta["seed"] in (latest, seed)
        latest = found.meta["seed"]
    assert killed >= 2  # most builds really were killed
    assert efx.duplicates(output, method="index")["method"] == "index"
    # A later build clears what killed ones left beside OUTPUT.
    index.build(output, seed=9)
    beside = os.listdir(tmp_path)
    assert sorted(beside) == ["shards", "shards.efx-index"], beside


def test_an_output_smaller_than_a_bucket_has_one_and_no_row_pairs_with_itself(tmp_path):
    rows, _ = planted_rows(60)
    rows[30] = rows[3] * 2  # a pair at 1.0
    output = write_output(tmp_path, "hdf5", rows)
    built = index.describe(index.build(output))
    assert built["buckets"] == 1 and built["bucket_rows"]["max"] == 60
    found = efx.duplicates(output, method="index", pairs=str(tmp_path / "pairs.jsonl"))
    assert_same_groups(found["groups"], efx.duplicates(output, method="exact")["groups"])
    pairs = pair_set(str(tmp_path / "pairs.jsonl"))
    assert ("photos/000003.jpg", "photos/000030.jpg") in pairs
    assert len(pairs) == found["pairs"] and all(a < b for a, b in pairs)  # each once, no self


def test_the_commands(tmp_path):
    rows, _ = planted_rows(3000)
    output = write_output(tmp_path, "parquet", rows)
    built = run_cli("index", output, "--json")
    assert built.exit_code == 0, built.stderr
    report = json.loads(built.stdout)
    assert report["rows"] == 3000 and report["buckets"] == 30 and report["dims"] == 16
    assert report["folder"] == os.path.abspath(output) + ".efx-index"
    found = run_cli("duplicates", output, "--json", "--pairs", str(tmp_path / "p.jsonl"))
    assert found.exit_code == 0, found.stderr
    assert json.loads(found.stdout)["method"] == "index"  # auto: the index exists
    with open(tmp_path / "p.jsonl", encoding="utf-8") as file:
        assert sum(1 for _ in file) == json.loads(found.stdout)["pairs"]
    exact = run_cli("duplicates", output, "--method", "exact")
    assert exact.exit_code == 0 and exact.stdout == run_cli("duplicates", output).stdout
    bad = run_cli("duplicates", output, "--pairs", str(tmp_path / "p.csv"))
    assert bad.exit_code == 1 and "--pairs must name a .jsonl or .parquet file" in bad.stderr
    assert not os.path.exists(tmp_path / "p.csv")
