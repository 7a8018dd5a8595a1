"""Datasets where they lie: WebDataset tar shards, Parquet files and TFRecord files as sources.

Every shard here is built the way its tool writes it (tarfile as webdataset's TarWriter does,
pyarrow as img2dataset and Hugging Face datasets do, tf.io.TFRecordWriter as TFDS does), from
real photos, and every output is compared with the same photos embedded as loose files.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import random
import shutil
import signal
import subprocess
import tarfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import EFX, assert_user_error, ctrl_c_after, no_sleep, run_cli, sample

import efx
from efx import writers

# One test worker runs them all: their module-scoped fixtures are built once, not on each
# worker (make test runs pytest-xdist with --dist loadgroup).
pytestmark = pytest.mark.xdist_group("shards")

SIZE = 48
COUNT = 12


def photo(seed: int) -> bytes:
    """A real photo (a crop of a sample) as JPEG bytes, different for every seed."""
    rng = random.Random(seed)
    image = sample(("chelsea.png", "coffee.jpg", "space/astronaut.jpg")[seed % 3])
    left, top = rng.randrange(0, 150), rng.randrange(0, 150)
    buffer = io.BytesIO()
    image.crop((left, top, left + 160, top + 120)).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime = len(data), 1_700_000_000
    tar.addfile(info, io.BytesIO(data))


def write_tar(path: str, samples: list[tuple[str, dict[str, bytes]]], mode: str = "w") -> None:
    """A WebDataset shard: each sample's members (key.ext) one after the other."""
    with tarfile.open(path, mode) as tar:
        for key, members in samples:
            for ext, data in members.items():
                add(tar, f"{key}.{ext}", data)


def img2dataset_samples(images: list[bytes], first: int = 0) -> list[tuple[str, dict[str, bytes]]]:
    return [
        (
            f"{first + i:09d}",
            {
                "jpg": data,
                "txt": f"caption {first + i}".encode(),
                "json": json.dumps({"key": f"{first + i:09d}", "status": "success"}).encode(),
            },
        )
        for i, data in enumerate(images)
    ]


def write_tfrecord(path: str, images: list[bytes], feature: str = "image", gz: bool = False):
    import tensorflow as tf

    options = tf.io.TFRecordOptions(compression_type="GZIP" if gz else "")
    with tf.io.TFRecordWriter(path, options) as writer:
        for i, data in enumerate(images):
            features = {
                feature: tf.train.Feature(bytes_list=tf.train.BytesList(value=[data])),
                "label": tf.train.Feature(int64_list=tf.train.Int64List(value=[i % 3])),
                "text": tf.train.Feature(bytes_list=tf.train.BytesList(value=[b"a cat"])),
            }
            example = tf.train.Example(features=tf.train.Features(feature=features))
            writer.write(example.SerializeToString())


@pytest.fixture(scope="module")
def images() -> list[bytes]:
    return [photo(i) for i in range(COUNT)]


@pytest.fixture(scope="module")
def dataset(images, tmp_path_factory) -> dict[str, str]:
    """The same 12 photos in each layout: loose files, and img2dataset's three output folders
    (webdataset, parquet, tfrecord), each with the metadata Parquet file img2dataset writes
    beside every shard, a Hugging Face Parquet file, a gzip'd tar and a GZIP TFRecord."""
    root = tmp_path_factory.mktemp("dataset")
    made = {name: str(root / name) for name in ("loose", "webdataset", "parquet", "tfrecord")}
    for folder in made.values():
        os.makedirs(folder)
    for i, data in enumerate(images):
        with open(os.path.join(made["loose"], f"{i:09d}.jpg"), "wb") as file:
            file.write(data)
    for shard in range(3):
        part = images[shard * 4 : shard * 4 + 4]
        keys = [f"{shard * 4 + i:09d}" for i in range(4)]
        meta = pa.table({"key": keys, "caption": [f"caption {k}" for k in keys]})
        for layout in ("webdataset", "parquet", "tfrecord"):
            pq.write_table(meta, os.path.join(made[layout], f"{shard:05d}.parquet"))
        write_tar(
            os.path.join(made["webdataset"], f"{shard:05d}.tar"),
            img2dataset_samples(part, shard * 4),
        )
        write_tfrecord(os.path.join(made["tfrecord"], f"{shard:05d}.tfrecord"), part)
        with open(os.path.join(made["webdataset"], f"{shard:05d}_stats.json"), "w") as file:
            file.write("{}")
    # img2dataset's parquet output: the images in a `jpg` column of each shard's file.
    for name in os.listdir(made["parquet"]):
        path = os.path.join(made["parquet"], name)
        shard = int(name[:5])
        table = pq.read_table(path)
        jpg = pa.array(images[shard * 4 : shard * 4 + 4], pa.binary())
        pq.write_table(table.append_column("jpg", jpg), path, row_group_size=3)
    made["hf"] = str(root / "train-00000-of-00001.parquet")
    struct = [{"bytes": data, "path": f"{i}.jpg"} for i, data in enumerate(images)]
    pq.write_table(pa.table({"image": struct, "label": [i % 3 for i in range(COUNT)]}), made["hf"])
    made["tgz"] = str(root / "all.tar.gz")
    write_tar(made["tgz"], img2dataset_samples(images), "w:gz")
    made["gz_tfrecord"] = str(root / "all.tfrecord.gz")
    write_tfrecord(made["gz_tfrecord"], images, "image/encoded", gz=True)
    return made


@pytest.fixture(scope="module")
def reference(dataset, tiny_model, tmp_path_factory) -> np.ndarray:
    """The photos embedded as loose files."""
    output = str(tmp_path_factory.mktemp("reference") / "loose.h5")
    efx.extract(dataset["loose"], output, model=tiny_model, image_size=SIZE)
    return efx.load(output)[1]


def extract(sources, output, model, **options) -> efx.Summary:
    return efx.extract(sources, output, model=model, image_size=SIZE, batch_size=4, **options)


def test_each_of_img2datasets_layouts_embeds_as_it_leaves_img2dataset(
    dataset, reference, tiny_model, tmp_path
):
    """One command per folder; the metadata Parquet files beside the shards are skipped with a
    note; rows in shard order then stored order, keyed SHARD/KEY, as the loose photos."""
    names = {
        "webdataset": lambda shard, i: f"{shard:05d}.tar/{i:09d}.jpg",
        "parquet": lambda shard, i: f"{shard:05d}.parquet/{i:09d}",  # img2dataset's key column
        "tfrecord": lambda shard, i: f"{shard:05d}.tfrecord/{i % 4}",  # the record's number
    }
    for layout, name in names.items():
        notes: list[str] = []
        output = str(tmp_path / f"{layout}.h5")
        summary = extract(dataset[layout], output, tiny_model, on_note=notes.append)
        assert (summary.embedded, summary.failed) == (COUNT, 0), layout
        paths, rows = efx.load(output)
        root = dataset[layout]
        assert paths == [os.path.join(root, name(i // 4, i)) for i in range(COUNT)]
        np.testing.assert_allclose(rows, reference, rtol=0, atol=1e-6)
        skipped = [n for n in notes if n.startswith("skipped")]
        assert len(skipped) == (0 if layout == "parquet" else 1), notes  # one note for all
        if skipped:
            assert skipped[0] == (
                "skipped 3 files that hold no images, as img2dataset's metadata beside its "
                f"shards; the first: {root}/00000.parquet has no column of image bytes, its "
                "columns being key, caption"
            )


@pytest.mark.parametrize("kind", ["hf", "tgz", "gz_tfrecord"])
def test_hugging_face_parquet_gzip_tar_and_gzip_tfrecord_give_the_same_rows(
    kind, dataset, reference, tiny_model, tmp_path
):
    output = str(tmp_path / "out.h5")
    summary = extract(dataset[kind], output, tiny_model)
    assert (summary.embedded, summary.failed) == (COUNT, 0)
    paths, rows = efx.load(output)
    expected = {
        "hf": [f"{dataset['hf']}/{i}" for i in range(COUNT)],  # row numbers: no key column
        "tgz": [f"{dataset['tgz']}/{i:09d}.jpg" for i in range(COUNT)],
        "gz_tfrecord": [f"{dataset['gz_tfrecord']}/{i}" for i in range(COUNT)],
    }
    assert paths == expected[kind]
    np.testing.assert_allclose(rows, reference, rtol=0, atol=1e-6)


def test_shards_are_told_by_content_not_by_name(dataset, reference, tiny_model, tmp_path):
    """A tar called .bin and a Parquet file called .dat, named on stdin, are read as shards."""
    disguised = {"data.bin": f"{dataset['webdataset']}/00000.tar", "rows.dat": dataset["hf"]}
    for name, real in disguised.items():
        shutil.copy(real, tmp_path / name)
    listing = "\n".join(str(tmp_path / name) for name in disguised).encode()
    output = str(tmp_path / "out.h5")
    summary = efx.extract("-", output, model=tiny_model, image_size=SIZE, stdin=io.BytesIO(listing))
    assert (summary.embedded, summary.failed) == (4 + COUNT, 0)
    rows = efx.load(output)[1]
    np.testing.assert_allclose(rows[:4], reference[:4], rtol=0, atol=1e-6)
    np.testing.assert_allclose(rows[4:], reference, rtol=0, atol=1e-6)


def test_webdataset_samples_one_image_each_and_failures_by_key(images, tiny_model, tmp_path):
    """The preferred image of a sample wins; a sample without one, a corrupt member and a key
    stored in two places (not contiguous: never mis-joined) are failures with reasons."""
    shard = str(tmp_path / "odd.tar")
    corrupt = images[2][: len(images[2]) // 3]
    write_tar(
        shard,
        [
            ("a/0001", {"txt": b"first", "png": sample_png(), "jpg": images[0]}),  # jpg wins
            ("a/0002", {"txt": b"no image here", "json": b"{}"}),
            ("a/0003", {"jpg": corrupt, "txt": b"cut short"}),
            ("a/0004", {"jpg": images[3]}),
            ("a/0005", {"txt": b"caption"}),
            ("a/0006", {"jpg": images[4]}),
            ("a/0005", {"jpg": images[5]}),  # 0005 again, after 0006
            ("__key__", {"jpg": images[6]}),  # the name is the key: an ordinary sample
        ],
    )
    output = str(tmp_path / "out.h5")
    summary = extract(shard, output, tiny_model)
    paths, rows = efx.load(output)
    assert paths == [f"{shard}/a/0001.jpg", f"{shard}/a/0004.jpg", f"{shard}/a/0006.jpg",
                     f"{shard}/__key__.jpg"]  # fmt: skip
    failures = {f["path"]: f["error"] for f in writers.read_failures(output)}
    assert list(failures) == [f"{shard}/a/0002", f"{shard}/a/0003.jpg", f"{shard}/a/0005"]
    assert failures[f"{shard}/a/0002"].startswith("sample has no image")
    assert ".txt, .json" in failures[f"{shard}/a/0002"]
    assert failures[f"{shard}/a/0003.jpg"] == "truncated or corrupt JPEG"
    assert "stored in 2 places" in failures[f"{shard}/a/0005"]
    assert (summary.embedded, summary.failed) == (4, 3)
    loose = tmp_path / "loose"
    loose.mkdir()
    for i in (0, 3, 4, 6):
        (loose / f"{i}.jpg").write_bytes(images[i])
    expected = efx.load(extract_to(str(loose), tmp_path / "loose.h5", tiny_model))[1]
    np.testing.assert_allclose(rows, expected, rtol=0, atol=1e-6)


def sample_png() -> bytes:
    buffer = io.BytesIO()
    sample("coffee.jpg").resize((40, 30)).save(buffer, "PNG")
    return buffer.getvalue()


def extract_to(source: str, output, model: str) -> str:
    extract(source, str(output), model)
    return str(output)


def test_image_key_chooses_the_member_and_the_feature(images, tiny_model, tmp_path):
    shard = str(tmp_path / "seg.tar")
    png = sample_png()
    write_tar(shard, [("0", {"jpg": images[0], "seg.png": png}), ("1", {"jpg": images[1]})])
    output = str(tmp_path / "seg.h5")
    extract(shard, output, tiny_model, image_key="seg.png")
    assert efx.load(output)[0] == [f"{shard}/0.seg.png"]
    assert (
        (writers.read_failures(output)[0]["error"])
        == "sample has no image: no member .seg.png (its members: .jpg)"
    )
    result = run_cli("extract", shard, str(tmp_path / "typo.h5"), "-m", tiny_model,
                     "--image-key", "seg.jpg")  # fmt: skip
    assert_user_error(result, "no sample has a .seg.jpg member (extensions in it: jpg, seg.png)")
    records = str(tmp_path / "two.tfrecord")
    import tensorflow as tf

    with tf.io.TFRecordWriter(records) as writer:
        feature = {
            name: tf.train.Feature(bytes_list=tf.train.BytesList(value=[data]))
            for name, data in (("image/encoded", images[0]), ("image/segmentation", png))
        }
        writer.write(
            tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()
        )
    result = run_cli("extract", records, str(tmp_path / "x.h5"), "-m", tiny_model)
    assert_user_error(result, "several features hold images (image/encoded, image/segmentation)")
    assert "--image-key" in result.stderr
    extract(records, str(tmp_path / "enc.h5"), tiny_model, image_key="image/encoded")
    assert efx.load(str(tmp_path / "enc.h5"))[0] == [f"{records}/0"]
    result = run_cli("extract", records, str(tmp_path / "typo.h5"), "-m", tiny_model,
                     "--image-key", "image")  # fmt: skip
    assert_user_error(result, "its records have no bytes feature 'image'")


def test_what_efx_cannot_tell_is_refused_naming_the_choices(dataset, images, tiny_model, tmp_path):
    metadata = os.path.join(dataset["webdataset"], "00000.parquet")
    result = run_cli("extract", metadata, str(tmp_path / "a.h5"), "-m", tiny_model)
    assert_user_error(result, "has no column of image bytes (its columns: key, caption)")
    both = str(tmp_path / "both.parquet")
    pq.write_table(pa.table({"jpg": images[:2], "png": [sample_png()] * 2}), both)
    result = run_cli("extract", both, str(tmp_path / "b.h5"), "-m", tiny_model)
    assert_user_error(result, "several columns of bytes (jpg, png)")
    result = run_cli("extract", both, str(tmp_path / "c.h5"), "-m", tiny_model,
                     "--image-column", "nope")  # fmt: skip
    assert_user_error(result, "has no column 'nope' of image bytes (binary columns: jpg, png")
    extract(both, str(tmp_path / "d.h5"), tiny_model, image_column="png")
    assert len(efx.load(str(tmp_path / "d.h5"))[0]) == 2


def test_damaged_shards_keep_what_comes_before_the_damage(dataset, images, tiny_model, tmp_path):
    """A truncated tar, a truncated TFRecord, a Parquet file without its footer, a null cell:
    the rows before the damage are embedded, the rest is named with a reason; the run goes on
    to the next source."""
    tar_path = os.path.join(dataset["webdataset"], "00001.tar")
    data = Path(tar_path).read_bytes()
    cut_tar = str(tmp_path / "cut.tar")
    member_end = _member_end(tar_path, "000000005.jpg")
    Path(cut_tar).write_bytes(data[: member_end - 100])  # inside 000000005.jpg's bytes
    cut_at_boundary = str(tmp_path / "boundary.tar")  # right after a member, inside its block
    Path(cut_at_boundary).write_bytes(data[: _member_end(tar_path, "000000005.json")])
    records = Path(dataset["tfrecord"], "00001.tfrecord").read_bytes()
    cut_records = str(tmp_path / "cut.tfrecord")
    Path(cut_records).write_bytes(records[: len(records) - 50])
    no_footer = str(tmp_path / "nofooter.parquet")
    whole = Path(dataset["hf"]).read_bytes()
    Path(no_footer).write_bytes(whole[: len(whole) // 2])
    nulls = str(tmp_path / "nulls.parquet")
    pq.write_table(pa.table({"jpg": pa.array([images[0], None, images[1]], pa.binary())}), nulls)
    by_path = str(tmp_path / "by-path.parquet")  # Hugging Face's Image, pointing at a file
    cells = [{"bytes": images[0], "path": None}, {"bytes": None, "path": "/data/b.jpg"}]
    pq.write_table(pa.table({"image": cells}), by_path)
    garbage = str(tmp_path / "random.tar")
    Path(garbage).write_bytes(bytes(random.Random(0).randrange(256) for _ in range(3000)))
    sources = [cut_tar, cut_at_boundary, cut_records, no_footer, nulls, by_path, garbage,
               dataset["loose"]]  # fmt: skip
    output = str(tmp_path / "out.h5")
    summary = extract(sources, output, tiny_model)
    paths = efx.load(output)[0]
    failures = {f["path"]: f["error"] for f in writers.read_failures(output)}
    assert paths[:2] == [f"{cut_tar}/000000004.jpg", f"{cut_at_boundary}/000000004.jpg"]
    assert f"{cut_at_boundary}/000000005.jpg" in paths  # whole before the cut
    assert "the tar shard ends inside this member" in failures[f"{cut_tar}/000000005.jpg"]
    assert "tar shard damaged after member 000000005.json" in failures[cut_at_boundary]
    assert [p for p in paths if p.startswith(cut_records)] == [
        f"{cut_records}/{i}" for i in range(3)
    ]
    assert "TFRecord file damaged after record 2" in failures[cut_records]
    assert failures[no_footer].startswith("not a readable Parquet file")
    assert [p for p in paths if p.startswith(nulls)] == [f"{nulls}/0", f"{nulls}/2"]
    assert failures[f"{nulls}/1"] == "no image in this row: its jpg cell is null"
    assert failures[f"{by_path}/1"] == (
        "no image bytes in this row: its image holds only a path ('/data/b.jpg'); efx embeds "
        "images stored in the file"
    )
    assert failures[garbage] == "named as a tar shard, but it is neither a tar file nor an image"
    assert paths[-COUNT:] == [os.path.join(dataset["loose"], f"{i:09d}.jpg") for i in range(COUNT)]
    assert summary.failed == len(failures) == 7


def _member_end(tar_path: str, name: str) -> int:
    with tarfile.open(tar_path) as tar:
        info = tar.getmember(name)
        return info.offset_data + info.size


def test_update_reads_no_unchanged_shard_and_repacked_shards_cost_no_model_time(
    dataset, tiny_model, tmp_path
):
    folder = str(tmp_path / "webdataset")
    shutil.copytree(dataset["webdataset"], folder)
    output = str(tmp_path / "out.h5")
    extract(folder, output, tiny_model)
    before = efx.load(output)
    # Unchanged shards are not read: garbage with the same size and modification time is
    # taken for the shard that was there (as rsync and make would).
    shard = os.path.join(folder, "00002.tar")
    stat = os.stat(shard)
    Path(shard).write_bytes(b"\0" * stat.st_size)
    os.utime(shard, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    summary = extract(folder, output, tiny_model, update=True)
    assert summary.up_to_date and not summary.model_loaded and summary.kept == COUNT
    # Re-packed: the same images, renamed, in another order: no model time.
    shutil.copy(os.path.join(dataset["webdataset"], "00002.tar"), shard)
    repacked = os.path.join(folder, "00001.tar")
    with tarfile.open(repacked) as tar:
        members = [(m.name, tar.extractfile(m).read()) for m in tar.getmembers()]
    with tarfile.open(repacked, "w") as tar:
        for name, data in sorted(members, key=lambda m: m[0], reverse=True):
            add(tar, "new-" + name, data)
    summary = extract(folder, output, tiny_model, update=True)
    assert summary.computed == 0 and not summary.model_loaded
    assert (summary.kept, summary.reused, summary.removed) == (8, 4, 0)
    paths, rows = efx.load(output)
    order = [0, 1, 2, 3, 7, 6, 5, 4, 8, 9, 10, 11]
    renamed = [f"{repacked}/new-{i:09d}.jpg" for i in (7, 6, 5, 4)]
    assert paths == before[0][:4] + renamed + before[0][8:]
    np.testing.assert_array_equal(rows, before[1][order])
    # A new image in a shard: only it is embedded.
    write_tar(os.path.join(folder, "00003.tar"), img2dataset_samples([photo(99)], 12))
    summary = extract(folder, output, tiny_model, update=True)
    assert (summary.computed, summary.new, summary.kept) == (1, 1, COUNT)


def test_parts_split_by_shard_and_merge_into_one_runs_output(dataset, tiny_model, tmp_path):
    sources = [dataset["webdataset"], dataset["hf"], dataset["tfrecord"]]
    whole = str(tmp_path / "whole.h5")
    extract(sources, whole, tiny_model)
    parts = []
    for index in range(3):
        part = str(tmp_path / f"part{index}")
        extract(sources, part, tiny_model, part=f"{index}/3")
        parts.append(part)
    # 3 tars + 3 metadata files + 1 Parquet + 3 TFRecords + 3 metadata files = 13 files
    counts = [efx.info(p)["count"] for p in parts]
    assert sum(counts) == 3 * COUNT and all(counts)
    merged = str(tmp_path / "merged.h5")
    efx.merge(parts, merged)
    assert efx.load(merged)[0] == efx.load(whole)[0]
    np.testing.assert_allclose(efx.load(merged)[1], efx.load(whole)[1], rtol=0, atol=1e-6)


def test_killed_and_resumed_over_shards_equals_an_uninterrupted_run(
    dataset, images, slow_model, tmp_path
):
    from test_datasets_as_written import example, write_records

    # First a TFRecord file whose records hold three images each (keys FILE/N/I): the kill
    # lands among them or just after.
    multi = write_records(tmp_path / "multi.tfrecord", [example(images[:3]), example(images[3:6])])
    sources = [multi, dataset["webdataset"], dataset["parquet"]]
    clean = str(tmp_path / "clean.h5")
    with no_sleep(slow_model):
        efx.extract(sources, clean, model=slow_model, image_size=SIZE, batch_size=2,
                    backend="tensorflow")  # fmt: skip
    output = str(tmp_path / "out.h5")
    args = ["extract", *sources, output, "-m", slow_model, "--image-size", str(SIZE), "-b", "2",
            "--resume", "-q", "--backend", "tensorflow"]  # fmt: skip
    process = subprocess.Popen([EFX, *args], stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while _rows(output) < 4:
        assert time.monotonic() < deadline and process.poll() is None
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    kept = _rows(output)
    assert 4 <= kept < 2 * COUNT and not efx.info(output)["complete"]
    with no_sleep(slow_model):
        done = run_cli(*args, "--json")
    assert done.exit_code == 0, done.stderr
    assert json.loads(done.stdout)["resumed"] >= kept
    assert efx.load(output)[0] == efx.load(clean)[0]
    np.testing.assert_allclose(efx.load(output)[1], efx.load(clean)[1], rtol=0, atol=1e-6)
    assert efx.info(output)["complete"]


def _rows(output: str) -> int:
    try:
        return int(efx.info(output)["count"])
    except efx.EfxError:
        return 0


def test_members_keep_every_check_loose_files_get(tiny_model, tmp_path):
    """A decompression bomb inside a tar is refused before it is decoded, as a file would be."""
    from PIL import Image

    bomb = io.BytesIO()
    Image.new("1", (20000, 20000)).save(bomb, "PNG")
    shard = str(tmp_path / "bomb.tar")
    write_tar(shard, [("0", {"png": bomb.getvalue()}), ("1", {"jpg": photo(1)})])
    output = str(tmp_path / "out.h5")
    extract(shard, output, tiny_model)
    assert efx.load(output)[0] == [f"{shard}/1.jpg"]
    assert writers.read_failures(output)[0]["error"].startswith("image too large: 20000x20000")


def test_a_gzip_member_stream_is_not_mistaken_for_a_tar(tmp_path):
    from efx.sources import kind_of

    plain = tmp_path / "notes.gz"
    plain.write_bytes(gzip.compress(b"just text\n" * 100))
    assert kind_of(str(plain)) is None


def test_similar_takes_a_key_and_duplicates_pages_show_the_members(images, tiny_model, tmp_path):
    """Copies of one photo stored in a tar, a Parquet file and a TFRecord file: `duplicates`
    groups them and its page shows each member's thumbnail (rendered in Chromium); `similar`
    takes a member's key as its query."""
    from test_search import render

    shard, table, records = (str(tmp_path / n) for n in ("a.tar", "b.parquet", "c.tfrecord"))
    write_tar(shard, [("x/0", {"jpg": images[0]}), ("x/1", {"jpg": images[1]})])
    pq.write_table(pa.table({"key": ["k0", "k1"], "jpg": [images[0], images[2]]}), table)
    write_tfrecord(records, [images[3], images[0]])
    output = str(tmp_path / "out")
    extract([shard, table, records], output, tiny_model)
    copies = [f"{shard}/x/0.jpg", f"{table}/k0", f"{records}/1"]
    hits = efx.similar(output, [copies[0]], k=2)[0]["hits"]
    assert [hit["path"] for hit in hits] == copies[1:] and all(hit["exists"] for hit in hits)
    page = str(tmp_path / "dupes.html")
    result = run_cli("duplicates", output, "--threshold", "0.999", "--html", page)
    assert result.exit_code == 0, result.stderr
    groups = efx.duplicates(output, 0.999)["groups"]
    assert any(set(copies) <= {m["path"] for m in group["members"]} for group in groups)
    attributes, shot = render(page, tmp_path, "dupes")
    members = sum(len(group["members"]) for group in groups)
    assert attributes["data-thumbnails"] == str(members) and attributes["data-broken"] == "0"
    assert "file missing" not in Path(page).read_text(encoding="utf-8")
    os.remove(records)
    assert "file missing" in run_cli("duplicates", output, "--threshold", "0.999",
                                     "--html", page).stderr + Path(page).read_text()  # fmt: skip


def test_ctrl_c_while_listing_a_huge_shard_stops_at_once_and_says_so(tmp_path, tiny_model):
    """A tar whose one member is 1 TiB (sparse: no disk, minutes of hashing) is never held in
    memory, and a Ctrl-C during its listing ends the run in seconds."""
    shard = tmp_path / "huge.tar"
    info = tarfile.TarInfo("0.jpg")
    info.size = 1 << 40
    with open(shard, "wb") as file:
        file.write(info.tobuf())
        file.truncate(tarfile.BLOCKSIZE + (1 << 40) + 2 * tarfile.BLOCKSIZE)
    output = tmp_path / "out.h5"
    # Imports take about a second; then the listing of 1 TiB begins.
    returncode, stderr = ctrl_c_after(3, "extract", str(shard), str(output), "-m", tiny_model)
    assert returncode == 130, stderr
    said = "efx: interrupted while reading the shards: nothing was written, no OUTPUT was created."
    assert said in stderr
    assert "Traceback" not in stderr and not output.exists()


def test_a_record_that_is_not_an_example_fails_alone(images, tiny_model, tmp_path):
    """Sound framing around a payload that does not parse: that record fails, the file goes on
    (a framing error would end it: see the damaged shards test)."""
    import struct

    records = tmp_path / "bad.tfrecord"
    write_tfrecord(str(records), images[:3])
    data = bytearray(records.read_bytes())
    first = struct.unpack_from("<Q", data)[0]
    second_at = 12 + first + 4 + 12
    second = struct.unpack_from("<Q", data, 12 + first + 4)[0]
    data[second_at : second_at + second] = b"\xff" * second
    records.write_bytes(bytes(data))
    output = str(tmp_path / "out.h5")
    extract(str(records), output, tiny_model)
    assert efx.load(output)[0] == [f"{records}/0", f"{records}/2"]
    failure = writers.read_failures(output)[0]
    assert failure["path"] == f"{records}/1"
    assert failure["error"].startswith("this record is not a tf.train.Example")


def test_the_image_key_is_recorded_kept_by_resume_and_update_and_another_refused(
    images, tiny_model, tmp_path
):
    """Which member is a sample's image decides the rows: it is recorded, and a later run that
    does not say takes it from the output (as --image-size); another one is refused."""
    shard = str(tmp_path / "seg.tar")
    write_tar(shard, [("0", {"jpg": images[0], "seg.png": sample_png()})])
    output = str(tmp_path / "out.h5")
    extract(shard, output, tiny_model, image_key="seg.png")
    assert efx.info(output)["image_key"] == "seg.png"
    summary = extract(shard, output, tiny_model, update=True)
    assert summary.up_to_date and efx.load(output)[0] == [f"{shard}/0.seg.png"]
    for flag in ("--resume", "--update"):
        result = run_cli("extract", shard, output, "-m", tiny_model, "--image-size", str(SIZE),
                         flag, "--image-key", "jpg")  # fmt: skip
        assert_user_error(result, "image_key: 'seg.png' there, 'jpg' here")
