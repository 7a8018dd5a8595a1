"""efx similar and efx duplicates: exact answers on outputs whose embeddings are known, real
query images embedded with a real model, both formats, merged outputs, failures, missing
files, and the contact sheet rendered by a real browser."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from conftest import SAMPLES, assert_user_error, run_cli, run_efx

import efx
from efx import writers

OUTPUTS = {"hdf5": "out.h5", "npy": "shards", "parquet": "out.parquet"}
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def known_output(
    folder, fmt: str, missing: bool = False, standin: bool = False, handle: str | None = None
) -> tuple[str, list[str]]:
    """Six rows whose neighbours are known: 0~1 (noise), 3~4 (a scaled copy), 2 and 5 alone;
    real image files (or, with `missing`, row 1's file deleted since) and one failure."""
    rng = np.random.default_rng(7)
    base = np.abs(rng.standard_normal((4, 32))).astype(np.float32)
    base[:, :16] *= [[1], [0], [1], [0]]  # make the four bases far apart
    base[:, 16:] *= [[0], [1], [1], [0]]
    base[3] = rng.standard_normal(32)
    embeddings = np.stack([base[0], base[0] + 0.01, base[1], base[2], 3 * base[2], base[3]]).astype(
        np.float32
    )
    from PIL import Image

    photos = os.path.join(folder, "photos")
    os.makedirs(photos, exist_ok=True)
    paths = []
    for i, color in enumerate(["red", "red", "blue", "green", "green", "gray"]):
        path = os.path.join(photos, f"img-{i}.png")
        Image.new("RGB", (64, 48), color).save(path)
        paths.append(path)
    if missing:
        os.remove(paths[1])
    output = os.path.join(folder, OUTPUTS[fmt])
    attrs = {"model": "known", "feature_dim": 32, "image_size": 8, "standin": standin}
    if handle:
        attrs["model_handle"] = handle
    writer = writers.open_writer(fmt, output, attrs, inputs=paths, shard_size=4)
    writer.write(paths[:3], embeddings[:3])
    writer.fail(os.path.join(photos, "broken.jpg"), "truncated or corrupt JPEG")
    writer.write(paths[3:], embeddings[3:])
    writer.close()
    return output, paths


@pytest.fixture(params=sorted(OUTPUTS))
def fmt(request):
    return request.param


def test_duplicates_groups_exactly_the_pairs_above_the_threshold(fmt, tmp_path):
    output, paths = known_output(str(tmp_path), fmt)
    report = efx.duplicates(output, threshold=0.99)
    assert report["threshold"] == 0.99 and report["rows"] == 6
    groups = [[m["path"] for m in g["members"]] for g in report["groups"]]
    assert sorted(groups) == [[paths[0], paths[1]], [paths[3], paths[4]]]
    scaled = next(g for g in report["groups"] if g["members"][0]["path"] == paths[3])
    assert scaled["members"][1]["similarity"] == pytest.approx(1.0, abs=1e-6)
    json.dumps(report)  # plain data


def test_similar_ranks_rows_by_cosine_and_leaves_the_query_out(fmt, tmp_path):
    output, paths = known_output(str(tmp_path), fmt)
    (result,) = efx.similar(output, [paths[3]], k=3)
    assert result["in_output"] and result["error"] is None
    hits = result["hits"]
    assert [h["rank"] for h in hits] == [1, 2, 3]
    assert hits[0]["path"] == paths[4] and hits[0]["similarity"] == pytest.approx(1.0, abs=1e-6)
    assert paths[3] not in [h["path"] for h in hits]
    sims = [h["similarity"] for h in hits]
    assert sims == sorted(sims, reverse=True)
    vectors = efx.load(output)[1]
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    expected = unit @ unit[3]
    assert sims[1] == pytest.approx(sorted(np.delete(expected, [3, 4]))[-1], abs=1e-5)


def test_a_query_image_outside_the_output_is_embedded_with_its_model(
    good_dir, tiny_model, tmp_path
):
    source, rels = good_dir
    output = str(tmp_path / "o.h5")
    efx.extract(source, output, model=tiny_model, image_size=48)
    outside = str(tmp_path / "elsewhere.jpg")
    shutil.copy(os.path.join(source, "a_cat.jpg"), outside)  # same bytes, not in OUTPUT
    (result,) = efx.similar(output, [outside], k=2)
    assert not result["in_output"] and result["error"] is None
    assert result["hits"][0]["path"] == os.path.join(source, "a_cat.jpg")
    assert result["hits"][0]["similarity"] == pytest.approx(1.0, abs=1e-5)


def test_a_query_whose_model_cannot_be_loaded_is_refused_clearly(fmt, tmp_path, good_dir):
    output, _ = known_output(str(tmp_path), fmt, handle=str(tmp_path / "deleted-model"))
    image = os.path.join(good_dir[0], "a_cat.jpg")
    with pytest.raises(efx.EfxError, match="cannot embed the query image.*deleted-model"):
        efx.similar(output, [image])
    unknown, _ = known_output(str(tmp_path / "unknown"), fmt)  # records no model at all
    with pytest.raises(efx.EfxError, match="does not record the model it was made with"):
        efx.similar(unknown, [image])


def test_queries_without_a_vector_say_why_and_exit_1_after_the_others(fmt, tmp_path):
    output, paths = known_output(str(tmp_path), fmt)
    broken = os.path.join(os.path.dirname(paths[0]), "broken.jpg")
    result = run_efx("similar", output, paths[0], broken, "nowhere.jpg", "-k", "1")
    assert result.returncode == 1
    query, rank, hit, similarity = result.stdout.rstrip("\n").split("\t")
    assert (query, rank, hit) == (paths[0], "1", paths[1]) and float(similarity) > 0.999
    assert f"efx: {broken}: it could not be embedded when OUTPUT was made: truncated" in (
        result.stderr
    )
    assert "efx: nowhere.jpg: not in OUTPUT, and no such file" in result.stderr
    assert "Traceback" not in result.stderr
    alone = run_efx("similar", output, "nowhere.jpg", "nowhere.jpg")  # no query has a vector
    assert alone.returncode == 1 and alone.stdout == "", alone.stderr
    assert alone.stderr.count("efx: nowhere.jpg: not in OUTPUT, and no such file") == 2


def test_missing_files_are_marked_not_fatal(tmp_path):
    output, paths = known_output(str(tmp_path), "hdf5", missing=True)
    result = run_efx("duplicates", output, "--threshold", "0.99")
    assert result.returncode == 0, result.stderr
    assert f"\t{paths[1]}\tmissing\n" in result.stdout
    (report,) = efx.similar(output, [paths[0]], k=1)
    assert report["hits"][0]["path"] == paths[1] and report["hits"][0]["exists"] is False
    assert run_efx("similar", output, paths[0], "-k", "1").stdout.endswith("\tmissing\n")


def test_empty_output(fmt, tmp_path):
    output = str(tmp_path / OUTPUTS[fmt])
    writers.open_writer(fmt, output, {"feature_dim": 8}).close()
    assert efx.duplicates(output)["groups"] == []
    result = run_efx("duplicates", output)
    assert result.returncode == 0 and "0 group(s) of near-duplicates" in result.stderr


def test_a_merged_output_is_searched_like_one_run(tiny_model, good_dir, tmp_path):
    source, _ = good_dir
    parts = [str(tmp_path / f"p{i}.h5") for i in range(2)]
    for i, part in enumerate(parts):
        efx.extract(source, part, model=tiny_model, image_size=48, part=f"{i}/2")
    whole = str(tmp_path / "whole")
    efx.merge(parts, whole)
    single = str(tmp_path / "single.h5")
    efx.extract(source, single, model=tiny_model, image_size=48)
    assert efx.duplicates(whole, 0.999) == efx.duplicates(single, 0.999)
    query = os.path.join(source, "a_cat.jpg")
    assert efx.similar(whole, [query]) == efx.similar(single, [query])


@pytest.mark.parametrize(
    "argv, message",
    [
        (["similar", "{out}", "{q}", "-k", "0"], "-k must be a positive integer. Received: 0"),
        (["duplicates", "{out}", "--threshold", "0"], "--threshold must be in (0, 1]"),
        (["duplicates", "{out}", "--threshold", "1.5"], "--threshold must be in (0, 1]"),
        (["duplicates", "{tmp}/none.h5"], "output not found"),
        (["duplicates", "{out}", "--html", "{tmp}/no/d.html"], "the folder for --html does not"),
        (["similar", "{out}", "{q}", "--html", "{tmp}"], "is a folder; name the page's file"),
    ],
)
def test_bad_values_are_refused_with_the_value_received(tmp_path, argv, message):
    output, paths = known_output(str(tmp_path), "hdf5")
    subs = {"{out}": output, "{q}": paths[0], "{tmp}": str(tmp_path)}
    for key, value in subs.items():
        argv = [arg.replace(key, value) for arg in argv]
    assert_user_error(run_cli(*argv), message)
    assert run_cli("duplicates", output, "--threshold", "high").exit_code == 2


def test_html_needs_pillow_and_says_how_to_install(tmp_path):
    output, _ = known_output(str(tmp_path), "hdf5")
    code = "import sys; sys.modules['PIL'] = None; from efx.cli import main; main()"
    html = str(tmp_path / "d.html")
    result = subprocess.run(
        [sys.executable, "-c", code, "duplicates", output, "--html", html],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 1
    assert "efx: --html needs Pillow to make thumbnails: pip install pillow" in (result.stderr)


def render(page: str, tmp_path, name: str) -> tuple[dict[str, str], str]:
    """Open `page` in headless Chromium: the body's data attributes after load (the page counts
    its images and those that did not render), and a screenshot's path."""
    if CHROMIUM is None:
        if os.environ.get("CI"):
            pytest.fail("Chromium is missing (make test installs it: apt-get install chromium)")
        pytest.skip("Chromium is not installed (apt-get install chromium)")
    args = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
            "--window-size=1100,900", f"file://{page}"]  # fmt: skip
    dom = subprocess.run([*args[:-1], "--dump-dom", args[-1]], capture_output=True, text=True,
                         timeout=120).stdout  # fmt: skip
    body = dom[dom.index("<body") : dom.index(">", dom.index("<body"))]
    attributes = dict(
        part.split("=", 1) for part in body.replace('"', "").split()[1:] if "=" in part
    )
    shot = str(tmp_path / f"{name}.png")
    subprocess.run([*args[:-1], f"--screenshot={shot}", args[-1]], capture_output=True,
                   timeout=120)  # fmt: skip
    return attributes, shot


def test_contact_sheets_render_every_thumbnail_in_a_real_browser(tmp_path):
    output, paths = known_output(str(tmp_path), "npy", missing=True)
    duplicates_page = str(tmp_path / "dupes.html")
    result = run_efx("duplicates", output, "--threshold", "0.99", "--html", duplicates_page)
    assert result.returncode == 0, result.stderr
    report = efx.duplicates(output, 0.99)
    members = [m for g in report["groups"] for m in g["members"]]
    attributes, shot = render(duplicates_page, tmp_path, "dupes")
    assert attributes["data-thumbnails"] == str(sum(m["exists"] for m in members))
    assert attributes["data-broken"] == "0"
    assert os.path.getsize(shot) > 10_000
    with open(duplicates_page, encoding="utf-8") as file:
        html = file.read()
    assert html.count("file missing") == 1  # row 1's file, deleted since
    assert 'src="file:' not in html and "data:image/jpeg;base64," in html  # self-contained

    similar_page = str(tmp_path / "similar.html")
    assert run_efx("similar", output, paths[0], "-k", "3", "--html", similar_page).returncode == 0
    attributes, shot = render(similar_page, tmp_path, "similar")
    assert attributes["data-thumbnails"] == "3" and attributes["data-broken"] == "0"  # 1 gone


def test_an_output_of_the_stand_in_says_its_similarities_mean_nothing(tmp_path):
    output, paths = known_output(str(tmp_path), "hdf5", standin=True)
    page = str(tmp_path / "d.html")
    result = run_efx("duplicates", output, "--html", page)
    assert "efx: WARNING: OUTPUT was made with the offline STAND-IN (random weights)" in (
        result.stderr
    )
    with open(page, encoding="utf-8") as file:
        assert "offline STAND-IN (random weights)" in file.read()
    plain, plain_paths = known_output(str(tmp_path / "plain"), "hdf5")
    result = run_efx("similar", plain, plain_paths[0])
    assert result.returncode == 0 and "STAND-IN" not in result.stderr


def test_an_output_too_big_for_memory_is_refused_before_reading(tmp_path, monkeypatch):
    """On a machine whose memory cannot hold the embeddings (simulated: 4 KiB of it)."""
    output, _ = known_output(str(tmp_path), "hdf5")
    monkeypatch.setattr(os, "sysconf", lambda name: 1 if name == "SC_PHYS_PAGES" else 4096)
    refused = "holds the embeddings in memory: 6 rows x 32 floats.*use the index"
    with pytest.raises(efx.EfxError, match=refused):
        efx.duplicates(output, method="exact")
    # The index reads a block at a time: the same groups as on a machine with the memory.
    found = efx.duplicates(output, method="index")["groups"]
    monkeypatch.undo()
    expected = efx.duplicates(output, method="exact")["groups"]
    assert len(expected) == 2
    assert [[m["path"] for m in g["members"]] for g in found] == [
        [m["path"] for m in g["members"]] for g in expected
    ]


def test_a_thumbnail_shows_what_efx_embeds_and_never_waits_on_a_pipe(tmp_path):
    import base64
    import io

    from PIL import Image

    from efx import sheet

    def pixels(data_url: str) -> np.ndarray:
        jpeg = base64.b64decode(data_url.split(",", 1)[1])
        return np.asarray(Image.open(io.BytesIO(jpeg)).convert("RGB"), np.float32)

    upright = Image.open(os.path.join(SAMPLES, "chelsea.png")).convert("RGB")
    upright.save(tmp_path / "upright.png")
    tags = Image.Exif()
    tags[0x0112] = 6  # PNG eXIf: efx embeds it upright, the page shows it upright
    upright.transpose(Image.Transpose.ROTATE_90).save(tmp_path / "sideways.png", exif=tags)
    sideways, plain = (
        pixels(sheet.thumbnail(str(tmp_path / "sideways.png"))),
        pixels(sheet.thumbnail(str(tmp_path / "upright.png"))),
    )
    assert sideways.shape == plain.shape and np.abs(sideways - plain).mean() < 3

    output, paths = known_output(str(tmp_path), "hdf5")
    os.remove(paths[1])
    os.mkfifo(paths[1])  # a row's file is now a named pipe: shown as such, not waited on
    page = str(tmp_path / "dupes.html")
    result = run_efx("duplicates", output, "--threshold", "0.99", "--html", page, timeout=60)
    assert result.returncode == 0, result.stderr
    with open(page, encoding="utf-8") as file:
        assert file.read().count("cannot be shown") == 1


def test_similar_exits_1_when_a_query_has_no_hits_as_its_help_says(tmp_path):
    """An OUTPUT of one row queried by that row: no other row, so no hits. efx printed
    nothing and exited 0."""
    from PIL import Image

    path = str(tmp_path / "only.png")
    Image.new("RGB", (16, 16), "red").save(path)
    output = str(tmp_path / "one.h5")
    attrs = {"model": "known", "feature_dim": 4, "image_size": 8, "standin": False}
    writer = writers.open_writer("hdf5", output, attrs, inputs=[path])
    writer.write([path], np.ones((1, 4), np.float32))
    writer.close()
    result = run_cli("similar", output, path)
    assert result.exit_code == 1 and result.stdout == ""
    assert f"efx: {path}: no hits: OUTPUT holds no other row" in result.stderr
