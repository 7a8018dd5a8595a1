"""The commands that search an output: similar, duplicates."""

from __future__ import annotations

import sys
from typing import Any

import click

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
@html_option
@json_option
@quiet_option
@storage_option
def duplicates(
    output: str, threshold: float | None, html_path: str | None, as_json: bool, quiet: bool,
    storage_options: dict[str, Any] | None,
) -> None:  # fmt: skip
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
    from .. import sheet
    from ..search import duplicates as run_duplicates

    _check_sheet(html_path)
    report = run_duplicates(
        output, threshold, progress=not quiet and sys.stderr.isatty(),
        storage_options=storage_options,
    )  # fmt: skip
    render.show(report, as_json, lambda: render.groups(report))
    page = lambda warning: sheet.duplicates_page(report, output, warning, storage_options)  # noqa: E731
    _sheet(output, html_path, page, storage_options)
    if not quiet:
        render.groups_found(report)


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


COMMANDS = [similar, duplicates]
