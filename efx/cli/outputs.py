"""The commands that read or rewrite outputs without a model: info, merge, convert."""

from __future__ import annotations

from typing import Any

import click

from . import render
from .options import json_option, output_options, quiet_option, storage_option


@click.command()
@click.argument("output")
@json_option
@storage_option
def info(output: str, as_json: bool, storage_options: dict[str, Any] | None) -> None:
    """Describe an efx OUTPUT (HDF5 file, Parquet or .npy shard folder) without loading
    TensorFlow."""
    from ..api import info as describe

    details = describe(output, storage_options=storage_options)
    render.show(details, as_json, lambda: render.info(details))


@click.command()
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
    from ..parts import merge as run_merge

    summary = run_merge(parts, output, **options)
    render.show(summary, as_json)
    if not quiet:
        render.merged(summary)


@click.command()
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
    from ..parts import convert as run_convert

    summary = run_convert(source, output, **options)
    render.show(summary, as_json)
    render.dropped(summary)
    if not quiet:
        render.converted(summary)


COMMANDS = [info, merge, convert]
