"""Datasets as their writers really write them (real-world round 3): each shard is built the way
a tool or a bug report leaves it, and each row is checked against the format's own reader
(tarfile, pyarrow, TensorFlow's tf.data) or against its twin, the same picture as a loose PNG:
the same pixels give the same embedding. Every test here failed on efx before round 3."""

from __future__ import annotations

import io
import os
import re
import shutil
import subprocess
import tarfile

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import sample
from PIL import Image

import efx
from efx import sources

SIZE = 48


def picture(turn: int = 0) -> Image.Image:
    """A real photo, turned (each turn is another picture for the model)."""
    return sample("chelsea.png").resize((160, 96)).rotate(90 * turn, expand=True)


def png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def jpeg(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=92)
    return buffer.getvalue()


def add(tar: tarfile.TarFile, name: str, data: bytes, mtime: int = 1_700_000_000) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime = len(data), mtime
    tar.addfile(info, io.BytesIO(data))


def twin(folder, name: str, data: bytes) -> str:
    """The picture in `data` as Pillow decodes it, as a loose PNG: its row is the right one."""
    path = os.path.join(folder, name)
    Image.open(io.BytesIO(data)).convert("RGB").save(path)
    return path


def embed(sources_, output, model, **options) -> dict[str, np.ndarray]:
    efx.extract(sources_, str(output), model=model, image_size=SIZE, batch_size=4, **options)
    paths, embeddings = efx.load(str(output))
    return dict(zip(paths, embeddings, strict=True))


def same(a: np.ndarray, b: np.ndarray) -> bool:
    """The same pixels in: the same embedding out (float noise only)."""
    return bool(np.allclose(a, b, rtol=1e-4, atol=1e-6))


def failures(output) -> dict[str, str]:
    return {f["path"]: f["error"] for f in efx.writers.read_failures(str(output))}


# 1. The bytes embedded are the bytes listed.


@pytest.mark.skipif(shutil.which("tar") is None, reason="GNU tar packs the sparse members")
def test_sparse_members_embed_the_picture_tar_extracts_in_each_sparse_format(tiny_model, tmp_path):
    """A BMP with holes (a black half), packed by GNU tar --sparse in its three formats, and
    with pictures after it: efx embedded the raw bytes after the header (a wrong picture, or
    'shard changed' when alone). Now each row is its twin's and every later member its own."""
    bmp = np.zeros((128, 256, 3), np.uint8)
    bmp[64:] = np.asarray(picture().resize((256, 64)))
    buffer = io.BytesIO()
    Image.fromarray(bmp).save(buffer, "BMP")
    data = buffer.getvalue()
    src = tmp_path / "src"
    src.mkdir()
    with open(src / "000.bmp", "wb") as file:  # holes where a 4 KiB block is all zeros
        for at in range(0, len(data), 4096):
            block = data[at : at + 4096]
            file.seek(len(block), 1) if block.count(0) == len(block) else file.write(block)
        file.truncate(len(data))
    later = {f"{i:03d}.png": png(picture(i)) for i in (1, 2, 3)}
    for name, body in later.items():
        (src / name).write_bytes(body)
    shards = []
    for fmt, extra in (
        ("gnu", []),
        ("pax", ["--sparse-version=0.1"]),
        ("pax", ["--sparse-version=1.0"]),
    ):
        shard = str(tmp_path / f"sparse_{fmt}{''.join(extra)[-3:]}.tar")
        names = ["000.bmp", *later]
        command = ["tar", f"--format={fmt}", "--sparse", *extra, "-C", str(src), "-cf"]
        subprocess.run([*command, shard, *names], check=True)
        shards.append(shard)
    with tarfile.open(shards[0]) as tar:  # the shard really holds a sparse member
        assert tar.getmember("000.bmp").sparse
    loose = [twin(tmp_path, "twin.png", data)] + [
        twin(tmp_path, n + ".png", b) for n, b in later.items()
    ]
    rows = embed([*shards, *loose], tmp_path / "out.h5", tiny_model)
    for shard in shards:
        assert same(rows[f"{shard}/000.bmp"], rows[loose[0]]), shard
        for i, name in enumerate(later, 1):
            assert same(rows[f"{shard}/{name}"], rows[loose[i]]), (shard, name)
        assert sources.read_key(f"{shard}/000.bmp") == data


def test_a_member_stored_twice_embeds_the_later_copy_as_tar_extracts_it(tiny_model, tmp_path):
    """`tar -rf` appends a corrected image under the same name: tar -x keeps the later copy;
    efx embedded the first, stale one."""
    old, new = png(picture(0)), png(picture(2))
    shard = str(tmp_path / "dup.tar")
    with tarfile.open(shard, "w") as tar:
        add(tar, "000.png", old)
        add(tar, "000.json", b"{}")
        add(tar, "000.png", new, mtime=1_700_000_600)
        add(tar, "001.png", png(picture(1)))
    rows = embed(
        [shard, twin(tmp_path, "old.png", old), twin(tmp_path, "new.png", new)],
        tmp_path / "o.h5",
        tiny_model,
    )
    assert [k for k in rows if k.startswith(shard)] == [f"{shard}/000.png", f"{shard}/001.png"]
    assert same(rows[f"{shard}/000.png"], rows[str(tmp_path / "new.png")])
    assert not same(rows[f"{shard}/000.png"], rows[str(tmp_path / "old.png")])
    assert sources.read_key(f"{shard}/000.png") == new  # a key looked up gives the same copy


def test_bytes_that_are_not_those_listed_fail_with_the_reason_never_embed(tmp_path):
    """A shard rewritten between the listing pass and the embedding pass (same sizes, another
    picture): every reader's bytes are checked against the SHA-256 the listing recorded."""
    shard = str(tmp_path / "s.tar")
    first, second = jpeg(picture(0)), jpeg(picture(1))
    with tarfile.open(shard, "w") as tar:
        add(tar, "a.jpg", first)
    inputs = sources.list_inputs([(shard, False)], sources.ShardOptions())
    with tarfile.open(shard, "w") as tar:
        add(tar, "a.jpg", second[: len(first)].ljust(len(first), b"\0"))
    (read,) = sources.read_inputs(inputs)
    assert isinstance(read, sources.NotAsListed)
    assert sources.read_reason(read).startswith("its bytes changed while efx ran")


# 2. A shard is what its format's reader says it is.


def test_empty_shards_are_zero_rows_and_a_v7_tar_is_a_tar(tiny_model, tmp_path):
    """An empty tar and a v7 tar have no ustar magic; tarfile, GNU tar and webdataset read
    them (0 and 1 samples): efx said 'neither a tar file nor an image'. TensorFlow's writer
    given no record leaves an empty TFRecord file (plain, GZIP or ZLIB), which tf.data reads
    as zero records; a Parquet file of zero rows with two columns of bytes has no column to
    choose: each is zero rows, not a failure."""
    empty = str(tmp_path / "empty.tar")
    with tarfile.open(empty, "w"):
        pass
    no_records = [
        write_records(tmp_path / name, [], compression)
        for name, compression in (
            ("a.tfrecord", ""),
            ("b.tfrecord.gz", "GZIP"),
            ("c.tfrecord", "ZLIB"),
        )
    ]
    no_rows = str(tmp_path / "none.parquet")
    pq.write_table(
        pa.table({"jpg": pa.array([], pa.binary()), "png": pa.array([], pa.binary())}), no_rows
    )
    data = png(picture())
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        add(tar, "000.png", data)
    block = bytearray(raw.getvalue())
    block[257:329] = bytes(72)  # v7: no magic, no version, no owner names
    block[148:156] = b" " * 8
    block[148:156] = b"%06o\0 " % sum(block[:512])
    v7 = tmp_path / "v7.tar"
    v7.write_bytes(bytes(block))
    with tarfile.open(v7) as tar:  # the format's own reader
        assert tar.getnames() == ["000.png"]
    loose = twin(tmp_path, "twin.png", data)
    output = tmp_path / "o.h5"
    rows = embed([empty, *no_records, no_rows, str(v7), loose], output, tiny_model)
    assert list(rows) == [f"{v7}/000.png", loose] and failures(output) == {}
    assert same(rows[f"{v7}/000.png"], rows[loose])
    with pytest.raises(efx.EfxError, match="the shards there hold no samples"):
        efx.extract([empty], str(tmp_path / "none.h5"), model=tiny_model, image_size=SIZE)


def example(images: list[bytes], label: int = 0) -> bytes:
    import tensorflow as tf

    feature = {
        "image": tf.train.Feature(bytes_list=tf.train.BytesList(value=images)),
        "label": tf.train.Feature(int64_list=tf.train.Int64List(value=[label])),
    }
    return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()


def write_records(path, records: list[bytes], compression: str = "") -> str:
    import tensorflow as tf

    options = tf.io.TFRecordOptions(compression_type=compression)
    with tf.io.TFRecordWriter(str(path), options) as writer:
        for record in records:
            writer.write(record)
    return str(path)


def test_tfrecord_files_of_each_kind_tensorflow_writes(tiny_model, tmp_path):
    """ZLIB-compressed files (TFRecordOptions' third kind), SequenceExamples (a clip's frames
    in a feature list), an Example holding three images in its feature (tf.io.VarLenFeature
    gives 3): each image a row, `FILE/N/I` where a record holds several; and a first record
    whose image is empty or cut does not decide the file (its others were lost as
    'metadata'). Before, each of these lost images or refused the file."""
    import tensorflow as tf

    pictures = [png(picture(i)) for i in range(4)]
    loose = [twin(tmp_path, f"twin_{i}.png", data) for i, data in enumerate(pictures)]
    zlibbed = write_records(
        tmp_path / "zlib.tfrecord", [example([p]) for p in pictures[:2]], "ZLIB"
    )
    with open(zlibbed, "rb") as file:
        assert file.read(2) == b"\x78\x9c"
    frame = lambda data: tf.train.Feature(bytes_list=tf.train.BytesList(value=[data]))  # noqa: E731
    clip = tf.train.SequenceExample(
        context=tf.train.Features(feature={"video_id": frame(b"clip0")}),
        feature_lists=tf.train.FeatureLists(
            feature_list={"frames": tf.train.FeatureList(feature=[frame(p) for p in pictures[:3]])}
        ),
    )
    clips = write_records(tmp_path / "clips.tfrecord", [clip.SerializeToString()])
    multi = write_records(
        tmp_path / "multi.tfrecord", [example(pictures[:3]), example(pictures[3:])]
    )
    walk = tmp_path / "walk"
    walk.mkdir()
    empty_first = write_records(
        walk / "train.tfrecord-00000-of-00002", [example([b""]), example([pictures[1]])]
    )
    cut_first = write_records(
        walk / "train.tfrecord-00001-of-00002",
        [example([pictures[0][200:]]), example([pictures[2]])],
    )
    output = tmp_path / "o.h5"
    rows = embed([zlibbed, clips, multi, str(walk), *loose], output, tiny_model)
    expected = {
        f"{zlibbed}/0": 0, f"{zlibbed}/1": 1,
        f"{clips}/0/0": 0, f"{clips}/0/1": 1, f"{clips}/0/2": 2,
        f"{multi}/0/0": 0, f"{multi}/0/1": 1, f"{multi}/0/2": 2, f"{multi}/1": 3,
        f"{empty_first}/1": 1, f"{cut_first}/1": 2,
    }  # fmt: skip
    assert [k for k in rows if k not in loose] == list(expected)
    for key, i in expected.items():
        assert same(rows[key], rows[loose[i]]), key
    failed = failures(output)
    assert failed == {
        f"{empty_first}/0": "no image in this record: its 'image' value is empty (0 bytes)",
        f"{cut_first}/0": failed[f"{cut_first}/0"],
    }
    # tf.data's own count of the images agrees (VarLenFeature: 3 + 1)
    parse = lambda r: tf.io.parse_single_example(r, {"image": tf.io.VarLenFeature(tf.string)})  # noqa: E731
    counts = [int(tf.size(parse(r)["image"].values)) for r in tf.data.TFRecordDataset(multi)]
    assert counts == [3, 1]
    assert (
        sources.read_key(f"{multi}/0/2") == pictures[2]
        and sources.read_key(f"{multi}/1") == pictures[3]
    )


def test_a_tfrecord_file_cut_inside_its_first_record_is_one_failure_not_a_crash(tmp_path):
    """Damage before any image decided the feature: the listing raised past the run."""
    whole = write_records(tmp_path / "whole.tfrecord", [example([png(picture())])])
    cut = tmp_path / "cut.tfrecord"
    with open(whole, "rb") as file:
        cut.write_bytes(file.read()[:40])
    (failure,) = sources.list_inputs([(str(cut), True)], sources.ShardOptions())
    assert failure.key == str(cut) and failure.reason == (
        "TFRecord file damaged at its start (cut short inside a record): anything stored after "
        "that is lost"
    )


# 3. Every Arrow type that holds bytes or text; 5. one bad row never decides a file.


def test_parquet_columns_judged_by_what_they_hold(tiny_model, tmp_path):
    """A dictionary-encoded image column (refused as metadata, even when named), Polars'
    large_string key and large_binary images (the key was ignored), Hugging Face's
    Sequence(Image()) (a list of image structs per row: refused, and skipped by a walk): each
    row's images embedded, keyed as documented, the key column joined back."""
    pictures = [png(picture(i)) for i in range(3)]
    loose = [twin(tmp_path, f"twin_{i}.png", data) for i, data in enumerate(pictures)]
    dictionary = str(tmp_path / "dict.parquet")
    column = pa.array([pictures[0], pictures[1], pictures[0]]).dictionary_encode()
    pq.write_table(pa.table({"key": ["k0", "k1", "k2"], "jpg": column}), dictionary)
    polars = str(tmp_path / "polars_like.parquet")
    table = pa.table({
        "key": pa.array(["a", "b", "c"], pa.large_string()),
        "jpg": pa.array(pictures, pa.large_binary()),
        "caption": pa.array(["x", "y", "z"], pa.large_string()),
    })  # fmt: skip
    pq.write_table(table, polars)
    walk = tmp_path / "walk"
    walk.mkdir()
    item = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    images = pa.array(
        [[{"bytes": pictures[0], "path": None}, {"bytes": pictures[1], "path": None}],
         [{"bytes": pictures[2], "path": None}], []],
        pa.list_(item),
    )  # fmt: skip
    hf = str(walk / "train-00000-of-00001.parquet")
    pq.write_table(pa.table({"images": images, "text": ["two", "one", "none"]}), hf)
    output = tmp_path / "o.parquet"
    rows = embed(
        [dictionary, polars, str(walk), *loose], output, tiny_model, keep_columns=("caption",)
    )
    expected = {
        f"{dictionary}/k0": 0, f"{dictionary}/k1": 1, f"{dictionary}/k2": 0,
        f"{polars}/a": 0, f"{polars}/b": 1, f"{polars}/c": 2,
        f"{hf}/0/0": 0, f"{hf}/0/1": 1, f"{hf}/1/0": 2,
    }  # fmt: skip
    assert [k for k in rows if k not in loose] == list(expected)
    for key, i in expected.items():
        assert same(rows[key], rows[loose[i]]), key
    assert failures(output) == {f"{hf}/2": "no image in this row: its images list is empty"}
    written = pq.read_table(str(output), columns=["path", "shard", "key", "caption"]).to_pylist()
    by_path = {row["path"]: row for row in written}
    assert [by_path[f"{polars}/{k}"]["key"] for k in "abc"] == ["a", "b", "c"]  # joins back
    assert [by_path[f"{polars}/{k}"]["caption"] for k in "abc"] == ["x", "y", "z"]
    # an image of a list column joins back on its row: the key column holds the row's key
    assert [by_path[f"{hf}/{k}"]["key"] for k in ("0/0", "0/1", "1/0")] == ["0", "0", "1"]
    assert (
        sources.read_key(f"{hf}/0/1") == pictures[1]
        and sources.read_key(f"{dictionary}/k2") == pictures[0]
    )
    # named, the dictionary column is taken too
    rows = embed([dictionary], tmp_path / "named.h5", tiny_model, image_column="jpg")
    assert list(rows) == [f"{dictionary}/k0", f"{dictionary}/k1", f"{dictionary}/k2"]


def test_a_file_efx_cannot_decide_fails_alone_and_a_null_first_image_decides_nothing(
    tiny_model, tmp_path
):
    """Two columns of bytes: one whose first rows are null and later hold images, one of
    metadata bytes: the images column is found past the first rows. A file with two image
    columns found by a walk is one failure (it stopped the whole walk with exit 1)."""
    pictures = [png(picture(i)) for i in range(2)]
    walk = tmp_path / "walk"
    walk.mkdir()
    late = str(walk / "a-late.parquet")
    nulls = [None] * 70 + pictures  # past the first batch of 64 rows
    pq.write_table(pa.table({"jpg": nulls, "meta": [b"{}"] * 72}), late)
    both = str(walk / "b-both.parquet")
    pq.write_table(pa.table({"jpg": pictures, "png": pictures}), both)
    picture(1).save(walk / "c.png")
    output = tmp_path / "o.h5"
    rows = embed([str(walk)], output, tiny_model)
    assert list(rows) == [f"{late}/70", f"{late}/71", str(walk / "c.png")]
    failed = failures(output)
    assert failed[both] == (
        "several columns of bytes (jpg, png) and efx cannot tell which holds the images: "
        "name it with --image-column"
    )
    assert len(failed) == 71  # the 70 null cells, and the undecided file
    with pytest.raises(efx.EfxError, match="name it with --image-column"):  # named: refused
        efx.extract([both], str(tmp_path / "n.h5"), model=tiny_model, image_size=SIZE)


# 6. Every web server.


def test_web_servers_without_ranges_or_lengths_are_read_front_to_back(tiny_model, tmp_path):
    """A server that answers Range with 200 and the whole body lost the members past the
    first 8 MiB (with fsspec's advice as the reason); one with chunked transfer and no length
    ended a tar's run with a traceback and failed a Parquet file ('Cannot seek streaming HTTP
    file'). Now every member and row is embedded, as from the same files on disk."""
    from servers import HTTPServer

    site = tmp_path / "site"
    site.mkdir()
    rng = np.random.default_rng(0)
    noisy = []
    for i in range(22):  # noisy PNGs: ~10 MB in all, past the first 8 MiB block
        base = np.asarray(picture(i % 4).resize((420, 420))).astype(np.int16)
        noise = rng.integers(-30, 31, base.shape)
        noisy.append(png(Image.fromarray((base + noise).clip(0, 255).astype(np.uint8))))
    with tarfile.open(site / "big.tar", "w") as tar:
        for i, data in enumerate(noisy):
            add(tar, f"{i:03d}.png", data)
    assert os.path.getsize(site / "big.tar") > 9 << 20
    pq.write_table(pa.table({"key": ["a", "b", "c"], "jpg": noisy[:3]}), site / "small.parquet")
    (site / "one.png").write_bytes(noisy[0])
    local = [str(site / n) for n in ("big.tar", "small.parquet", "one.png")]
    expected = embed(local, tmp_path / "local.h5", tiny_model)
    server = HTTPServer(str(site))
    try:
        for kind in ("whole", "chunked"):
            urls = [f"{server.url}/{kind}/{n}" for n in ("big.tar", "small.parquet", "one.png")]
            output = tmp_path / f"{kind}.h5"
            rows = embed(urls, output, tiny_model)
            assert failures(output) == {}, kind
            assert len(rows) == len(expected) == 22 + 3 + 1
            for (key, row), (local_key, local_row) in zip(
                rows.items(), expected.items(), strict=True
            ):
                assert key.split(f"/{kind}/")[1] == os.path.relpath(local_key, site)
                assert np.array_equal(row, local_row), key
            assert sources.read_key(f"{urls[0]}/021.png") == noisy[21]
    finally:
        server.stop()


def test_a_shard_given_twice_keeps_its_rows_at_every_update(tiny_model, tmp_path):
    """A shard named and also found in its folder is listed twice (two copies of its rows,
    as a file given twice). Each --update kept both copies for each listing: 8, 16, 32 rows."""
    folder = tmp_path / "data"
    folder.mkdir()
    records = write_records(
        folder / "multi.tfrecord", [example([png(picture(i))]) for i in range(2)]
    )
    output = str(tmp_path / "o.h5")
    efx.extract([records, str(folder)], output, model=tiny_model, image_size=SIZE)
    assert efx.load(output)[0] == [f"{records}/0", f"{records}/1"] * 2
    for _ in range(2):  # unchanged: its rows are kept from OUTPUT, the shard not read
        summary = efx.extract(
            [records, str(folder)], output, model=tiny_model, image_size=SIZE, update=True
        )
        assert summary.embedded == 4 and summary.computed == 0
        assert efx.load(output)[0] == [f"{records}/0", f"{records}/1"] * 2


def test_image_key_that_matched_gets_no_note_and_one_that_did_not_names_what_exists(
    tiny_model, tmp_path
):
    """--image-key txt took the tar's .TXT members (they fail as text), yet a note said it was
    not used; a TFRecord's wrong --image-key did not name the features it has."""
    shard = str(tmp_path / "s.tar")
    with tarfile.open(shard, "w") as tar:
        add(tar, "000.JPG", jpeg(picture()))
        add(tar, "000.TXT", b"a caption")
    notes: list[str] = []
    output = str(tmp_path / "o.h5")
    efx.extract([shard], output, model=tiny_model, image_key="txt", on_note=notes.append)
    assert not [n for n in notes if "was not used" in n]
    assert failures(tmp_path / "o.h5") == {f"{shard}/000.TXT": "not an image (text file)"}
    with pytest.raises(efx.EfxError, match=r"extensions in it: jpg, txt\)"):
        efx.extract([shard], str(tmp_path / "p.h5"), model=tiny_model, image_key="webp")
    records = write_records(tmp_path / "r.tfrecord", [example([png(picture())])])
    with pytest.raises(efx.EfxError, match=r"no bytes feature 'nope' \(bytes features: image\)"):
        efx.extract([records], str(tmp_path / "q.h5"), model=tiny_model, image_key="nope")


# 7. Letter case of extensions.


def test_member_extensions_compare_lower_cased_as_webdataset_does(tiny_model, tmp_path):
    """Cameras write .JPG: --image-key jpg lost the sample and --keep-columns txt wrote null
    captions, with exit 0 and no note."""
    pictures = [jpeg(picture(i)) for i in range(2)]
    shard = str(tmp_path / "upper.tar")
    with tarfile.open(shard, "w") as tar:
        for i, (image, caption) in enumerate((("000.JPG", "000.TXT"), ("001.jpg", "001.Txt"))):
            add(tar, image, pictures[i])
            add(tar, caption, f"caption {i}".encode())
    output = tmp_path / "o.parquet"
    embed([shard], output, tiny_model, image_key="jpg", keep_columns=("txt",))
    written = pq.read_table(str(output), columns=["path", "txt"]).to_pylist()
    assert written == [
        {"path": f"{shard}/000.JPG", "txt": "caption 0"},
        {"path": f"{shard}/001.jpg", "txt": "caption 1"},
    ]


# 8. A path is never a pattern.


@pytest.mark.parametrize("suffix", [".parquet", ""])
def test_an_output_named_with_glob_characters_is_cleaned_and_its_neighbours_untouched(
    tiny_model, tmp_path, suffix
):
    """`emb[v1].parquet` (or an .npy folder `npy[v1]`) overwritten: the earlier run's part
    files were left (pandas read stale rows); and a clean-up by pattern reached into
    `embv.parquet` beside it, deleting another output's files."""
    import pandas as pd

    three, one = tmp_path / "three", tmp_path / "one"
    three.mkdir(), one.mkdir()
    for i in range(3):
        picture(i).save(three / f"{i}.png")
    picture(3).save(one / "new.png")
    neighbour = tmp_path / f"embv{suffix}"  # what the pattern emb[v1] matches
    efx.extract([str(three)], str(neighbour), model=tiny_model, image_size=SIZE)  # one file
    before = sorted(os.listdir(neighbour))
    output = str(tmp_path / f"emb[v1]{suffix}")
    efx.extract([str(three)], output, model=tiny_model, image_size=SIZE, shard_size=1)
    efx.extract([str(one)], output, model=tiny_model, image_size=SIZE, overwrite=True)
    assert efx.load(output)[0] == [str(one / "new.png")]
    if suffix:
        assert len(pd.read_parquet(output)) == 1  # a reader of the folder sees 1 row
        assert [n for n in os.listdir(output) if n.endswith(".parquet")] == ["part-00000.parquet"]
    else:
        assert sorted(n for n in os.listdir(output) if n.startswith("embeddings-")) == [
            "embeddings-00000.npy"
        ]
    assert sorted(os.listdir(neighbour)) == before
    assert len(efx.load(str(neighbour))[0]) == 3 and len(efx.load(output)[0]) == 1


# 10. Tests write only below their own temporary folders.


FIXED = re.compile(r"^(/tmp|/var/tmp|/root|~)/[\w.-]")


def test_no_test_writes_to_a_fixed_path():
    """CI and the next machine have none of this machine's folders: a literal absolute path
    under /tmp (or the home folder) in a test is a test that passes only here."""
    import ast

    here = os.path.dirname(os.path.abspath(__file__))
    found = []
    for name in sorted(os.listdir(here)):
        if not name.endswith(".py"):
            continue
        with open(os.path.join(here, name), encoding="utf-8") as file:
            tree = ast.parse(file.read())
        for node in ast.walk(tree):
            text = node.value if isinstance(node, ast.Constant) else None
            if isinstance(text, str) and FIXED.match(text):
                found.append(f"{name}:{node.lineno}: {text}")
    assert found == []


def test_rows_of_several_images_per_record_keep_parts_merge_and_search_promises(
    tiny_model, tmp_path
):
    """The keys round 3 adds (FILE/N/I, FILE/ROW/I) through --shard I/N + efx merge (the same
    rows as one run), and `efx similar` taking such a key as its query."""
    pictures = [png(picture(i)) for i in range(4)]
    records = write_records(
        tmp_path / "multi.tfrecord", [example(pictures[:3]), example([pictures[3]])]
    )
    item = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    cells = [[{"bytes": pictures[1], "path": None}, {"bytes": pictures[2], "path": None}]]
    table = str(tmp_path / "hf.parquet")
    pq.write_table(pa.table({"images": pa.array(cells, pa.list_(item))}), table)
    sources_ = [records, table]
    whole = embed(sources_, tmp_path / "whole.h5", tiny_model)
    parts = [str(tmp_path / f"part{i}.h5") for i in range(2)]
    for i, part in enumerate(parts):
        efx.extract(sources_, part, model=tiny_model, image_size=SIZE, part=f"{i}/2")
    merged = str(tmp_path / "merged.h5")
    efx.merge(parts, merged)
    paths, rows = efx.load(merged)
    assert paths == list(whole) == [f"{records}/0/0", f"{records}/0/1", f"{records}/0/2",
                                     f"{records}/1", f"{table}/0/0", f"{table}/0/1"]  # fmt: skip
    np.testing.assert_allclose(rows, np.stack(list(whole.values())), rtol=0, atol=1e-6)
    (result,) = efx.similar(merged, [f"{records}/0/1"], k=1)
    assert result["in_output"] and result["hits"][0]["path"] == f"{table}/0/0"  # same picture
