"""Parquet output: read as one table by pyarrow, pandas, Polars, DuckDB, Hugging Face datasets and
faiss; columns through --resume and --update; efx convert between formats."""

from __future__ import annotations

import glob
import json
import os
import shutil

import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
from conftest import assert_user_error, run_cli, run_efx, write_broken_images
from test_shards import dataset, images, photo, write_tar  # noqa: F401 - fixtures

import efx
from efx import writers

# One test worker runs them all: their module-scoped fixtures are built once, not on each
# worker (make test runs pytest-xdist with --dist loadgroup).
pytestmark = pytest.mark.xdist_group("parquet")

SIZE = 48


@pytest.fixture(scope="module")
def made(dataset, tiny_model, tmp_path_factory) -> dict[str, str]:  # noqa: F811
    """Loose photos with broken files among them, a WebDataset folder and a Parquet shard folder,
    embedded once as Parquet (2 rows per file: several parts) and once as HDF5."""
    root = tmp_path_factory.mktemp("made")
    broken = write_broken_images(os.path.join(dataset["loose"], "broken"))
    sources = [dataset["loose"], dataset["webdataset"], dataset["parquet"]]
    outputs = {"out_parquet": str(root / "out.parquet"), "out_hdf5": str(root / "out.h5")}
    for output in outputs.values():
        efx.extract(sources, output, model=tiny_model, image_size=SIZE, shard_size=5)
    return {**outputs, **dataset, "broken": str(len(broken))}


def test_every_reader_sees_exactly_the_rows_and_nothing_else(made):
    output = made["out_parquet"]
    paths, embeddings = efx.load(made["out_hdf5"])
    assert efx.load(output)[0] == paths
    np.testing.assert_array_equal(efx.load(output)[1], embeddings)
    names = sorted(os.listdir(output))
    assert names[0] == ".efx" and names[1:] == [
        f"part-{i:05d}.parquet" for i in range(len(names) - 1)
    ]
    assert len(names) - 1 == -(-len(paths) // 5)  # 5 rows per file, the last one short

    table = ds.dataset(output).to_table()  # pyarrow's discovery skips .efx/
    assert table.column("path").to_pylist() == paths
    assert table.schema.field("embedding").type == pa.list_(pa.float32(), 16)
    import pandas as pd

    frame = pd.read_parquet(output)
    assert list(frame["path"]) == paths
    np.testing.assert_array_equal(np.stack(frame["embedding"].to_numpy()), embeddings)
    import polars as pl

    polars = pl.scan_parquet(os.path.join(output, "*.parquet")).collect()
    assert polars["path"].to_list() == paths
    assert polars.schema["embedding"] == pl.Array(pl.Float32, 16)
    np.testing.assert_array_equal(polars["embedding"].to_numpy(), embeddings)
    import duckdb

    glob = os.path.join(output, "*.parquet")
    rows = duckdb.sql(
        f"SELECT path, embedding::FLOAT[16] FROM read_parquet('{glob}') ORDER BY filename, "
        "file_row_number"
    ).fetchall()
    assert [row[0] for row in rows] == paths
    np.testing.assert_array_equal(np.array([row[1] for row in rows], np.float32), embeddings)
    # Recursive listings see the parts only (the output holds failures: a failures file named
    # *.parquet was read as rows by DuckDB and stopped autofaiss, whose embedding_reader lists
    # FOLDER/**/*.parquet with fsspec).
    for listing in (f"{output}/**/*.parquet", output):
        counted = duckdb.sql(f"SELECT count(*) FROM read_parquet('{listing}')").fetchall()
        assert counted == [(len(paths),)]
    import fsspec

    found = fsspec.filesystem("file").glob(os.path.abspath(output) + "/**/*.parquet")
    assert sorted(os.path.basename(f) for f in found) == names[1:]
    import datasets

    cache = os.path.join(output, "..", "hf")
    for options in ({"data_files": glob}, {"data_dir": output}):
        loaded = datasets.load_dataset("parquet", split="train", cache_dir=cache, **options)
        assert loaded["path"] == paths

    failures = pd.read_parquet(os.path.join(output, ".efx", "failures.pq"))
    assert list(failures["path"]) == [f["path"] for f in writers.read_failures(made["out_hdf5"])]
    assert len(failures) == int(made["broken"]) and failures["error"].str.len().min() > 0


def test_columns_carry_file_facts_shard_and_the_datasets_key_and_each_file_its_settings(made):
    output = made["out_parquet"]
    table = ds.dataset(output).to_table()
    rows = table.to_pylist()
    loose = next(r for r in rows if r["shard"] is None)
    with open(loose["path"], "rb") as file:
        data = file.read()
    assert loose["size"] == len(data) and loose["mtime_ns"] == os.stat(loose["path"]).st_mtime_ns
    import hashlib

    assert loose["sha256"] == hashlib.sha256(data).hexdigest() and loose["key"] is None
    tar_row = next(r for r in rows if r["shard"] and r["shard"].endswith("00001.tar"))
    assert tar_row["path"] == f"{tar_row['shard']}/{tar_row['key']}.jpg"
    assert tar_row["key"] == "000000004"  # img2dataset's key, joinable to its metadata
    parquet_row = next(r for r in rows if r["shard"] and r["shard"].endswith("00002.parquet"))
    assert parquet_row["key"] == "000000008" and parquet_row["path"].endswith("/000000008")
    import duckdb

    joined = duckdb.sql(
        f"SELECT e.key, m.caption FROM read_parquet('{output}/*.parquet') e JOIN "
        f"read_parquet('{made['webdataset']}/*.parquet') m USING (key) WHERE e.shard LIKE '%.tar'"
    ).fetchall()
    assert sorted(joined)[0] == ("000000000", "caption 000000000") and len(joined) == 12

    with open(os.path.join(output, ".efx", "manifest.json")) as file:
        manifest = json.load(file)
    assert manifest["complete"] is True and manifest["count"] == len(rows)
    settings = json.loads(
        pq.read_schema(os.path.join(output, "part-00000.parquet")).metadata[b"efx"]
    )
    for key in ("model", "image_size", "feature_dim", "precision", "efx_version", "created"):
        assert settings[key] == manifest[key]


def test_duckdb_cosine_top_10_and_faiss_find_what_efx_similar_finds(made):
    output = made["out_parquet"]
    query = efx.load(output)[0][3]
    # Each photo is in the output 3 times (a file, a tar member, a Parquet row): the query's 2
    # copies and the next 2 photos' 3 fill the top 8 without a tie across its edge.
    (found,) = efx.similar(output, [query], k=8)
    expected = sorted(hit["path"] for hit in found["hits"])
    scores = [hit["similarity"] for hit in found["hits"]]
    import duckdb

    hits = duckdb.sql(
        f"""WITH q AS (SELECT embedding::FLOAT[16] AS v FROM read_parquet('{output}/*.parquet')
                       WHERE path = ?)
            SELECT path, array_cosine_similarity(embedding::FLOAT[16], q.v) AS s
            FROM read_parquet('{output}/*.parquet'), q WHERE path <> ?
            ORDER BY s DESC LIMIT 8""",
        params=[query, query],
    ).fetchall()
    assert sorted(h[0] for h in hits) == expected
    np.testing.assert_allclose([h[1] for h in hits], scores, atol=1e-5)
    import faiss

    table = ds.dataset(output).to_table(columns=["path", "embedding"])
    vectors = np.stack(table.column("embedding").to_numpy(zero_copy_only=False)).astype("f4")
    faiss.normalize_L2(vectors)
    index = faiss.IndexFlatIP(vectors.shape[1])
    index.add(vectors)
    _, nearest = index.search(vectors[[3]], 9)
    names = table.column("path").to_pylist()
    assert sorted(names[i] for i in nearest[0] if names[i] != query) == expected


def test_convert_goes_to_parquet_and_back_bit_for_bit_with_facts_and_failures(made, tmp_path):
    source = made["out_hdf5"]
    there, back, npy = (str(tmp_path / n) for n in ("c.parquet", "back.h5", "shards"))
    result = run_efx("convert", source, there)
    assert result.returncode == 0 and "converted" in result.stderr, result.stderr
    assert run_efx("convert", there, back).returncode == 0
    assert run_efx("convert", back, npy, "--format", "npy").returncode == 0
    expected = writers.read_state(source, facts=True)
    for output in (there, back, npy):
        state = writers.read_state(output, facts=True)
        for key in ("paths", "failed", "facts", "failed_facts", "reasons", "complete"):
            assert getattr(state, key) == getattr(expected, key), (output, key)
        np.testing.assert_array_equal(efx.load(output)[1], efx.load(source)[1])
        info = efx.info(output)
        for key in ("model", "created", "image_size", "precision", "backend", "part"):
            assert info[key] == efx.info(source)[key]
    # Parquet's own columns survive a conversion to Parquet and are named when they cannot.
    again = str(tmp_path / "again.parquet")
    assert run_efx("convert", made["out_parquet"], again).returncode == 0
    assert ds.dataset(again).to_table() == ds.dataset(made["out_parquet"]).to_table()
    dropped = run_efx("convert", made["out_parquet"], str(tmp_path / "x.h5"))
    assert "shard, key not written" in dropped.stderr, dropped.stderr


def test_convert_and_parquet_outputs_refuse_what_they_cannot_do(made, tiny_model, tmp_path):
    assert_user_error(run_efx("convert", made["out_hdf5"], made["out_hdf5"]), "is SOURCE itself")
    assert_user_error(run_efx("convert", made["out_hdf5"], "-"), "efx convert writes a file format")
    assert_user_error(run_efx("convert", str(tmp_path / "none.h5"), "x.parquet"), "not found")
    existing = run_efx("convert", made["out_hdf5"], made["out_parquet"])
    assert_user_error(existing, "already exists; pass --overwrite")
    a_file = tmp_path / "file.parquet"
    a_file.write_bytes(b"PAR1")
    result = run_efx("extract", made["loose"], str(a_file), "-m", tiny_model)
    assert_user_error(result, "is a file; Parquet output is a folder of part-NNNNN.parquet")
    cut = str(tmp_path / "cut.parquet")
    writer = writers.open_writer("parquet", cut, {"feature_dim": 4})
    writer.write(["a.jpg"], np.ones((1, 4), np.float32))
    writer.abort()
    assert_user_error(run_efx("convert", cut, str(tmp_path / "c.h5")), "is unfinished")
    again = run_efx("extract", made["loose"], cut, "-m", tiny_model)  # forgot --resume
    assert_user_error(again, "already exists, unfinished (the run that wrote it was stopped): "
                      "pass --resume to finish it, or --overwrite")  # fmt: skip
    inside = run_efx("info", os.path.join(made["out_parquet"], ".efx"))
    assert_user_error(inside, f"is where the Parquet output {made['out_parquet']} keeps its")


def test_a_name_parquet_cannot_hold_is_a_failure_and_the_run_goes_on(tiny_model, tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / "ok.jpg").write_bytes(photo(1))
    odd = os.fsencode(str(folder)) + b"/caf\xe9.jpg"
    with open(odd, "wb") as file:
        file.write(photo(2))
    output = str(tmp_path / "out.parquet")
    summary = efx.extract(str(folder), output, model=tiny_model, image_size=SIZE)
    assert (summary.embedded, summary.failed) == (1, 1)
    (failure,) = writers.read_failures(output)
    assert "not valid UTF-8" in failure["error"]


def test_resume_cut_inside_a_finished_file_keeps_every_column_of_the_rows_kept(tmp_path):
    """--resume keeping 4 of 10 rows written in files of 3: the second file becomes the one
    being filled again, with its shard and key columns; nothing past the cut stays visible."""
    output = str(tmp_path / "out.parquet")
    attrs = {"feature_dim": 4, "model": "m"}
    rows = np.arange(40, dtype=np.float32).reshape(10, 4)
    names = [f"s.tar/{i}.jpg" for i in range(10)]
    columns = {"shard": ["s.tar"] * 10, "key": [str(i) for i in range(10)]}
    writer = writers.open_writer("parquet", output, attrs, shard_size=3)
    writer.write(names, rows, None, columns)
    writer.abort()
    assert len(glob.glob(os.path.join(output, "part-*.parquet"))) == 3
    writer = writers.open_writer("parquet", output, attrs, keep=(4, 0))
    assert sorted(os.listdir(output)) == [".efx", "part-00000.parquet"]  # the cut file is out
    writer.write(["a.jpg", "b.jpg"], rows[:2])
    writer.close()
    table = ds.dataset(output).to_table()
    assert table.column("path").to_pylist() == [*names[:4], "a.jpg", "b.jpg"]
    assert table.column("key").to_pylist() == ["0", "1", "2", "3", None, None]
    np.testing.assert_array_equal(efx.load(output)[1], np.concatenate([rows[:4], rows[:2]]))
    assert sorted(os.listdir(os.path.join(output, ".efx"))) == [
        "failures.jsonl",
        "failures.pq",
        "manifest.json",
    ]


def test_update_keeps_an_unchanged_shards_columns_without_reading_it(
    images,  # noqa: F811
    tiny_model,
    tmp_path,
):
    from test_shards import img2dataset_samples

    folder = tmp_path / "wds"
    folder.mkdir()
    for shard in range(2):
        samples = img2dataset_samples(images[shard * 3 : shard * 3 + 3], shard * 3)
        write_tar(str(folder / f"{shard:05d}.tar"), samples)
    output = str(tmp_path / "out.parquet")
    efx.extract(str(folder), output, model=tiny_model, image_size=SIZE, shard_size=2)
    before = ds.dataset(output).to_table()
    write_tar(str(folder / "00001.tar"), img2dataset_samples(images[6:9], 3))  # new images
    summary = efx.extract(str(folder), output, model=tiny_model, image_size=SIZE, update=True)
    assert summary.computed == 3 and summary.kept == 3
    after = ds.dataset(output).to_table()
    assert after.slice(0, 3) == before.slice(0, 3)  # shard 0 kept: its key column too
    assert after.column("key").to_pylist() == [f"{i:09d}" for i in range(6)]


def test_keep_columns_carries_captions_from_each_kind_of_shard_through_resume_and_update(
    dataset,  # noqa: F811
    tiny_model,
    tmp_path,
):
    """A Parquet source's caption (and an int column, typed as such), a WebDataset sample's
    .txt and .json, a TFRecord's bytes feature: beside each embedding, in one table."""
    hf = pa.table(
        {
            "jpg": pa.array([photo(40 + i) for i in range(3)], pa.binary()),
            "caption": ["a", None, "c"],
            "width": [160, 161, 162],
        }
    )
    pq.write_table(hf, tmp_path / "hf.parquet")
    sources = [str(tmp_path / "hf.parquet"), dataset["webdataset"]]
    output = str(tmp_path / "out.parquet")
    keep = "caption,width,txt,json"
    efx.extract(sources, output, model=tiny_model, image_size=SIZE, keep_columns=keep)
    table = ds.dataset(output).to_table()
    assert table.schema.field("width").type == pa.int64()
    rows = table.to_pylist()
    assert [r["caption"] for r in rows[:3]] == ["a", None, "c"]
    assert [r["width"] for r in rows[:3]] == [160, 161, 162] and rows[3]["width"] is None
    assert rows[3]["txt"] == "caption 0" and json.loads(rows[3]["json"])["key"] == "000000000"
    assert rows[0]["txt"] is None
    # Another kind, and the CLI: TFRecord bytes features; typos and other formats refused.
    tf_output = str(tmp_path / "tf.parquet")
    result = run_cli("extract", dataset["tfrecord"], tf_output, "-m", tiny_model,
                     "--image-size", str(SIZE), "--keep-columns", "text", "-q")  # fmt: skip
    assert result.exit_code == 0, result.stderr
    assert set(ds.dataset(tf_output).to_table().column("text").to_pylist()) == {"a cat"}
    typo = run_cli("extract", *sources, str(tmp_path / "t.parquet"), "-m", tiny_model,
                   "--keep-columns", "captoin")  # fmt: skip
    assert_user_error(typo, "--keep-columns: no sample in the shards has captoin")
    h5 = run_cli("extract", *sources, str(tmp_path / "t.h5"), "--keep-columns", "caption")
    assert_user_error(h5, "--keep-columns carries source columns into a Parquet output")
    own = run_cli("extract", *sources, str(tmp_path / "t.parquet"), "--keep-columns", "key")
    assert_user_error(own, "--keep-columns: key is one of the output's own columns")

    # --update keeps them for rows it copies (the tars, unchanged) and reads them for new rows;
    # another --keep-columns is refused as another setting.
    pq.write_table(hf.slice(0, 2), tmp_path / "hf.parquet")
    summary = efx.extract(sources, output, model=tiny_model, image_size=SIZE, update=True)
    assert summary.computed == 0
    again = ds.dataset(output).to_table()
    assert again.slice(2) == table.slice(3)  # the tar rows, columns and all
    assert again.column("caption").to_pylist()[:2] == ["a", None]
    with pytest.raises(efx.EfxError, match="keep_columns"):
        efx.extract(sources, output, model=tiny_model, image_size=SIZE, update=True,
                    keep_columns="txt")  # fmt: skip
    # Parts of a run: a part may hold only some of the columns' sources (here part 0: the
    # Parquet file and a tar), or none; the merge is the whole run's table.
    parts = [str(tmp_path / f"part{i}.parquet") for i in range(2)]
    for i, part in enumerate(parts):
        efx.extract(sources, part, model=tiny_model, image_size=SIZE, keep_columns=keep,
                    part=f"{i}/2")  # fmt: skip
    whole = str(tmp_path / "whole.parquet")
    efx.extract(sources, whole, model=tiny_model, image_size=SIZE, keep_columns=keep)
    efx.merge(parts, str(tmp_path / "merged.parquet"))
    merged = ds.dataset(str(tmp_path / "merged.parquet")).to_table()
    assert merged.drop_columns(["embedding"]) == ds.dataset(whole).to_table().drop_columns(
        ["embedding"]
    )


def test_the_readme_parquet_and_faiss_recipes_run_as_written(made, tmp_path, monkeypatch):
    from test_names import readme_recipe

    shutil.copytree(made["out_parquet"], tmp_path / "out.parquet")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf"))
    paths, embeddings = efx.load("out.parquet")
    scope: dict = {}
    exec(readme_recipe('pd.read_parquet("out.parquet")'), scope)
    np.testing.assert_array_equal(scope["embeddings"], embeddings)
    assert len(scope["failures"]) == int(made["broken"]) and scope["ds"]["path"] == paths
    scope = {}
    exec(readme_recipe("faiss.normalize_L2"), scope)
    # Row 0's photo is stored 3 times (a file, a tar member, a Parquet row): 3 hits at cosine 1.
    assert 0 in scope["rows"][0][:3] and scope["scores"][0][2] == pytest.approx(1.0, abs=1e-5)
    assert scope["index"].ntotal == len(paths)
