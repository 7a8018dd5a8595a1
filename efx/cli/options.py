"""Options that several commands share, declared once (their names are efx.config.Settings'
fields, or the library calls' keywords)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import click

from ..config import BACKENDS, DEFAULT_SHARD_SIZE, FORMATS, PRECISIONS


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
        help=f"Rows per .npy shard or Parquet file. Default: {DEFAULT_SHARD_SIZE} (efx extract "
        "--update and --resume keep OUTPUT's own).",
    ),
    click.option("--overwrite", is_flag=True, help="Replace an existing OUTPUT."),
)  # fmt: skip


def _storage_options(
    ctx: click.Context, param: click.Parameter, values: tuple[str, ...]
) -> dict[str, Any] | None:
    """-S KEY=VALUE... as a value for the library call (None: none given)."""
    from .. import remote

    return dict(remote.parse_option(value) for value in values) if values else None


storage_option = click.option(
    "--storage-option", "-S", "storage_options", multiple=True, metavar="KEY=VALUE",
    callback=_storage_options,
    help="For s3:// gs:// https:// URLs: an option of their fsspec filesystem (s3fs, gcsfs, "
    "HTTP), VALUE as JSON or text; repeatable. E.g. -S endpoint_url=http://127.0.0.1:9000 "
    "-S anon=true. Credentials and endpoints are otherwise taken as those libraries take them "
    "(AWS_* variables, AWS_ENDPOINT_URL, ~/.aws, Google's default credentials).",
)  # fmt: skip


def backend_option(choices: Sequence[str] = BACKENDS, default: str = "auto", help: str = "") -> Any:
    """--backend: what runs the model (efx bench adds `all`)."""
    return click.option(
        "--backend", type=click.Choice(list(choices)), default=default, show_default=True,
        help=help or "What runs the model. auto: OpenVINO on a CPU when installed (efx[openvino]) "
        "and able to convert the model, 1.4x (AVX-512) to 2.3x (AVX2) TensorFlow's speed in "
        "float32; TensorFlow otherwise and on GPUs.",
    )  # fmt: skip


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
html_option = click.option(
    "--html", "html_path", default=None, metavar="FILE",
    help="Also write a contact sheet: one self-contained HTML page with thumbnails (needs "
    "efx[search]).",
)  # fmt: skip
