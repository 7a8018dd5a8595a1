"""--engine ray: a local Ray instance (2 CPUs) runs the same extraction as the local engine, on
the same real images, broken ones included; outputs compared row by row."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile

import h5py
import numpy as np
import pytest
from conftest import EFX, SAMPLES, write_broken_images, write_good_images

import efx

# One test worker runs them all, so that they share the module's Ray instance (make test runs
# pytest-xdist with --dist loadgroup).
pytestmark = pytest.mark.xdist_group("ray")


@pytest.fixture(scope="module")
def ray_instance():
    """One local Ray instance for the module: efx uses a Ray that is already initialised (and
    leaves it running), as it would inside a Ray job."""
    ray = pytest.importorskip("ray", reason="Ray is an optional extra: pip install 'efx[ray]'")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture
def mixed_dir(good_dir):
    root, _ = good_dir
    broken = write_broken_images(root)
    return root, broken


def assert_same_output(local: str, remote: str, scale_tolerance: float = 1e-6) -> None:
    (local_paths, local_rows), (ray_paths, ray_rows) = efx.load(local), efx.load(remote)
    assert ray_paths == local_paths
    assert efx.writers.read_failures(remote) == efx.writers.read_failures(local)
    np.testing.assert_allclose(ray_rows, local_rows, rtol=0, atol=scale_tolerance)


def test_ray_engine_resumes_what_another_run_started(ray_instance, tiny_model, mixed_dir, tmp_path):
    """An HDF5 output that a local run began, finished by Ray: the rows, failures and reasons
    of one local run over all, and the output says Ray wrote it. (Each output format is written
    by a Ray run here: HDF5 by this test, .npy by the next, Parquet by the shards test; the
    writers are the local engine's, fed the same batches.)"""
    root, broken = mixed_dir
    whole = str(tmp_path / "whole.h5")
    efx.extract(root, whole, model=tiny_model, image_size=64, batch_size=4)
    paths = efx.load(whole)[0] + [f["path"] for f in efx.writers.read_failures(whole)]
    ordered = sorted(paths, key=lambda p: os.path.relpath(p, root))
    # An interrupted local run: the first five inputs done, the output not complete.
    partial = str(tmp_path / "partial.h5")
    efx.extract(ordered[:5], partial, model=tiny_model, image_size=64, batch_size=4)
    with h5py.File(partial, "r+") as file:
        file.attrs["complete"] = False
    summary = efx.extract(
        root, partial, model=tiny_model, image_size=64, batch_size=4, engine="ray", resume=True
    )
    assert (summary.engine, summary.resumed, summary.complete) == ("ray", 5, True)
    assert summary.failed == len(broken) and summary.embedded > 5
    assert_same_output(whole, partial)
    reasons = {os.path.basename(f["path"]): f["error"] for f in efx.writers.read_failures(partial)}
    assert reasons == broken
    assert efx.info(partial)["engine"] == "ray"


def test_ray_engine_updates_what_the_local_engine_wrote(
    ray_instance, tiny_model, mixed_dir, tmp_path
):
    """--update with Ray: an edited photo and a copy of it sorted first: the model (in Ray
    actors) embeds those bytes once; the result equals a fresh local run."""
    import shutil

    root, _ = mixed_dir
    output = str(tmp_path / "out")
    options = {"model": tiny_model, "image_size": 64, "batch_size": 4}
    efx.extract(root, output, **options)
    photo = next(p for p in efx.load(output)[0] if p.endswith(".jpg"))
    with open(photo, "ab") as file:  # new bytes (after the JPEG's end): another file to embed
        file.write(b"\0")
    shutil.copy(photo, os.path.join(root, "0-new.jpg"))
    summary = efx.extract(root, output, engine="ray", update=True, **options)
    assert (summary.engine, summary.computed, summary.new, summary.reused) == ("ray", 1, 1, 1)
    fresh = str(tmp_path / "fresh")
    efx.extract(root, fresh, **options)
    assert_same_output(fresh, output)


def test_a_model_error_on_a_ray_worker_reads_as_locally(ray_instance, tmp_path):
    import tensorflow as tf

    class Maps(tf.Module):  # feature maps, not a feature vector
        @tf.function(input_signature=[tf.TensorSpec([None, None, None, 3], tf.float32)])
        def __call__(self, images):
            return tf.nn.avg_pool2d(images, 4, 4, "VALID")

    model = str(tmp_path / "maps")
    tf.saved_model.save(Maps(), model)
    messages = []
    for engine in ("local", "ray"):
        with pytest.raises(efx.EfxError, match="is not an image feature-vector model") as error:
            efx.extract(SAMPLES, str(tmp_path / f"{engine}.h5"), model=model, image_size=32,
                        engine=engine)  # fmt: skip
        messages.append(str(error.value))
    assert messages[0] == messages[1]


def test_without_ray_the_engine_says_how_to_install_it(tiny_model, tmp_path):
    hide = "import sys; sys.modules['ray'] = None; from efx.cli import main; main()"
    result = subprocess.run(
        [sys.executable, "-c", hide, "extract", SAMPLES, str(tmp_path / "o.h5"), "-m", tiny_model,
         "--engine", "ray"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 1
    assert "pip install 'efx[ray]'" in result.stderr and "Traceback" not in result.stderr
    assert not os.path.exists(tmp_path / "o.h5")


def test_ray_address_needs_the_ray_engine(tmp_path):
    result = subprocess.run(
        [EFX, "extract", SAMPLES, str(tmp_path / "o.h5"), "--ray-address", "auto"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 1 and "--ray-address is for --engine ray" in result.stderr


@pytest.mark.parametrize(
    "address, message",
    [
        ("127.0.0.1:9", "efx: cannot reach the Ray cluster at 127.0.0.1:9: Connection refused"),
        ("ray://127.0.0.1:9", "efx: cannot reach the Ray cluster at ray://127.0.0.1:9"),
        ("head-node", "efx: --ray-address must be HOST:PORT, ray://HOST:PORT, auto or local"),
    ],
)
def test_an_unreachable_or_malformed_ray_address_fails_in_seconds(address, message, tmp_path):
    """Ray itself retries an address nothing answers at for minutes."""
    result = subprocess.run(
        [EFX, "extract", "--engine", "ray", "--ray-address", address, SAMPLES,
         str(tmp_path / "o.h5")],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 1, result.stderr
    assert result.stderr.startswith(message), result.stderr
    assert not os.path.exists(tmp_path / "o.h5")


def test_ray_workers_read_odd_files_and_every_kind_of_shard_as_the_local_engine(
    ray_instance, tiny_model, tmp_path, capsysbinary
):
    """One run of each engine over every kind of input, rows, order and failures compared:

    - odd files: the kinds fixed in the decode function reach Ray's actors too (Pillow's GIF and
      RLE BMP inside the graph, orientation from PNG/WebP/late JPEG EXIF, a thin strip padded, a
      frame bomb refused, a named pipe never opened);
    - shards, whose members workers read by their place in the shard: a tar (with a corrupt
      member and a sample without an image), a Parquet file (with a null cell, in row groups of
      3), a gzip'd TFRecord file;
    - the round-3 shards of tests/test_datasets_as_written.py: a member stored twice (the later
      copy), a ZLIB TFRecord file whose records hold several images, a Hugging Face list of
      images per row.

    Then the same run streamed to stdout (OUTPUT -) from Ray: the local rows, in order."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from test_datasets_as_written import add, example, picture, png, write_records
    from test_inputs import ODD_BUT_VALID, gif_frame_bomb
    from test_shards import photo, write_tar, write_tfrecord

    root = tmp_path / "odd"
    root.mkdir()
    names = [
        "transparent-logo.gif", "offset-frame.gif", "rle8.bmp", "rle4.bmp", "exif-6.png",
        "exif-8.webp", "exif-6-after-72kb-of-xmp.jpg", "animated.webp",
    ]  # fmt: skip
    for name in names:
        (root / name).write_bytes(ODD_BUT_VALID[name]())
    (root / "strip.png").write_bytes(_strip_png())
    (root / "frame-bomb.gif").write_bytes(gif_frame_bomb(10000))
    os.mkfifo(root / "pipe.jpg")

    images = [photo(i) for i in range(8)]
    shard, table, records = (str(tmp_path / n) for n in ("a.tar", "b.parquet", "c.tfrecord.gz"))
    samples = [(f"{i:04d}", {"jpg": data, "txt": b"x"}) for i, data in enumerate(images)]
    samples[2] = ("0002", {"jpg": images[2][:500]})
    samples[5] = ("0005", {"txt": b"no image"})
    write_tar(shard, samples)
    cells = pa.array([images[0], None, *images[1:6]], pa.binary())
    pq.write_table(pa.table({"jpg": cells}), table, row_group_size=3)
    write_tfrecord(records, images[3:], gz=True)

    pictures = [png(picture(i)) for i in range(4)]
    dup = str(tmp_path / "dup.tar")
    with tarfile.open(dup, "w") as tar:
        add(tar, "000.png", pictures[0])
        add(tar, "000.png", pictures[1])
        add(tar, "001.png", pictures[2])
    multi = write_records(
        tmp_path / "multi.tfrecord", [example(pictures[:3]), example([pictures[3]])], "ZLIB"
    )
    item = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    hf_cells = [[{"bytes": pictures[0], "path": None}, {"bytes": pictures[3], "path": None}], []]
    hf = str(tmp_path / "hf.parquet")
    pq.write_table(pa.table({"images": pa.array(hf_cells, pa.list_(item))}), hf)

    # (embedded, failed) of each source, as the local engine and Ray must both count them.
    expected = {
        str(root): (len(names) + 1, 2), shard: (6, 2), table: (6, 1), records: (5, 0),
        dup: (2, 0), multi: (4, 0), hf: (2, 1),
    }  # fmt: skip
    sources = list(expected)
    options = {"model": tiny_model, "image_size": 48, "resize": "pad", "batch_size": 4}
    outputs = {}
    for engine in ("local", "ray"):
        outputs[engine] = str(tmp_path / f"{engine}.parquet")
        summary = efx.extract(sources, outputs[engine], engine=engine, **options)
        assert summary.engine == engine
        paths = efx.load(outputs[engine])[0]
        failed = [f["path"] for f in efx.writers.read_failures(outputs[engine])]
        counted = {
            source: (
                sum(p.startswith(source + "/") for p in paths),
                sum(p.startswith(source + "/") for p in failed),
            )
            for source in sources
        }
        assert counted == expected
    assert_same_output(outputs["local"], outputs["ray"])
    assert [p for p in efx.load(outputs["ray"])[0] if p.startswith(dup)] == [
        f"{dup}/000.png",
        f"{dup}/001.png",
    ]
    capsysbinary.readouterr()
    efx.extract(sources, "-", engine="ray", **options)
    streamed = [json.loads(line) for line in capsysbinary.readouterr().out.splitlines()]
    paths, rows = efx.load(outputs["local"])
    assert [r["path"] for r in streamed if "error" not in r] == paths
    vectors = np.array([r["embedding"] for r in streamed if "error" not in r], np.float32)
    np.testing.assert_allclose(vectors, rows, rtol=0, atol=1e-6)
    assert sum("error" in r for r in streamed) == sum(f for _, f in expected.values())


def _strip_png() -> bytes:
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (2000, 1), "orange").save(buffer, "PNG")
    return buffer.getvalue()


def test_ray_workers_read_objects_in_a_bucket_themselves(ray_instance, tiny_model, tmp_path):
    """Sources in an S3 store (moto's server on 127.0.0.1): objects and a tar shard, read by the
    workers with the driver's storage options (the store's endpoint and keys given only there);
    rows, order and failures as the local engine writes them."""
    pytest.importorskip("s3fs")
    from servers import S3Server, filesystem

    server = S3Server()
    try:
        fs = filesystem(server)
        fs.mkdir("ray")
        root, _ = str(tmp_path / "photos"), write_broken_images(str(tmp_path / "photos"))
        write_good_images(root)
        with tarfile.open(tmp_path / "photos" / "00000.tar", "w") as tar:
            tar.add(os.path.join(SAMPLES, "chelsea.png"), "000000000.png")
        fs.put(root + "/", "ray/photos/", recursive=True)
        storage = {"endpoint_url": server.endpoint, "key": "testing", "secret": "testing"}
        outputs = {}
        for engine in ("local", "ray"):
            outputs[engine] = str(tmp_path / f"{engine}.h5")
            summary = efx.extract(
                ["s3://ray/photos/"], outputs[engine], model=tiny_model, image_size=64,
                batch_size=4, engine=engine, storage_options=storage,
            )  # fmt: skip
            assert summary.embedded >= 10 and summary.failed >= 4
        assert_same_output(outputs["local"], outputs["ray"])
    finally:
        from efx import remote

        remote.configure({})
        server.stop()
