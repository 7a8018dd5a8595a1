"""The `efx` command: parse flags, call the library, turn EfxError into `efx: message` + exit 1.

No pipeline logic lives here, and nothing here imports TensorFlow: `efx --help` and `efx info`
answer at once.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shlex
import sys
from collections.abc import Callable
from typing import Any

import click

from . import timeline
from .config import (
    BACKENDS,
    DEFAULT_MAX_PIXELS,
    DEFAULT_SHARD_SIZE,
    ENGINES,
    FORMATS,
    PRECISIONS,
    RESIZE_MODES,
)
from .errors import EfxError
from .names import escape, to_json
from .process import native_logs_hidden

EXIT_INTERRUPTED = 130


class _UserError(click.ClickException):
    def show(self, file: Any = None) -> None:
        click.echo(f"efx: {self.format_message()}", err=True)


# A reader that stopped reading (`efx … | head -1`): as the shell reports a command stopped by
# SIGPIPE (128 + 13). Whatever else the command was asked for (an --html page, an OUTPUT file)
# is still written.
EXIT_READER_GONE = 141
_reader_gone = False
_PIECE = 1 << 16  # a Linux pipe's buffer


class _Group(click.Group):
    def invoke(self, ctx: click.Context) -> Any:
        global _reader_gone
        _reader_gone = False  # one command's reader (the CLI runs in-process in tests)
        try:
            result = super().invoke(ctx)
        except EfxError as error:
            raise _UserError(str(error)) from None
        except KeyboardInterrupt:  # extract says more (_say_interrupted); the others, this
            click.echo("efx: interrupted", err=True)
            ctx.exit(EXIT_INTERRUPTED)
        except BrokenPipeError:  # OUTPUT - (or a line) met a closed pipe: the run has stopped
            _stdout_closed()
            ctx.exit(EXIT_READER_GONE)
        if _reader_gone:
            ctx.exit(EXIT_READER_GONE)
        return result


def _show(result: Any, as_json: bool, text: Callable[[], None] | None = None) -> None:
    """A command's result on stdout: with --json one JSON object (`result`, or its
    `to_dict()`), and nothing else there; otherwise the command's own lines (`text`), if any."""
    if as_json:
        _print(to_json(result.to_dict() if hasattr(result, "to_dict") else result))
    elif text is not None:
        text()


def _print(text: str) -> None:
    """A line on stdout. Once the reader has gone (`| head`), the rest is dropped quietly and
    the command carries on with what else it was asked to do, then exits 141."""
    global _reader_gone
    if _reader_gone:
        return
    try:
        # In pieces no larger than a pipe's buffer: a single large write into a pipe whose
        # reader has gone can end as a short write without an error (a --json of 150 KB into
        # `head -c 50` exited 0); the next piece then fails as it should.
        for start in range(0, len(text), _PIECE):
            click.echo(text[start : start + _PIECE], nl=False)
        click.echo("")
    except BrokenPipeError:
        _reader_gone = True
        _stdout_closed()


def _stdout_closed() -> None:
    """Point stdout at /dev/null, so that nothing flushed later (at exit) meets the closed pipe:
    no "Exception ignored ... BrokenPipeError" line."""
    with contextlib.suppress(OSError, ValueError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)


def run() -> None:
    """The `efx` command. Once the command is done (its outputs closed, its lines flushed), the
    process leaves without Python's and the native libraries' teardown: TensorFlow's and
    OpenVINO's took about 1.2 s of every run that loaded a model (README: Start-up, measured), and
    after a failed HDF5 write (disk full) the HDF5 library retries the flush at exit and can
    crash (HDF5 1.14, h5py 3.14). The exit status is the one the command was going to have."""
    code: Any = 0
    timeline.mark("started")
    try:
        main()
    except SystemExit as done:
        code = done.code
    timeline.mark("finished")
    timeline.report()
    if code is not None and not isinstance(code, int):  # sys.exit("message"): Python prints it
        sys.exit(code)
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    logging.shutdown()  # (flushes any handler a library added)
    os._exit(code or 0)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="efx", prog_name="efx")
def main() -> None:
    """efx: image folders in, one EfficientNet embedding per image out (HDF5, Parquet, .npy
    shards, or a stream on stdout).

    \b
    Quick start:
      efx extract photos/ embeddings.h5             # walk photos/, write HDF5
      efx extract photos/ embeddings.parquet        # or Parquet (pandas, Polars, DuckDB)
      efx info embeddings.h5                        # what is inside
      efx similar embeddings.h5 photos/cat.jpg      # the images nearest one
      efx duplicates embeddings.h5 --html d.html    # near-duplicates, as a page
      find . -name '*.jpg' -print0 | efx extract -0 - shards/
      efx extract photos/ - | jq -c .path           # rows to stdout, as JSON Lines
      efx serve &                                   # keep the model loaded: runs start at once

    Run `efx COMMAND --help` for each command's options.
    """


# Options shared between commands, declared once. Their names are efx.config.Settings' fields.


def _options(*decorators: Callable[[Any], Any]) -> Callable[[Any], Any]:
    def apply(command: Any) -> Any:
        for decorator in reversed(decorators):
            command = decorator(command)
        return command

    return apply


model_options = _options(
    click.option(
        "--model", "-m", envvar="EFX_MODEL", default=None, metavar="MODEL",
        help="Short name (b0 ... b7), TF-Hub/Kaggle URL, SavedModel folder or .tar.gz of one. "
        "Default: EfficientNet-B6 feature vectors from TF-Hub (env: EFX_MODEL). Offline, "
        "`efx make-standin` builds a labelled random-weight stand-in.",
    ),
    click.option(
        "--image-size", type=int, default=None, metavar="PX",
        help="Square input size. Default: the model's own (528 for B6, and for models that "
        "accept any size).",
    ),
    click.option(
        "--batch-size", "-b", type=int, default=None, metavar="N",
        help="Images per model call. Default: 8 on CPU (OpenVINO: no more than the images to "
        "embed; efx serve: 1), 32 on GPU.",
    ),
    click.option(
        "--precision", type=click.Choice(PRECISIONS), default="float32", show_default=True,
        help="Compute precision: bfloat16 on CPUs that have it (about 1.8x faster with "
        "OpenVINO), float16 on GPUs; embeddings stay within cosine 0.999 of float32.",
    ),
)  # fmt: skip

output_options = _options(
    click.option(
        "--format", type=click.Choice(FORMATS), default=None,
        help="Output format. Default: jsonl for OUTPUT - (stdout; or arrow), hdf5 if OUTPUT "
        "ends in .h5/.hdf5, parquet (a folder of part-NNNNN.parquet files) if it ends in "
        ".parquet, else npy.",
    ),
    click.option(
        "--shard-size", type=int, default=None, metavar="N",
        help=f"Rows per .npy shard or Parquet file. Default: {DEFAULT_SHARD_SIZE}; --update and "
        "--resume keep OUTPUT's own.",
    ),
    click.option("--overwrite", is_flag=True, help="Replace an existing OUTPUT."),
)  # fmt: skip


def _storage_options(ctx: click.Context, param: click.Parameter, values: tuple[str, ...]) -> None:
    from . import remote

    if values:
        remote.configure(dict(remote.parse_option(value) for value in values))


storage_option = click.option(
    "--storage-option", "-S", multiple=True, metavar="KEY=VALUE", expose_value=False,
    callback=_storage_options,
    help="For s3:// gs:// https:// URLs: an option of their fsspec filesystem (s3fs, gcsfs, "
    "HTTP), VALUE as JSON or text; repeatable. E.g. -S endpoint_url=http://127.0.0.1:9000 "
    "-S anon=true. Credentials and endpoints are otherwise taken as those libraries take them "
    "(AWS_* variables, AWS_ENDPOINT_URL, ~/.aws, Google's default credentials).",
)  # fmt: skip

backend_option = click.option(
    "--backend",
    type=click.Choice(BACKENDS),
    default="auto",
    show_default=True,
    help="What runs the model. auto: OpenVINO on a CPU when installed (efx[openvino]) and able "
    "to convert the model, 1.4x (AVX-512) to 2.3x (AVX2) TensorFlow's speed in float32; "
    "TensorFlow otherwise and on GPUs.",
)

json_option = click.option(
    "--json", "as_json", is_flag=True,
    help="Print one JSON object on stdout (and nothing else there).",
)  # fmt: skip
quiet_option = click.option(
    "--quiet", "-q", is_flag=True, help="No progress bar and no summary on stderr."
)
verbose_option = click.option(
    "--verbose", "-v", is_flag=True, help="Show TensorFlow's own log messages (hidden by default)."
)


@main.command()
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
@backend_option
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
    from .api import extract as run_extract
    from .process import Interrupted

    if output == "-" and as_json:
        raise EfxError(
            "--json prints a summary on stdout, where OUTPUT - writes the rows: leave out "
            "--json (the summary is on stderr), or write OUTPUT to a file"
        )
    stdin = sys.stdin.buffer if "-" in sources else None
    if stdin is not None and stdin.isatty() and not quiet:
        click.echo("efx: reading image paths from stdin, one per line (end with Ctrl-D)", err=True)
    try:
        with native_logs_hidden(verbose):
            summary = run_extract(
                sources, output, stdin=stdin, progress=not quiet and sys.stderr.isatty(),
                on_note=None if quiet else _note, verbose=verbose, **settings,
            )  # fmt: skip
    except Interrupted as stop:
        _say_interrupted(stop, settings["resume"] or settings["update"], "-" in sources)
        sys.exit(EXIT_INTERRUPTED)
    _show(summary, as_json)
    if not quiet:
        _report(summary)
    if strict and summary.failed:
        raise EfxError(f"{summary.failed} image(s) failed (--strict); the others were written")


def _note(text: str) -> None:
    click.echo(f"efx: note: {text}", err=True)


def _say_interrupted(stop: Any, resume: bool, from_stdin: bool) -> None:
    """After Ctrl-C or SIGTERM: what is true of OUTPUT now, and the command that finishes it."""
    output = stop.output
    args = [arg for arg in sys.argv[1:] if arg != "--overwrite"]
    if "--resume" not in args and "--update" not in args:
        args.append("--resume")
    command = "efx " + " ".join(shlex.quote(arg) for arg in args)
    finish = f"To finish it{' (with the same paths on stdin)' if from_stdin else ''}:\n  {command}"
    if stop.wrote and stop.scratch:
        said = (
            f"interrupted. {output} is as it was; what was computed is kept in {stop.scratch}, "
            f"which the same command continues from. {finish}"
        )
    elif stop.wrote:
        said = f"interrupted. What was computed is kept in {output}, marked incomplete. {finish}"
    else:
        when = f"while {stop.phase}" if stop.phase else "before anything was written"
        if resume and os.path.lexists(output):
            said = f"interrupted {when}: nothing was written, {output} is as it was. {finish}"
        elif os.path.lexists(output):
            said = f"interrupted {when}: nothing was written, {output} is as it was."
        else:
            said = f"interrupted {when}: nothing was written, no OUTPUT was created."
    click.echo(f"efx: {said}", err=True)


def _changes(summary: Any) -> str:
    """What an update (or a run that met the same bytes twice) did besides embedding."""
    figures = [
        (summary.kept, "kept"),
        (summary.computed, f"embedded ({summary.new} new, {summary.changed} changed"
         + (f", {summary.retried} retried" if summary.retried else "") + ")"),
        (summary.reused, "reused (moved or copied)"),
        (summary.removed, "removed"),
    ]  # fmt: skip
    if not (summary.kept or summary.removed or summary.changed or summary.retried):
        if summary.reused:
            return (
                f"{summary.reused} image(s) repeat the bytes of another input: embedded once, "
                "the row copied"
            )
        return ""
    return "updated: " + ", ".join(f"{count} {what}" for count, what in figures)


def _report(summary: Any) -> None:
    from .api import info

    def echo(text: str) -> None:
        click.echo(text, err=True)

    if summary.already_complete:
        echo(
            f"efx: {summary.output} is already complete ({summary.embedded} embedded, "
            f"{summary.failed} failed): nothing to do"
        )
        return
    if summary.up_to_date:
        echo(
            f"efx: {summary.output} is up to date ({summary.embedded} embedded, "
            f"{summary.failed} failed): nothing changed in {summary.images} inputs, no model "
            f"loaded ({summary.seconds:.2f} s)"
        )
        return
    if summary.standin:
        echo(
            "efx: WARNING: the model is the offline STAND-IN (random weights); "
            "these embeddings are for testing and timing only, not real features"
        )
    if summary.failed and summary.output == "-":
        echo(
            f"efx: {summary.failed} image(s) could not be embedded "
            "(their records on stdout say why)"
        )
    elif summary.failed:
        failures = info(summary.output)["failures"]
        echo(f"efx: {summary.failed} image(s) could not be embedded:")
        for failure in failures[:10]:
            echo(f"  {escape(failure['path'])}: {failure['error']}")
        if summary.failed > 10:
            echo(f"  ... (all of them: efx info {summary.output})")
    if summary.resumed:
        done = "image was" if summary.resumed == 1 else "images were"
        echo(f"efx: resumed: {summary.resumed} {done} already done")
    changes = _changes(summary)
    if changes:
        echo(f"efx: {changes}")
    if not summary.model_loaded:
        echo(
            f"efx: no image needed the model: {summary.embedded} rows, {summary.failed} "
            f"failed, in {summary.seconds:.1f} s -> {summary.output}"
        )
        return
    part = f" (part {summary.part})" if summary.part != "0/1" else ""
    echo(
        f"efx: embedded {summary.embedded} of {summary.images} images{part}, "
        f"{summary.failed} failed, "
        f"in {summary.seconds:.1f} s (model load {summary.load_seconds:.1f} s, then "
        f"{summary.images_per_second:.2f} images/s, {summary.backend} {summary.precision} on "
        f"{summary.device}{' via Ray' if summary.engine == 'ray' else ''}) -> "
        + ("stdout" if summary.output == "-" else summary.output)
    )


@main.command()
@click.argument("output")
@json_option
@storage_option
def info(output: str, as_json: bool) -> None:
    """Describe an efx OUTPUT (HDF5 file, Parquet or .npy shard folder) without loading
    TensorFlow."""
    from .api import info as describe

    details = describe(output)
    _show(details, as_json, lambda: _print_info(details))


def _print_info(details: dict[str, Any]) -> None:
    get = details.get
    rows = [
        ("output", f"{details['output']} ({details['format']})"),
        ("complete", "yes" if get("complete") else "NO (interrupted, or still being written)"),
        ("embeddings", f"{get('count', 0)} x {get('feature_dim')} {get('dtype')}"),
        ("model", get("model")),
        ("input", _input_settings(details)),
        ("compute", _compute(details)),
        ("failed", get("failed", 0)),
        ("files", _file_facts(details)),
        (
            "created",
            f"{get('created')}" + (f", updated {get('updated')}" if get("updated") else ""),
        ),
        ("versions", f"efx {get('efx_version')}, tensorflow {get('tensorflow_version')}"),
    ]
    if details["format"] == "parquet":
        kept = ", ".join(get("keep_columns") or []) or "none (--keep-columns)"
        files = f"{get('parts')} file{'s' if get('parts') != 1 else ''}"
        rows.insert(3, ("parts", f"{files} of up to {get('shard_size')} rows"))
        rows.insert(4, ("kept", f"source columns: {kept}"))
    if get("part") and get("part") != "0/1":
        rows.insert(
            3, ("part", f"{get('part')} ({get('part_inputs')} of {get('inputs_total')} inputs)")
        )
    for key, value in rows:
        _print(f"{key + ':':<12}{value}")
    for failure in details["failures"]:
        _print(f"  failed: {escape(failure['path'])}: {failure['error']}")
    if details["failed"] > len(details["failures"]):
        _print(f"  ... and {details['failed'] - len(details['failures'])} more")


def _file_facts(details: dict[str, Any]) -> str:
    if details.get("file_facts"):
        return "size, mtime and SHA-256 of each file recorded (for --update)"
    return "not recorded (efx before 0.4): --update reads every file once to record them"


def _compute(details: dict[str, Any]) -> str:
    backend = details.get("backend", "tensorflow")
    return f"{backend}, {details.get('precision', 'float32')}, on {details.get('device')}"


def _input_settings(details: dict[str, Any]) -> str:
    size = details.get("image_size")
    settings = [f"{size}x{size}"]
    if details.get("resize"):
        settings.append(f"resize {details['resize']}")
    if details.get("exif_orientation") is not None:
        settings.append(
            "EXIF orientation " + ("applied" if details["exif_orientation"] else "ignored")
        )
    return ", ".join(settings)


html_option = click.option(
    "--html", "html_path", default=None, metavar="FILE",
    help="Also write a contact sheet: one self-contained HTML page with thumbnails (needs "
    "efx[search]).",
)  # fmt: skip


@main.command()
@click.argument("output")
@click.argument("queries", nargs=-1, required=True, metavar="QUERY...")
@click.option("-k", "k", type=int, default=10, show_default=True, help="Hits per query.")
@html_option
@json_option
@verbose_option
@storage_option
def similar(
    output: str, queries: tuple[str, ...], k: int, html_path: str | None, as_json: bool,
    verbose: bool,
) -> None:  # fmt: skip
    """The rows of OUTPUT nearest each QUERY, by cosine similarity of their embeddings.

    A QUERY is a path already in OUTPUT (no model needed; it is left out of its own hits) or
    any image file, embedded now with the model and settings OUTPUT was made with. Prints one
    line per hit: query, rank, path, similarity (tab-separated; "missing" after a file that is
    gone since). Exit 1 if a query has no hits (it says why), after printing the others.

    \b
    Examples:
      efx similar out.h5 photos/cat.jpg -k 5
      efx similar out.h5 ~/Downloads/new-photo.jpg --html similar.html
      efx similar out.h5 photos/cat.jpg --json | jq '.[0].hits[].path'
    """
    from . import sheet
    from .search import similar as run_similar

    _check_sheet(html_path)
    with native_logs_hidden(verbose):
        results = run_similar(output, queries, k, verbose=verbose)
    _show(results, as_json, lambda: _print_hits(results))
    _sheet_and_warning(
        output, html_path, lambda warning: sheet.similar_page(results, output, warning)
    )
    # No hits is a failure too (the help says so): OUTPUT holds no row but the query itself.
    failed = [r for r in results if r["error"] or not r["hits"]]
    for result in failed:
        why = result["error"] or "no hits: OUTPUT holds no other row to compare it with"
        click.echo(f"efx: {escape(result['query'])}: {why}", err=True)
    if failed:
        sys.exit(1)


@main.command()
@model_options
@backend_option
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
    from .config import Settings
    from .serve import run as run_server

    with native_logs_hidden(verbose):
        run_server(
            Settings(**settings), socket_path, lambda text: click.echo(f"efx: {text}", err=True)
        )


@main.command()
@click.argument("output")
@click.option(
    "--threshold",
    type=float,
    default=None,
    metavar="T",
    help="Cosine similarity at or above which two images are near-duplicates. Default: 0.85, "
    "measured on real photos and fifteen kinds of copies (re-encoded, thumbnails, crops, "
    "turned, colour changes, borders, screenshots ...) with a real ImageNet model (README).",
)
@html_option
@json_option
@quiet_option
@storage_option
def duplicates(
    output: str, threshold: float | None, html_path: str | None, as_json: bool, quiet: bool
) -> None:
    """Groups of near-duplicate images in OUTPUT: the same photo re-encoded, resized, lightly
    cropped, or shot in a burst. Largest groups first; prints one line per image: group,
    similarity to the group's first image, path (tab-separated; "missing" after a file that is
    gone since). Exact: every pair is compared, in blocks, never as an N x N matrix.

    \b
    Examples:
      efx duplicates out.h5
      efx duplicates out.h5 --threshold 0.95 --html dupes.html
      efx duplicates out.h5 --json | jq '.groups | length'
    """
    from . import sheet
    from .search import duplicates as run_duplicates

    _check_sheet(html_path)
    report = run_duplicates(output, threshold, progress=not quiet and sys.stderr.isatty())
    _show(report, as_json, lambda: _print_groups(report))
    _sheet_and_warning(
        output, html_path, lambda warning: sheet.duplicates_page(report, output, warning)
    )
    if not quiet:
        grouped = sum(group["size"] for group in report["groups"])
        click.echo(
            f"efx: {len(report['groups'])} group(s) of near-duplicates ({grouped} images) among "
            f"{report['rows']} at threshold {report['threshold']:g}",
            err=True,
        )


_STANDIN_SAYS = (
    "OUTPUT was made with the offline STAND-IN (random weights): these similarities test the "
    "tool, they say nothing about the images"
)


def _check_sheet(html_path: str | None) -> None:
    if html_path is not None:
        from . import sheet

        sheet.check_target(html_path)


def _sheet_and_warning(
    output: str, html_path: str | None, page: Callable[[str | None], str]
) -> None:
    """Write the contact sheet (if asked) and say, there and on stderr, when OUTPUT's model is
    the random-weight stand-in."""
    from .api import info

    warning = _STANDIN_SAYS if info(output).get("standin") else None
    if html_path is not None:
        from . import sheet

        sheet.write_page(page(warning), html_path)
        click.echo(f"efx: contact sheet written to {html_path}", err=True)
    if warning:
        click.echo(f"efx: WARNING: {warning}", err=True)


@main.command()
@click.argument("parts", nargs=-1, required=True, metavar="PART...")
@click.argument("output")
@output_options
@json_option
@quiet_option
@storage_option
def merge(parts: tuple[str, ...], output: str, as_json: bool, quiet: bool, **options: Any) -> None:
    """Combine the outputs of `efx extract --shard I/N` runs into OUTPUT: the same rows in the
    same order as one run over all the inputs. Parts may be HDF5, Parquet or .npy shards, in
    any order, and OUTPUT any of the three; all N parts are needed, each finished, made with
    the same model and settings.

    \b
    Example (4 machines, then one merge):
      efx extract --shard 0/4 photos/ part0.h5    # ... up to --shard 3/4 part3.h5
      efx merge part0.h5 part1.h5 part2.h5 part3.h5 all.h5
    """
    from .parts import merge as run_merge

    summary = run_merge(parts, output, **options)
    _show(summary, as_json)
    if not quiet:
        click.echo(
            f"efx: merged {summary.parts} parts: {summary.embedded} embedded, "
            f"{summary.failed} failed -> {summary.output}",
            err=True,
        )


@main.command()
@click.argument("source", metavar="OUTPUT")
@click.argument("output", metavar="NEW_OUTPUT")
@output_options
@json_option
@quiet_option
@storage_option
def convert(source: str, output: str, as_json: bool, quiet: bool, **options: Any) -> None:
    """Write a finished efx OUTPUT in another format as NEW_OUTPUT, without the model: the same
    rows in the same order, embeddings bit for bit, file facts (--update keeps working),
    failures and settings. The format is told by NEW_OUTPUT's name (.h5, .parquet, else .npy
    shards) or --format.

    \b
    Examples:
      efx convert embeddings.h5 embeddings.parquet   # for pandas, Polars, DuckDB, Spark
      efx convert embeddings.parquet embeddings.h5   # and back
    """
    from .parts import convert as run_convert

    summary = run_convert(source, output, **options)
    _show(summary, as_json)
    if summary.dropped:
        click.echo(
            f"efx: note: {summary.format} holds no columns beyond the embeddings: "
            f"{', '.join(summary.dropped)} not written",
            err=True,
        )
    if not quiet:
        click.echo(
            f"efx: converted {summary.embedded} rows and {summary.failed} failures -> "
            f"{summary.output} ({summary.format})",
            err=True,
        )


@main.command()
@click.argument("sources", nargs=-1, metavar="[SOURCE]...")
@model_options
@click.option(
    "--backend",
    type=click.Choice([*BACKENDS, "all"]),
    default="all",
    show_default=True,
    help="What runs the model; all: TensorFlow and, on a CPU, OpenVINO, side by side.",
)
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
    from .bench import bench as run_bench
    from .config import Settings

    try:
        width, height = (int(v) for v in size.lower().split("x"))
    except ValueError:
        raise EfxError(f"--size must be WIDTHxHEIGHT, e.g. 1024x768. Received: {size!r}") from None

    def progress(round_: int, backend: str, figures: dict[str, float]) -> None:
        if not as_json:
            click.echo(
                f"efx: round {round_}, {backend}: model alone "
                f"{figures['model_alone']:.2f} images/s, "
                f"pipeline {figures['pipeline']:.2f} images/s, "
                f"ratio {figures['ratio']:.3f}",
                err=True,
            )

    with native_logs_hidden(verbose):
        report = run_bench(
            sources, Settings(**settings), backend=backend, count=count, size=(width, height),
            rounds=rounds, stdin=sys.stdin.buffer if "-" in sources else None, progress=progress,
        )  # fmt: skip
    _show(report, as_json, lambda: _print_bench(report))


def _print_hits(results: list[dict[str, Any]]) -> None:
    """efx similar's lines: query, rank, path, similarity (and `missing`), tab-separated."""
    for result in results:
        for hit in result["hits"]:
            gone = "" if hit["exists"] else "\tmissing"
            query, path = escape(result["query"]), escape(hit["path"])
            _print(f"{query}\t{hit['rank']}\t{path}\t{hit['similarity']:.4f}{gone}")


def _print_groups(report: dict[str, Any]) -> None:
    """efx duplicates' lines: group, similarity to its first image, path (and `missing`)."""
    for number, group in enumerate(report["groups"], start=1):
        for member in group["members"]:
            gone = "" if member["exists"] else "\tmissing"
            _print(f"{number}\t{member['similarity']:.4f}\t{escape(member['path'])}{gone}")


def _print_bench(report: Any) -> None:
    _print(f"model:        {report.model}")
    _print(
        f"device:       {report.device}, batch {report.batch_size}, "
        f"{report.image_size}x{report.image_size}"
    )
    _print(f"images:       {report.images} ({report.source})")
    _print("")
    _print(f"{'backend':<12}{'precision':<11}{'model alone':>13}{'pipeline':>11}{'ratio':>8}")
    for figures in report.results:
        _print(
            f"{figures.backend:<12}{figures.precision:<11}{figures.model_alone:>13.2f}"
            f"{figures.pipeline:>11.2f}{figures.ratio:>8.3f}"
        )
    _print("(images/s; model alone: ready tensors; pipeline: read, decode, resize, model, write)")
    _print("")
    _print(f"peak memory:  {report.peak_rss_mib:.0f} MiB (RSS, all backends loaded)")
    for note in report.notes:
        _print(f"note:         {note}")


@main.command("make-standin")
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
    from .standin import build_standin

    with native_logs_hidden(verbose):
        build_standin(folder, arch)
    click.echo(
        f"efx: stand-in EfficientNet-{arch.upper()} (random weights) written to {folder}", err=True
    )
