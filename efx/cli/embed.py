"""The commands that run a model: extract, serve, bench, make-standin."""

from __future__ import annotations

import sys
from typing import Any

import click

from .. import timeline
from ..config import BACKENDS, DEFAULT_MAX_PIXELS, ENGINES, RESIZE_MODES
from ..errors import EfxError
from ..process import native_logs_hidden
from . import render
from .options import (
    backend_option,
    json_option,
    model_options,
    output_options,
    quiet_option,
    storage_option,
    verbose_option,
)


@click.command()
@click.argument("sources", nargs=-1, required=True, metavar="SOURCE...")
@click.argument("output")
@model_options
@click.option(
    "--resize",
    type=click.Choice(RESIZE_MODES),
    default="squash",
    show_default=True,
    help="squash: stretch to the square (the TF-Hub convention); crop: centre square of the "
    "shorter side; pad: fit inside the square, pad with black.",
)
@click.option(
    "--no-exif",
    "exif",
    flag_value=False,
    default=True,
    help="Ignore the EXIF orientation tag of JPEG, PNG and WebP files (by default a photo "
    "stored sideways with a rotation tag is embedded upright, as viewers show it).",
)
@click.option(
    "--max-pixels",
    type=int,
    default=DEFAULT_MAX_PIXELS,
    show_default=True,
    metavar="N",
    help="Refuse (as a failure, before decoding) images whose header claims more pixels: "
    "decompression bombs.",
)
@backend_option()
@click.option(
    "--engine",
    type=click.Choice(ENGINES),
    default="local",
    show_default=True,
    help="Where the work runs. local: this machine (tf.data). ray: a Ray cluster through Ray "
    "Data (efx[ray]); this process writes OUTPUT.",
)
@click.option(
    "--ray-address",
    default=None,
    metavar="ADDRESS",
    help="Ray cluster to join with --engine ray (e.g. ray://head:10001, or auto). Default: "
    "RAY_ADDRESS, else a Ray instance on this machine for the run.",
)
@output_options
@click.option(
    "--resume",
    is_flag=True,
    help="Continue an interrupted OUTPUT: keep its rows, embed only what is missing. Starts "
    "afresh if OUTPUT does not exist yet; does nothing if it is complete.",
)
@click.option(
    "--update",
    is_flag=True,
    help="Bring an existing OUTPUT in line with SOURCE now: keep the rows of unchanged files, "
    "reuse those of moved or copied ones, embed only new and edited files, drop deleted ones. "
    "Nothing changed: no model load. Starts OUTPUT if missing; continues an interrupted update.",
)
@click.option(
    "--checksum",
    is_flag=True,
    help="With --update: compare every file's bytes (SHA-256) instead of trusting an unchanged "
    "size and modification time, as rsync --checksum does. Reads every file.",
)
@click.option(
    "--retry-failed",
    is_flag=True,
    help="With --update: try unchanged files that failed before again (by default a failure "
    "is kept until the file changes).",
)
@click.option(
    "--shard",
    "part",
    default=None,
    metavar="I/N",
    help="Embed only part I of N (0 <= I < N), a contiguous block of the sorted input files "
    "(a shard is never split), for N machines running the same command; combine the parts "
    "with efx merge.",
)
@click.option(
    "--image-column",
    default=None,
    metavar="NAME",
    help="Parquet shards: the column of image bytes (a binary column, or a struct with a "
    "bytes field as Hugging Face's Image). Default: the only such column.",
)
@click.option(
    "--image-key",
    default=None,
    metavar="NAME",
    help="tar shards: the extension of each sample's image member (e.g. seg.png; default: the "
    "first of jpg jpeg png webp gif bmp jpe it has). TFRecord: the feature holding the image "
    "(e.g. image/encoded; default: the only one that holds image files).",
)
@click.option(
    "--keep-columns",
    default=None,
    metavar="NAMES",
    help="Parquet output: carry these source columns into it, beside each embedding (comma-"
    "separated): a Parquet shard's columns (caption,url), a WebDataset sample's members by "
    "extension (txt,json: their text), a TFRecord's bytes features (as text).",
)
@click.option(
    "-0",
    "--null",
    is_flag=True,
    help="Paths read from stdin (SOURCE -) are NUL-separated, as from find -print0.",
)
@click.option(
    "--strict", is_flag=True, help="Exit 1 if any image failed (after writing all the others)."
)
@json_option
@quiet_option
@verbose_option
@storage_option
def extract(
    sources: tuple[str, ...],
    output: str,
    strict: bool,
    as_json: bool,
    quiet: bool,
    verbose: bool,
    storage_options: dict[str, Any] | None,
    **settings: Any,
) -> None:
    """Embed every image of SOURCE... into OUTPUT, one row per image.

    SOURCE is a folder (searched recursively for .jpg .jpeg .jpe .png .gif .bmp .webp images
    and .tar .tgz .tar.gz .parquet .tfrecord(s) shards, in sorted order), an image file, a shard (a
    WebDataset tar, a Parquet file with an image column (or a list of images per row), a
    TFRecord file of tf.train.Example or SequenceExample, plain, GZIP or ZLIB: told by content;
    each image in it is a row named SHARD/KEY), or - to read such paths from
    stdin, one per line. OUTPUT ending
    in .h5 or .hdf5 is an HDF5 file; ending in .parquet, a folder of Parquet files that pandas,
    Polars, DuckDB and Hugging Face datasets read as one table; - streams the rows to stdout as
    they are computed (JSON Lines, or --format arrow with efx[arrow]; --json, --resume,
    --update, --shard and --overwrite need a file); anything else is a folder of .npy shards.

    A SOURCE may be a URL: s3://BUCKET/PREFIX/ or gs://… (walked as a folder is), or the URL of
    an image or shard (also https://); OUTPUT may be a folder of .npy shards or Parquet in a
    bucket (written locally, each file uploaded whole, the manifest last). Credentials as s3fs
    and gcsfs take them (AWS_*, AWS_ENDPOINT_URL, ~/.aws, Google's), or -S KEY=VALUE.

    Images that cannot be read or decoded are recorded as failures with a reason, and the run
    goes on. An existing OUTPUT is never replaced without --overwrite.

    \b
    Examples:
      efx extract photos/ embeddings.h5
      efx extract photos/ embeddings.h5 --update      # later: only what changed
      efx extract laion/ laion.h5                     # img2dataset's .tar shards
      efx extract s3://bucket/photos/ s3://bucket/emb.parquet
      efx extract --model b0 a.jpg b.png more/ out.h5
      find /data -name '*.jpg' -print0 | efx extract -0 - shards/
      efx extract --json --quiet photos/ out.h5 | jq .images_per_second
      efx extract photos/ - | jq -c '{path, n: (.embedding | length)}'
      efx extract --engine ray --ray-address auto /shared/photos /shared/out.h5
    """
    timeline.mark("command parsed")
    from ..api import extract as run_extract
    from ..process import Interrupted

    stdin = _stdin(sources, output, as_json, quiet)
    try:
        with native_logs_hidden(verbose):
            summary = run_extract(
                sources, output, stdin=stdin, progress=not quiet and sys.stderr.isatty(),
                on_note=None if quiet else render.note, verbose=verbose,
                storage_options=storage_options, **settings,
            )  # fmt: skip
    except Interrupted as stop:
        render.say_interrupted(stop, settings["resume"] or settings["update"], "-" in sources)
        sys.exit(render.EXIT_INTERRUPTED)
    render.show(summary, as_json)
    if not quiet:
        render.report(summary)
    if strict and summary.failed:
        raise EfxError(f"{summary.failed} image(s) failed (--strict); the others were written")


def _stdin(sources: tuple[str, ...], output: str, as_json: bool, quiet: bool) -> Any:
    """Standard input when a SOURCE is - (said at a terminal); --json and OUTPUT - refused
    together (both want stdout)."""
    if output == "-" and as_json:
        raise EfxError(
            "--json prints a summary on stdout, where OUTPUT - writes the rows: leave out "
            "--json (the summary is on stderr), or write OUTPUT to a file"
        )
    stdin = sys.stdin.buffer if "-" in sources else None
    if stdin is not None and stdin.isatty() and not quiet:
        render.say("reading image paths from stdin, one per line (end with Ctrl-D)")
    return stdin


@click.command()
@model_options
@backend_option()
@click.option(
    "--socket",
    "socket_path",
    default=None,
    metavar="PATH",
    help="Where to listen. Default: EFX_SOCKET, else $XDG_RUNTIME_DIR/efx-serve.sock, else "
    "/tmp/efx-UID/serve.sock. Runs look there (set EFX_SOCKET=PATH for another place).",
)
@verbose_option
def serve(socket_path: str | None, verbose: bool, **settings: Any) -> None:
    """Keep a model loaded, so that efx extract and efx similar start in a second.

    A fresh efx process spends seconds before its first embedding (importing TensorFlow,
    loading and compiling the model, preparing the decoders). efx serve pays that once and
    waits on a Unix socket (no network port; only your user can connect). While it runs,
    efx extract and efx similar with the same model and settings send it their images and
    write their outputs themselves: the same rows, bit for bit, as without it. A run whose
    model or settings differ, or a server of another efx version, is not used (the run says
    why and loads the model itself). EFX_SOCKET= (empty) turns its use off.

    \b
    Examples:
      efx serve &                                   # B6, as efx extract's default
      efx extract new.jpg out.h5                    # then: about a second
      efx similar out.h5 query.jpg -k 5
      efx serve -m ./my-model --precision bfloat16  # runs must ask for the same
    """
    from ..serve import run as run_server

    with native_logs_hidden(verbose):
        run_server(socket_path, render.say, **settings)


@click.command()
@click.argument("sources", nargs=-1, metavar="[SOURCE]...")
@model_options
@backend_option(
    [*BACKENDS, "all"], "all",
    "What runs the model; all: TensorFlow and, on a CPU, OpenVINO, side by side.",
)  # fmt: skip
@click.option(
    "--count",
    type=int,
    default=48,
    show_default=True,
    help="Photos to generate when no SOURCE is given.",
)
@click.option(
    "--size",
    default="1024x768",
    show_default=True,
    metavar="WxH",
    help="Size of the generated photos (try 4000x3000 for 12-megapixel phone photos).",
)
@click.option("--rounds", type=int, default=2, show_default=True, help="Alternating rounds.")
@json_option
@verbose_option
def bench(
    sources: tuple[str, ...],
    backend: str,
    count: int,
    size: str,
    rounds: int,
    as_json: bool,
    verbose: bool,
    **settings: Any,
) -> None:
    """Measure images/s of the model alone and of the whole extract pipeline, side by side.

    The model alone runs on ready tensors; the pipeline reads, decodes, resizes, embeds and
    writes real files (SOURCE folders or files, - for paths on stdin, else generated photos).
    Their ratio is how much of the model's speed extraction keeps; use it to tune --batch-size
    and --precision. By default every backend that can run here is measured, alternating, so
    pick the fastest.

    \b
    Examples:
      efx make-standin .cache/standin-b6 && efx bench -m .cache/standin-b6
      efx bench -m .cache/standin-b6 --size 4000x3000 --count 24
      efx bench -m b6 --precision bfloat16 my-photos/
      find photos -name '*.jpg' | head -100 | efx bench -m b6 -
    """
    from ..bench import bench as run_bench

    try:
        width, height = (int(v) for v in size.lower().split("x"))
    except ValueError:
        raise EfxError(f"--size must be WIDTHxHEIGHT, e.g. 1024x768. Received: {size!r}") from None
    with native_logs_hidden(verbose):
        report = run_bench(
            sources, backend=backend, count=count, size=(width, height), rounds=rounds,
            stdin=sys.stdin.buffer if "-" in sources else None,
            progress=None if as_json else render.bench_round, **settings,
        )  # fmt: skip
    render.show(report, as_json, lambda: render.bench(report))


@click.command("make-standin")
@click.argument("folder")
@click.option(
    "--arch",
    default="b6",
    show_default=True,
    type=click.Choice([f"b{i}" for i in range(8)]),
    help="EfficientNet variant whose architecture (and compute) to copy.",
)
@verbose_option
def make_standin(folder: str, arch: str, verbose: bool) -> None:
    """Build the offline STAND-IN model in FOLDER: the TF-Hub module's interface and architecture
    with random weights, for demos and benchmarks without internet. Its embeddings mean nothing,
    and every output made with it says so.
    """
    from ..standin import build_standin

    with native_logs_hidden(verbose):
        build_standin(folder, arch)
    render.say(f"stand-in EfficientNet-{arch.upper()} (random weights) written to {folder}")


COMMANDS = [extract, serve, bench, make_standin]
