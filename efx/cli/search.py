"""The commands that search an output: similar, duplicates, index."""

from __future__ import annotations

import sys
from typing import Any

import click

from ..config import DUPLICATE_METHODS, INDEX_FROM_ROWS
from ..process import native_logs_hidden
from . import render
from .options import html_option, json_option, quiet_option, storage_option, verbose_option


@click.command()
@click.argument("output")
@click.argument("queries", nargs=-1, required=True, metavar="QUERY...")
@click.option("-k", "k", type=int, default=10, show_default=True, help="Hits per query.")
@html_option
@json_option
@verbose_option
@storage_option
def similar(
    output: str, queries: tuple[str, ...], k: int, html_path: str | None, as_json: bool,
    verbose: bool, storage_options: dict[str, Any] | None,
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
    from .. import sheet
    from ..search import similar as run_similar

    _check_sheet(html_path)
    with native_logs_hidden(verbose):
        found = run_similar(output, queries, k, verbose=verbose, storage_options=storage_options)
    render.show(found, as_json, lambda: render.hits(found))
    page = lambda warning: sheet.similar_page(found, output, warning, storage_options)  # noqa: E731
    _sheet(output, html_path, page, storage_options)
    # No hits is a failure too (the help says so): OUTPUT holds no row but the query itself.
    if render.no_hits(found):
        sys.exit(1)


@click.command()
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
@click.option(
    "--method",
    type=click.Choice(DUPLICATE_METHODS),
    default="auto",
    show_default=True,
    help="exact: compare every pair. index: find the pairs through the index kept beside "
    "OUTPUT (built first, or rebuilt when OUTPUT changed; see `efx index`), each re-scored "
    f"exactly. auto: the index from {INDEX_FROM_ROWS:,} rows on, or where one exists.",
)
@click.option(
    "--pairs",
    "pairs_path",
    default=None,
    metavar="FILE",
    help='Also write every pair found, as they are found: FILE.jsonl (one {"a", "b", '
    '"similarity"} per line) or FILE.parquet (columns a, b, similarity).',
)
@html_option
@json_option
@quiet_option
@storage_option
def duplicates(
    output: str, threshold: float | None, method: str, pairs_path: str | None,
    html_path: str | None, as_json: bool, quiet: bool, storage_options: dict[str, Any] | None,
) -> None:  # fmt: skip
    """Groups of near-duplicate images in OUTPUT: the same photo re-encoded, resized, lightly
    cropped, or shot in a burst. Largest groups first; prints one line per image: group,
    similarity to the group's first image, path (tab-separated; "missing" after a file that is
    gone since). Every similarity reported is exact; through the index (--method), a pair can
    be missed, never invented. A group is linked pair by pair, so two of its images can be far
    less similar than the threshold: --json gives each group's lowest similarity.

    \b
    Examples:
      efx duplicates out.h5
      efx duplicates out.h5 --threshold 0.95 --html dupes.html
      efx duplicates big.parquet --pairs pairs.parquet --quiet
      efx duplicates out.h5 --json | jq '.groups | length'
    """
    from .. import sheet
    from ..search import duplicates as run_duplicates

    _check_sheet(html_path)
    report = run_duplicates(
        output, threshold, progress=not quiet and sys.stderr.isatty(),
        storage_options=storage_options, method=method, pairs=pairs_path,
        on_note=None if quiet else render.note,
    )  # fmt: skip
    render.show(report, as_json, lambda: render.groups(report))
    page = lambda warning: sheet.duplicates_page(report, output, warning, storage_options)  # noqa: E731
    _sheet(output, html_path, page, storage_options)
    if not quiet:
        render.groups_found(report)


@click.command()
@click.argument("output")
@json_option
@quiet_option
@storage_option
def index(output: str, as_json: bool, quiet: bool, storage_options: dict[str, Any] | None) -> None:
    """Build (or rebuild) the index of OUTPUT that `efx duplicates` uses at millions of rows.

    It is kept beside OUTPUT, in OUTPUT.efx-index, and used while OUTPUT is unchanged; efx
    duplicates builds it itself when it needs one. Each row's main directions (PCA) and its two
    nearest buckets (k-means): pairs are looked for only among rows that share a bucket, and
    every pair reported is re-scored with the full rows.

    \b
    Examples:
      efx index big.h5
      efx index s3://bucket/embeddings.parquet     # beside its working copy in efx's cache
    """
    from .. import index as indexes
    from .. import remote
    from ..writers import bucket

    with remote.using(storage_options):
        local = bucket.reading(output)  # an output in a bucket: its working copy
        built = indexes.build(local, progress=not quiet and sys.stderr.isatty())
    report = indexes.describe(built)
    render.show(report, as_json)
    if not quiet:
        render.say(
            f"indexed {report['rows']:,} rows of {output} in {report['buckets']:,} buckets "
            f"({report['dims']} dimensions), in {report['folder']}"
        )


def _check_sheet(html_path: str | None) -> None:
    if html_path is not None:
        from .. import sheet

        sheet.check_target(html_path)


def _sheet(
    output: str, html_path: str | None, page: Any, storage_options: dict[str, Any] | None
) -> None:
    """Write the contact sheet (if asked) and say, there and on stderr, when OUTPUT's model is
    the random-weight stand-in."""
    from ..api import info

    warning = (
        render.STANDIN_SAYS
        if info(output, storage_options=storage_options).get("standin")
        else None
    )
    if html_path is not None:
        from .. import sheet

        sheet.write_page(page(warning), html_path)
        render.say(f"contact sheet written to {html_path}")
    if warning:
        render.say(f"WARNING: {warning}")


COMMANDS = [similar, duplicates, index]
