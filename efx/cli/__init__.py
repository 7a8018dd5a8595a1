"""The `efx` command: parse flags, call the library, turn EfxError into `efx: message` + exit 1.

No pipeline logic lives here, and nothing here imports TensorFlow or numpy: `efx --help` and
`efx info` answer at once. The commands live by family (`embed`: extract, serve, bench,
make-standin; `outputs`: info, merge, convert; `search`: similar, duplicates), their shared
options in `options`, and every line they print in `render`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from typing import Any

import click

from .. import timeline
from ..errors import EfxError
from . import render


class _UserError(click.ClickException):
    def show(self, file: Any = None) -> None:
        click.echo(f"efx: {self.format_message()}", err=True)


class _Group(click.Group):
    def invoke(self, ctx: click.Context) -> Any:
        render.reader_back()  # one command's reader (the CLI runs in-process in tests)
        try:
            result = super().invoke(ctx)
        except EfxError as error:
            raise _UserError(str(error)) from None
        except KeyboardInterrupt:  # extract says more (render.say_interrupted); the others, this
            click.echo("efx: interrupted", err=True)
            ctx.exit(render.EXIT_INTERRUPTED)
        except BrokenPipeError:  # OUTPUT - (or a line) met a closed pipe: the run has stopped
            render.stdout_closed()
            ctx.exit(render.EXIT_READER_GONE)
        if render.reader_gone():
            ctx.exit(render.EXIT_READER_GONE)
        return result


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


# The commands, by family (each module adds its commands to `main`).
from . import embed, outputs, search  # noqa: E402

for _family in (embed, outputs, search):
    for _command in _family.COMMANDS:
        main.add_command(_command)

__all__ = ["main", "run"]
