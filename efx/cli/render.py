"""Every line the commands print: results on stdout (one JSON object with --json, else the
command's own lines), messages on stderr (`efx: ...`)."""

from __future__ import annotations

import contextlib
import os
import shlex
import sys
from collections.abc import Callable
from typing import Any

import click

from ..names import escape, to_json

# A reader that stopped reading (`efx … | head -1`): as the shell reports a command stopped by
# SIGPIPE (128 + 13). Whatever else the command was asked for (an --html page, an OUTPUT file)
# is still written.
EXIT_READER_GONE = 141
EXIT_INTERRUPTED = 130  # Ctrl-C or SIGTERM: as the shell reports SIGINT (128 + 2)
_gone = [False]
_PIECE = 1 << 16  # a Linux pipe's buffer

STANDIN_SAYS = (
    "OUTPUT was made with the offline STAND-IN (random weights): these similarities test the "
    "tool, they say nothing about the images"
)


def reader_back() -> None:
    _gone[0] = False


def reader_gone() -> bool:
    return _gone[0]


def show(result: Any, as_json: bool, text: Callable[[], None] | None = None) -> None:
    """A command's result on stdout: with --json one JSON object (`result`, or its
    `to_dict()`), and nothing else there; otherwise the command's own lines (`text`), if any."""
    if as_json:
        line(to_json(result.to_dict() if hasattr(result, "to_dict") else result))
    elif text is not None:
        text()


def line(text: str) -> None:
    """A line on stdout. Once the reader has gone (`| head`), the rest is dropped quietly and
    the command carries on with what else it was asked to do, then exits 141."""
    if _gone[0]:
        return
    try:
        # In pieces no larger than a pipe's buffer: a single large write into a pipe whose
        # reader has gone can end as a short write without an error (a --json of 150 KB into
        # `head -c 50` exited 0); the next piece then fails as it should.
        for start in range(0, len(text), _PIECE):
            click.echo(text[start : start + _PIECE], nl=False)
        click.echo("")
    except BrokenPipeError:
        _gone[0] = True
        stdout_closed()


def stdout_closed() -> None:
    """Point stdout at /dev/null, so that nothing flushed later (at exit) meets the closed pipe:
    no "Exception ignored ... BrokenPipeError" line."""
    with contextlib.suppress(OSError, ValueError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)


def say(text: str) -> None:
    """A message on stderr: `efx: text`."""
    click.echo(f"efx: {text}", err=True)


def note(text: str) -> None:
    say(f"note: {text}")


# efx extract


def say_interrupted(stop: Any, resume: bool, from_stdin: bool) -> None:
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
    say(said)


def changes(summary: Any) -> str:
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


def report(summary: Any) -> None:
    """efx extract's closing lines on stderr."""
    if summary.already_complete:
        say(
            f"{summary.output} is already complete ({summary.embedded} embedded, "
            f"{summary.failed} failed): nothing to do"
        )
        return
    if summary.up_to_date:
        say(
            f"{summary.output} is up to date ({summary.embedded} embedded, "
            f"{summary.failed} failed): nothing changed in {summary.images} inputs, no model "
            f"loaded ({summary.seconds:.2f} s)"
        )
        return
    if summary.standin:
        say(
            "WARNING: the model is the offline STAND-IN (random weights); "
            "these embeddings are for testing and timing only, not real features"
        )
    if summary.failed and summary.output == "-":
        say(f"{summary.failed} image(s) could not be embedded (their records on stdout say why)")
    elif summary.failed:
        say(f"{summary.failed} image(s) could not be embedded:")
        for failure in summary.failures:
            click.echo(f"  {escape(failure['path'])}: {failure['error']}", err=True)
        if summary.failed > 10:
            click.echo(f"  ... (all of them: efx info {summary.output})", err=True)
    if summary.resumed:
        done = "image was" if summary.resumed == 1 else "images were"
        say(f"resumed: {summary.resumed} {done} already done")
    update = changes(summary)
    if update:
        say(update)
    if not summary.model_loaded:
        say(
            f"no image needed the model: {summary.embedded} rows, {summary.failed} "
            f"failed, in {summary.seconds:.1f} s -> {summary.output}"
        )
        return
    part = f" (part {summary.part})" if summary.part != "0/1" else ""
    say(
        f"embedded {summary.embedded} of {summary.images} images{part}, "
        f"{summary.failed} failed, "
        f"in {summary.seconds:.1f} s (model load {summary.load_seconds:.1f} s, then "
        f"{summary.images_per_second:.2f} images/s, {summary.backend} {summary.precision} on "
        f"{summary.device}{' via Ray' if summary.engine == 'ray' else ''}) -> "
        + ("stdout" if summary.output == "-" else summary.output)
    )


# efx info, merge, convert


def info(details: dict[str, Any]) -> None:
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
        line(f"{key + ':':<12}{value}")
    for failure in details["failures"]:
        line(f"  failed: {escape(failure['path'])}: {failure['error']}")
    if details["failed"] > len(details["failures"]):
        line(f"  ... and {details['failed'] - len(details['failures'])} more")


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


def merged(summary: Any) -> None:
    say(
        f"merged {summary.parts} parts: {summary.embedded} embedded, {summary.failed} failed "
        f"-> {summary.output}"
    )


def converted(summary: Any) -> None:
    say(
        f"converted {summary.embedded} rows and {summary.failed} failures -> "
        f"{summary.output} ({summary.format})"
    )


def dropped(summary: Any) -> None:
    if summary.dropped:
        note(
            f"{summary.format} holds no columns beyond the embeddings: "
            f"{', '.join(summary.dropped)} not written"
        )


# efx similar, duplicates


def hits(results: list[dict[str, Any]]) -> None:
    """efx similar's lines: query, rank, path, similarity (and `missing`), tab-separated."""
    for result in results:
        for hit in result["hits"]:
            gone = "" if hit["exists"] else "\tmissing"
            query, path = escape(result["query"]), escape(hit["path"])
            line(f"{query}\t{hit['rank']}\t{path}\t{hit['similarity']:.4f}{gone}")


def no_hits(results: list[dict[str, Any]]) -> bool:
    """Say why each query without hits has none (stderr); whether there was any."""
    failed = [r for r in results if r["error"] or not r["hits"]]
    for result in failed:
        why = result["error"] or "no hits: OUTPUT holds no other row to compare it with"
        say(f"{escape(result['query'])}: {why}")
    return bool(failed)


def groups(report: dict[str, Any]) -> None:
    """efx duplicates' lines: group, similarity to its first image, path (and `missing`)."""
    for number, group in enumerate(report["groups"], start=1):
        for member in group["members"]:
            gone = "" if member["exists"] else "\tmissing"
            line(f"{number}\t{member['similarity']:.4f}\t{escape(member['path'])}{gone}")


def groups_found(report: dict[str, Any]) -> None:
    grouped = sum(group["size"] for group in report["groups"])
    say(
        f"{len(report['groups'])} group(s) of near-duplicates ({grouped} images) among "
        f"{report['rows']} at threshold {report['threshold']:g}"
    )


# efx bench


def bench_round(round_: int, backend: str, figures: dict[str, float]) -> None:
    say(
        f"round {round_}, {backend}: model alone {figures['model_alone']:.2f} images/s, "
        f"pipeline {figures['pipeline']:.2f} images/s, ratio {figures['ratio']:.3f}"
    )


def bench(report: Any) -> None:
    line(f"model:        {report.model}")
    line(
        f"device:       {report.device}, batch {report.batch_size}, "
        f"{report.image_size}x{report.image_size}"
    )
    line(f"images:       {report.images} ({report.source})")
    line("")
    line(f"{'backend':<12}{'precision':<11}{'model alone':>13}{'pipeline':>11}{'ratio':>8}")
    for figures in report.results:
        line(
            f"{figures.backend:<12}{figures.precision:<11}{figures.model_alone:>13.2f}"
            f"{figures.pipeline:>11.2f}{figures.ratio:>8.3f}"
        )
    line("(images/s; model alone: ready tensors; pipeline: read, decode, resize, model, write)")
    line("")
    line(f"peak memory:  {report.peak_rss_mib:.0f} MiB (RSS, all backends loaded)")
    for text in report.notes:
        line(f"note:         {text}")
