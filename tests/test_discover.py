"""Discovery: which files, in which order, from folders, files and stdin. No TensorFlow."""

from __future__ import annotations

import io
import os

import pytest
from conftest import SAMPLES, assert_user_error, run_cli

from efx.discover import check_sources, find_images, walk_images
from efx.errors import EfxError


def touch(root, rel: str) -> None:
    path = os.path.join(root, rel)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    open(path, "wb").close()


def test_walk_is_recursive_sorted_and_case_insensitive(tmp_path):
    for rel in [
        "b.JPG",
        "a/z.png",
        "a/b/c.webp",
        "a.jpeg",
        "x.gif",
        "y.BMP",
        "notes.txt",
        "raw.tiff",
        "c.Png",
    ]:
        touch(tmp_path, rel)
    assert walk_images(str(tmp_path)) == sorted(
        ["a.jpeg", "a/b/c.webp", "a/z.png", "b.JPG", "c.Png", "x.gif", "y.BMP"]
    )


def test_paths_are_the_source_as_given_joined_with_the_relative_path(tmp_path, monkeypatch):
    touch(tmp_path, "photos/sub/1.jpg")
    monkeypatch.chdir(tmp_path)
    assert find_images(["photos/"]) == ["photos/sub/1.jpg"]
    assert find_images(["photos"]) == ["photos/sub/1.jpg"]
    assert find_images([str(tmp_path / "photos")]) == [str(tmp_path / "photos/sub/1.jpg")]


def test_symlink_loops_are_walked_once(tmp_path):
    touch(tmp_path, "root/a/1.jpg")
    os.symlink("..", tmp_path / "root" / "a" / "loop")
    assert walk_images(str(tmp_path / "root")) == ["a/1.jpg"]


def test_stdin_lists_keep_their_order_and_skip_blank_lines():
    stream = io.BytesIO(b"z.jpg\r\n\nb c.png\n  \na.gif")
    assert find_images(["-"], stdin=stream) == ["z.jpg", "b c.png", "a.gif"]


def test_nul_separated_stdin_allows_newlines_in_names():
    stream = io.BytesIO(b"one\nline.jpg\0two.png\0")
    assert find_images(["-"], stdin=stream, null=True) == ["one\nline.jpg", "two.png"]


def test_missing_source_is_an_error_before_any_work(tmp_path):
    with pytest.raises(EfxError, match="source not found"):
        check_sources([str(tmp_path / "nope")])
    os.symlink(tmp_path / "nowhere", tmp_path / "dangling")
    with pytest.raises(EfxError, match="broken symlink"):
        check_sources([str(tmp_path / "dangling")])
    with pytest.raises(EfxError, match="only once"):
        check_sources(["-", "-"])


def test_walks_take_shards_by_their_names_too(tmp_path):
    """WebDataset, Parquet and TFRecord names (TFDS's numbered ones included) are walked with
    the images; other files are not."""
    names = ["00000.tar", "a.TGZ", "b.tar.gz", "c.parquet", "d.tfrecord", "e.tfrecords",
             "f.tfrecord.gz", "mnist-train.tfrecord-00000-of-00004", "g.jpg", "h.json",
             "i.txt", "j.tar.bz2"]  # fmt: skip
    for name in names:
        (tmp_path / name).write_bytes(b"x")
    assert walk_images(str(tmp_path)) == sorted(names[:9])


def test_image_bytes_on_stdin_instead_of_paths_is_a_clear_error(tmp_path):
    with open(os.path.join(SAMPLES, "coffee.jpg"), "rb") as image:
        data = image.read()  # holds NUL bytes
    result = run_cli("extract", "-", str(tmp_path / "o.h5"), input=data)
    assert_user_error(result, "stdin line 1 holds a NUL byte: SOURCE - reads paths")
    assert not os.path.exists(tmp_path / "o.h5")
