"""Sources and outputs by URL: a real S3-compatible store (moto's server) and a real HTTP server
on 127.0.0.1, read and written through fsspec as efx's users' buckets are."""

from __future__ import annotations

import io
import os
import shutil
import signal
import subprocess
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import EFX, no_sleep, run_cli, run_efx, write_broken_images, write_good_images
from servers import HTTPServer, S3Server, filesystem

import efx
from efx import remote

pytest.importorskip("s3fs")
pytest.importorskip("moto")
# One worker holds the store and its environment for all of these tests.
pytestmark = pytest.mark.xdist_group("remote")

SIZE = ["--image-size", "64"]


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    server = S3Server()
    env = {**server.env(), "EFX_CACHE_DIR": str(tmp_path_factory.mktemp("efx-cache"))}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    remote.configure({})
    yield server
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    server.stop()


@pytest.fixture
def bucket(s3, request):
    """A new bucket for the test, and an s3fs filesystem to look at it as users do."""
    fs = filesystem(s3)
    name = "t-" + request.node.name.lower().replace("_", "-")[:50]
    fs.mkdir(name)
    return name, fs


def _photos(root: str) -> list[str]:
    write_good_images(root)
    write_broken_images(root)
    return sorted(
        os.path.relpath(os.path.join(d, f), root) for d, _, fs in os.walk(root) for f in fs
    )


def _tar(path: str, files: list[str]) -> None:
    with tarfile.open(path, "w") as tar:
        for i, file in enumerate(files):
            tar.add(file, f"{i:09d}{os.path.splitext(file)[1].lower()}")


def _rows(output: str) -> dict[str, np.ndarray]:
    paths, embeddings = efx.load(output)
    return dict(zip(paths, embeddings, strict=True))


def test_a_prefix_of_images_and_shards_embeds_as_the_same_files_on_disk(
    bucket, tiny_model, tmp_path
):
    name, fs = bucket
    local = tmp_path / "data"
    local.mkdir()
    _photos(str(local / "photos"))
    good = [
        str(local / "photos" / r)
        for r in sorted(os.listdir(local / "photos"))
        if r.endswith((".jpg", ".PNG"))
    ]
    _tar(str(local / "shards-00000.tar"), good)
    import pyarrow as pa
    import pyarrow.parquet as pq

    data = [Path(path).read_bytes() for path in good]  # img2dataset's layout: key and jpg
    keys = [f"{i:09d}" for i in range(len(data))]
    pq.write_table(
        pa.table({"key": keys, "jpg": data}), local / "shards-00001.parquet", row_group_size=2
    )
    fs.put(str(local) + "/", f"{name}/data/", recursive=True)

    here = efx.extract([str(local)], str(tmp_path / "local.h5"), model=tiny_model, image_size=64)
    there = efx.extract(
        [f"s3://{name}/data/"], str(tmp_path / "remote.h5"), model=tiny_model, image_size=64
    )
    assert (there.embedded, there.failed) == (here.embedded, here.failed) and here.failed > 0
    local_rows = _rows(str(tmp_path / "local.h5"))
    remote_rows = _rows(str(tmp_path / "remote.h5"))
    for shard in ("shards-00000.tar/000000000", "shards-00001.parquet/000000000"):
        assert any(shard in path for path in remote_rows)  # the shards' images are rows
    assert sorted(remote_rows) == sorted(
        f"s3://{name}/data/" + os.path.relpath(p, local) for p in local_rows
    )
    for path, vector in local_rows.items():  # the same bytes, the same decoder: bit for bit
        assert np.array_equal(
            remote_rows[f"s3://{name}/data/" + os.path.relpath(path, local)], vector
        )
    reasons = {
        where: {
            os.path.relpath(f["path"].replace(prefix, str(local) + "/"), local): f["error"]
            for f in efx.writers.read_failures(str(tmp_path / where))
        }
        for where, prefix in (("local.h5", str(local) + "/"), ("remote.h5", f"s3://{name}/data/"))
    }
    assert reasons["remote.h5"] == reasons["local.h5"]  # the same reasons for the same bytes


def test_a_missing_bucket_or_object_ends_the_run_before_any_work(s3, tmp_path):
    result = run_efx("extract", "s3://no-such-bucket/photos/", str(tmp_path / "o.h5"))
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert (
        "efx: source cannot be read: s3://no-such-bucket/photos/ (no such bucket)" in result.stderr
    )
    assert not (tmp_path / "o.h5").exists()


def test_urls_on_stdin_over_http_with_a_404_and_dropped_connections(tiny_model, tmp_path):
    site = tmp_path / "site"
    site.mkdir()
    rels = write_good_images(str(site))
    jpg = next(r for r in rels if r.endswith(".jpg"))
    (site / "drop").mkdir()
    shutil.copy(site / jpg, site / "drop" / "a.jpg")
    _tar(str(site / "00000.tar"), [str(site / r) for r in rels[:3]])
    _tar(str(site / "00001.tar"), [str(site / r) for r in rels[3:6]])
    server = HTTPServer(str(site))
    try:
        urls = [
            f"{server.url}/{jpg}", f"{server.url}/missing.jpg", f"{server.url}/drop/a.jpg",
            f"{server.url}/flaky/{jpg}", f"{server.url}/00000.tar",
            f"{server.url}/unsteady/00001.tar",
        ]  # fmt: skip
        result = run_efx(
            "extract", "-", str(tmp_path / "out.h5"), "--model", tiny_model, *SIZE, "--json",
            input="\n".join(urls) + "\n",
        )  # fmt: skip
    finally:
        server.stop()
    assert result.returncode == 0, result.stderr
    info = efx.info(str(tmp_path / "out.h5"))
    reasons = {f["path"]: f["error"] for f in efx.writers.read_failures(str(tmp_path / "out.h5"))}
    assert reasons == {
        urls[1]: "HTTP 404: not found",
        urls[2]: "connection reset after 3 attempts",
    }
    paths, embeddings = efx.load(str(tmp_path / "out.h5"))
    assert paths[:2] == [urls[0], urls[3]]  # the flaky one was read on its second attempt
    assert np.array_equal(embeddings[0], embeddings[1])

    def members(url: str, files: list[str]) -> list[str]:
        return [f"{url}/{i:09d}{os.path.splitext(r)[1].lower()}" for i, r in enumerate(files)]

    assert paths[2:] == members(urls[4], rels[:3]) + members(urls[5], rels[3:6])
    # Every other request for the second tar was dropped, in listing and in reading: retried,
    # the rows are those of the same tar read from disk.
    here = efx.extract(
        [str(site / "00001.tar")], str(tmp_path / "ref.h5"), model=tiny_model, image_size=64
    )
    assert here.embedded == 3 and np.array_equal(
        embeddings[5:8], efx.load(str(tmp_path / "ref.h5"))[1]
    )
    assert info["count"] == 8


def test_an_output_in_a_bucket_is_uploaded_whole_and_read_by_pyarrow_and_efx(
    bucket, tiny_model, tmp_path
):
    name, fs = bucket
    _photos(str(tmp_path / "photos"))
    fs.put(str(tmp_path / "photos") + "/", f"{name}/photos/", recursive=True)
    source, out = f"s3://{name}/photos/", f"s3://{name}/emb.parquet"
    result = run_cli("extract", source, out, "--model", tiny_model, *SIZE, "--shard-size", "3")
    assert result.exit_code == 0, result.stderr
    assert f"-> {out}" in result.stderr
    listed = sorted(p.split("emb.parquet/")[1] for p in fs.find(f"{name}/emb.parquet"))
    assert listed == [".efx/failures.jsonl", ".efx/failures.pq", ".efx/manifest.json",
                      "part-00000.parquet", "part-00001.parquet", "part-00002.parquet"]  # fmt: skip
    import pyarrow.dataset as ds

    table = ds.dataset(f"{name}/emb.parquet", filesystem=fs, format="parquet").to_table()
    paths, embeddings = efx.load(out)
    assert table.column("path").to_pylist() == paths and len(paths) == 9
    assert np.array_equal(
        np.stack(table.column("embedding").to_numpy(zero_copy_only=False)), embeddings
    )
    assert efx.info(out)["output"] == out and efx.info(out)["complete"]

    again = run_efx("extract", source, out, "--model", tiny_model, *SIZE)
    assert (
        again.returncode == 1 and f"OUTPUT {out} already exists; pass --overwrite" in again.stderr
    )
    refusals = {  # before any work: no model loaded
        f"s3://{name}/emb.h5": "HDF5 needs a local file",
        "s3://no-such-bucket/emb.parquet": "cannot use OUTPUT s3://no-such-bucket/emb.parquet: "
        "no such bucket",
        "http://127.0.0.1:1/emb.parquet": "an output cannot be written over plain HTTP",
    }
    for output, message in refusals.items():
        refused = run_efx("extract", source, output, "--model", tiny_model)
        assert refused.returncode == 1 and message in refused.stderr, refused.stderr
        assert "loading" not in refused.stderr and len(refused.stderr.splitlines()) == 1

    # A .npy output, and an update that finds a new object.
    npy = f"s3://{name}/emb-npy"
    assert run_cli("extract", source, npy, "--model", tiny_model, *SIZE).exit_code == 0
    fs.pipe(f"{name}/photos/new.jpg", fs.cat(f"{name}/photos/a_cat.jpg"))
    updated = run_efx("extract", source, npy, "--model", tiny_model, *SIZE, "--update", "--json")
    assert updated.returncode == 0, updated.stderr
    assert '"reused": 1' in updated.stdout and '"computed": 0' in updated.stdout  # same bytes
    assert f"s3://{name}/photos/new.jpg" in efx.load(npy)[0]
    np.testing.assert_array_equal(
        np.load(io.BytesIO(fs.cat(f"{name}/emb-npy/embeddings-00000.npy"))), efx.load(npy)[1]
    )


def test_a_no_change_update_lists_the_prefix_and_reads_no_object(bucket, s3, tiny_model, tmp_path):
    name, fs = bucket
    write_good_images(str(tmp_path / "photos"))
    fs.put(str(tmp_path / "photos") + "/", f"{name}/photos/", recursive=True)
    source, out = f"s3://{name}/photos/", str(tmp_path / "out.parquet")
    assert run_cli("extract", source, out, "--model", tiny_model, *SIZE).exit_code == 0
    s3.clear()
    result = run_efx("extract", source, out, "--model", tiny_model, *SIZE, "--update")
    assert result.returncode == 0 and "is up to date" in result.stderr, result.stderr
    assert s3.touched((".jpg", ".png", ".gif", ".webp", ".bmp")) == []  # not even a HEAD
    assert s3.requests[("GET", "object")] == 0, s3.log
    assert s3.requests[("GET", "list")] >= 1


def test_kill_9_then_resume_with_the_output_in_a_bucket(bucket, slow_model, tmp_path):
    """A kill -9 leaves the bucket holding whole files and a manifest saying incomplete; --resume
    finishes it, from the working copy or, with the cache gone, from what the bucket holds."""
    name, fs = bucket
    photos = tmp_path / "photos"
    rels = write_good_images(str(photos))
    for i in range(3):  # 36 images
        for rel in rels:
            dest = photos / f"copy{i}" / rel
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(photos / rel, dest)
    fs.put(str(photos) + "/", f"{name}/photos/", recursive=True)
    source = f"s3://{name}/photos/"
    args = ["--model", slow_model, *SIZE, "--backend", "tensorflow", "--batch-size", "2"]
    reference = str(tmp_path / "ref.h5")
    with no_sleep(slow_model):
        efx.extract(
            str(photos), reference, model=slow_model, image_size=int(SIZE[1]), backend="tensorflow"
        )
    for cache_lost in (False, True):
        out = f"s3://{name}/out-{int(cache_lost)}.parquet"
        run = subprocess.Popen([EFX, "extract", source, out, *args, "--shard-size", "4", "-q"])
        deadline = time.monotonic() + 120
        while (
            time.monotonic() < deadline
            and len(fs.find(f"{name}/out-{int(cache_lost)}.parquet")) < 4
        ):
            time.sleep(0.5)
            fs.invalidate_cache()
        os.kill(run.pid, signal.SIGKILL)
        run.wait()
        state = efx.info(out)
        assert not state["complete"] and 0 < state["count"] < 36
        if cache_lost:
            shutil.rmtree(os.path.join(os.environ["EFX_CACHE_DIR"], "outputs"))
        with no_sleep(slow_model):  # (in this process: the killed run is the command's)
            resumed = efx.extract(
                [source], out, model=slow_model, image_size=int(SIZE[1]), backend="tensorflow",
                batch_size=2, resume=True,
            )  # fmt: skip
        assert resumed.complete and 0 < resumed.resumed < 36
        paths, embeddings = efx.load(out)
        ref_paths, ref = efx.load(reference)
        assert [p.replace(source, str(photos) + "/") for p in paths] == ref_paths
        np.testing.assert_allclose(embeddings, ref, rtol=1e-6, atol=1e-6)
        assert efx.info(out)["complete"]


def test_parts_in_a_bucket_merge_into_a_bucket_and_similar_shows_remote_thumbnails(
    bucket, tiny_model, tmp_path
):
    name, fs = bucket
    write_good_images(str(tmp_path / "photos"))
    fs.put(str(tmp_path / "photos") + "/", f"{name}/photos/", recursive=True)
    source = f"s3://{name}/photos/"
    for i in range(2):
        part = run_cli(
            "extract",
            source,
            f"s3://{name}/part{i}",
            "--shard",
            f"{i}/2",
            "--model",
            tiny_model,
            *SIZE,
        )
        assert part.exit_code == 0, part.stderr
    merged = run_efx(
        "merge", f"s3://{name}/part1", f"s3://{name}/part0", f"s3://{name}/all.parquet"
    )
    assert merged.returncode == 0, merged.stderr
    whole = efx.extract([source], str(tmp_path / "whole.h5"), model=tiny_model, image_size=64)
    assert efx.load(f"s3://{name}/all.parquet")[0] == efx.load(str(tmp_path / "whole.h5"))[0]
    assert whole.embedded == 9

    page = tmp_path / "similar.html"
    query = f"s3://{name}/photos/a_cat.jpg"
    found = run_efx("similar", f"s3://{name}/all.parquet", query, "-k", "2", "--html", str(page))
    assert found.returncode == 0, found.stderr
    assert found.stdout.count(f"{query}\t") == 2
    html = page.read_text()
    assert html.count('<img src="data:image/jpeg;base64,') == 3  # the query and its 2 hits


def test_http_sources_that_cannot_be_read_end_the_run_with_one_line(tmp_path):
    (tmp_path / "site").mkdir()
    server = HTTPServer(str(tmp_path / "site"))
    try:
        cases = {
            f"{server.url}/denied/a.jpg": f"source cannot be read: {server.url}/denied/a.jpg "
            "(access denied",
            f"{server.url}/missing.tar": f"source not found: {server.url}/missing.tar",
            f"{server.url}/photos/": "plain HTTP has no listing",
            "foo://bucket/x.jpg": "unknown URL scheme foo://",
            "http://127.0.0.1:1/x.jpg": "source cannot be read: http://127.0.0.1:1/x.jpg (cannot "
            "connect to the server",
            "ftp://127.0.0.1:1/x.jpg": "cannot open ftp://127.0.0.1:1/x.jpg: connection refused",
        }
        for url, message in cases.items():
            result = run_efx("extract", url, str(tmp_path / "out.h5"))
            assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
            assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1
    finally:
        server.stop()
    assert not (tmp_path / "out.h5").exists()


def test_gs_prefix_and_output_against_the_gcs_emulator(tiny_model, tmp_path):
    """gs:// through gcsfs against gcp-storage-emulator on 127.0.0.1 (its API, uploads by its
    JSON API): a prefix walked, an output written to it, a no-change update, read back."""
    emulator = pytest.importorskip("gcp_storage_emulator.server")
    pytest.importorskip("gcsfs")
    import requests

    server = emulator.create_server("127.0.0.1", 0, in_memory=True, default_bucket="gcs")
    server.start()
    host = f"http://127.0.0.1:{server._api._httpd.server_port}"
    # gcsfs >= 2025.x first asks the storage-control API (gRPC) for the bucket's layout, which
    # the emulator does not serve: its experimental features off, as for any emulator.
    env = {
        **os.environ,
        "STORAGE_EMULATOR_HOST": host,
        "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false",
    }
    options = ["-S", "token=anon", "-S", "project=test"]
    try:
        rels = write_good_images(str(tmp_path / "photos"))
        for rel in rels:
            data = (tmp_path / "photos" / rel).read_bytes()
            url = f"{host}/upload/storage/v1/b/gcs/o?uploadType=media&name=photos/{rel}"
            requests.post(url, data=data, timeout=30).raise_for_status()
        args = ["--model", tiny_model, *SIZE, *options]
        made = run_efx("extract", "gs://gcs/photos/", "gs://gcs/emb.parquet", *args, env=env)
        assert made.returncode == 0, made.stderr
        again = run_efx(
            "extract", "gs://gcs/photos/", "gs://gcs/emb.parquet", *args, "--update", env=env
        )
        assert again.returncode == 0 and "is up to date" in again.stderr, again.stderr
        back = run_efx(
            "convert", "gs://gcs/emb.parquet", str(tmp_path / "back.h5"), *options, env=env
        )
        assert back.returncode == 0, back.stderr
    finally:
        server.stop()
    efx.extract(
        [str(tmp_path / "photos")], str(tmp_path / "here.h5"), model=tiny_model, image_size=64
    )
    paths, rows = efx.load(str(tmp_path / "back.h5"))
    here_paths, here = efx.load(str(tmp_path / "here.h5"))
    assert [
        p.replace("gs://gcs/photos/", str(tmp_path / "photos") + "/") for p in paths
    ] == here_paths
    assert np.array_equal(rows, here)
