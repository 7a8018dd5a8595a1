"""--engine ray: the same extraction on a Ray cluster, through Ray Data.

Ray Data schedules, retries and streams; efx gives it the same two stages as the local engine:
reading + `decode.decode_image` (decoder actors, one per CPU they may take) and the model
(`model.load_model`, one model per actor, one GPU per actor where the cluster has GPUs). The
(index, embedding, ok) batches come back to this process in input order, and the caller's loop
writes them with the same writers as the local engine: formats, failures and --resume are
unchanged. Ray is an optional extra, imported only here.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Iterator, Sequence
from dataclasses import replace
from typing import Any

import numpy as np

from . import remote
from .batches import Batch
from .config import DecodeOptions, Settings
from .errors import EfxError
from .inputs import Input, Member, fetched
from .model import LoadedModel, ModelSpec

INSTALL_HINT = "pip install 'efx[ray]'"


def _import_ray() -> Any:
    try:
        import ray
        import ray.data  # noqa: F401 - Ray Data is a separate extra of Ray
    except ImportError as error:
        raise EfxError(
            f"--engine ray needs Ray Data, which is not installed ({error}). Install it with "
            f"{INSTALL_HINT} (or pip install 'ray[data]'), or use the default --engine local."
        ) from None
    return ray


class RayEngine:
    """A connection to a Ray cluster (or a local Ray instance started for this run)."""

    def __init__(self, address: str | None = None, verbose: bool = False) -> None:
        ray = _import_ray()
        self._ray = ray
        self._started = not ray.is_initialized()
        if self._started and address:
            _check_reachable(address)
        if self._started:
            env = {} if verbose else {"TF_CPP_MIN_LOG_LEVEL": "3"}
            try:
                ray.init(
                    address=address,
                    include_dashboard=False,
                    log_to_driver=verbose,  # workers' TensorFlow chatter stays in Ray's logs
                    logging_level=logging.INFO if verbose else logging.ERROR,
                    runtime_env={"env_vars": env},
                )
            except (ConnectionError, RuntimeError, ValueError) as error:
                where = f"the Ray cluster at {address}" if address else "a local Ray instance"
                raise EfxError(f"cannot start or reach {where}: {_first_line(error)}") from None
        if not verbose:  # Ray Data logs its execution plan and progress at INFO on stderr
            for name in ("ray", "ray.data"):
                logging.getLogger(name).setLevel(logging.ERROR)
        context = ray.data.DataContext.get_current()
        context.execution_options.preserve_order = True  # rows in input order, as locally
        context.enable_progress_bars = verbose  # efx shows its own
        resources = ray.cluster_resources()
        self.gpus = int(resources.get("GPU", 0))
        self.cpus = int(resources.get("CPU", 1))
        self._spec: ModelSpec | None = None
        self._settings: tuple[Any, ...] = ()

    def load_model(
        self, spec: ModelSpec, settings: Settings, images: int | None = None
    ) -> LoadedModel:
        """What the model actors will run: loaded once on a worker like theirs, to learn its
        size, dimension, device and backend (and to fail early, with efx's message)."""
        ray = self._ray
        describe = ray.remote(num_cpus=1, num_gpus=1 if self.gpus else 0)(_describe)
        precision, backend = settings.precision, settings.backend
        asked = (settings.image_size, settings.batch_size, precision, backend)
        try:
            loaded = ray.get(describe.remote(spec, *asked))
        except ray.exceptions.RayTaskError as error:
            cause = getattr(error, "cause", None)
            if isinstance(cause, EfxError):
                raise EfxError(str(cause)) from None
            raise
        self._spec = spec
        self._settings = (loaded.image_size, loaded.batch_size, precision, backend)
        return loaded

    def batches(
        self, inputs: Sequence[Input], options: DecodeOptions, loaded: LoadedModel
    ) -> Iterator[Batch]:
        """The batches, in input order. Workers read the inputs themselves (files, objects by
        URL, and images inside shards by their place in the shard): no image's bytes pass
        through this process, but those of inputs that failed, read again here to say why."""
        from .batches import with_reasons

        ray = self._ray
        if not inputs:
            return
        items = [_item(i, inp) for i, inp in enumerate(inputs)]
        models = self.gpus or 1
        decoders = max(1, self.cpus - models)
        dataset = (
            ray.data.from_items(items)
            .map_batches(
                _Decode,
                fn_constructor_args=(options, remote.storage_options()),
                batch_size=loaded.batch_size,
                compute=ray.data.ActorPoolStrategy(min_size=1, max_size=decoders),
                num_cpus=1,
            )
            .map_batches(
                _Embed,
                fn_constructor_args=(self._spec, *self._settings),
                batch_size=loaded.batch_size,
                compute=ray.data.ActorPoolStrategy(size=models),
                num_cpus=1,
                num_gpus=1 if self.gpus else 0,
            )
        )
        for batch in dataset.iter_batches(batch_size=None, batch_format="numpy"):
            ok = batch["ok"].astype(bool)
            positions, embeddings = batch["index"].astype(np.int64), batch["embedding"][ok]
            yield with_reasons(positions, embeddings, ok, inputs, options)

    def close(self) -> None:
        if self._started and self._ray.is_initialized():
            self._ray.shutdown()


def _describe(
    spec: ModelSpec, image_size: int | None, batch_size: int | None, precision: str, backend: str
) -> LoadedModel:
    from .model import load_model

    loaded = load_model(spec, image_size, batch_size, precision, backend)
    return replace(loaded, embed=_runs_in_actors)


def _runs_in_actors(images: Any) -> np.ndarray:
    raise RuntimeError("with --engine ray the model runs in Ray actors, not in this process")


class _Decode:
    """Ray Data stage: paths -> model-ready images, with the local engine's decode function."""

    def __init__(self, options: DecodeOptions, storage: dict[str, Any]) -> None:
        from .decode.pipeline import file_decoder

        remote.configure(storage)  # objects by URL: read here, with the driver's options

        self._size = options.image_size
        self._decode = file_decoder(options)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from .sources import read_inputs

        blank = np.zeros([self._size, self._size, 3], np.float32)
        inputs = [_input(batch, i) for i in range(len(batch["index"]))]
        datas = read_inputs(inputs)
        images: list[np.ndarray | None] = []
        for inp, data in zip(inputs, datas, strict=True):
            if isinstance(data, BaseException):
                images.append(None)  # the driver's failure_reason reads it again to say why
                continue
            path = b"" if fetched(inp) else os.fsencode(inp.path)
            images.append(self._decode(path, data))
        return {
            "index": batch["index"],
            "image": np.stack([blank if image is None else image for image in images]),
            "ok": np.array([image is not None for image in images]),
        }


class _Embed:
    """Ray Data stage: one model per actor (and per GPU), images -> embeddings."""

    def __init__(
        self, spec: ModelSpec, image_size: int, batch_size: int, precision: str, backend: str
    ) -> None:
        from .model import load_model

        self._model = load_model(spec, image_size, batch_size, precision, backend)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        ok = batch["ok"].astype(bool)
        embeddings = np.zeros([len(ok), self._model.feature_dim], np.float32)
        if ok.any():
            embeddings[ok] = self._model.embed(batch["image"][ok])
        return {"index": batch["index"], "embedding": embeddings, "ok": ok}


def _item(index: int, inp: Input) -> dict[str, Any]:
    """An input as a Ray Data row. Paths travel as bytes: names that are not valid UTF-8
    survive (Arrow strings would not)."""
    member = inp.member or Member("", 0, 0)
    return {
        "index": index, "path": os.fsencode(inp.path), "kind": member.kind, "at": member.at,
        "size": member.size, "field": member.field,
    }  # fmt: skip


def _input(batch: dict[str, np.ndarray], i: int) -> Input:
    path = os.fsdecode(bytes(batch["path"][i]))
    kind = str(batch["kind"][i])
    member = Member(kind, int(batch["at"][i]), int(batch["size"][i]), str(batch["field"][i]))
    return Input(path, path, member if kind else None)


def _check_reachable(address: str) -> None:
    """Fail in seconds on a cluster address nothing answers at: `ray.init` retries such an
    address for minutes (measured: still waiting after 11 minutes on 127.0.0.1:9, Ray 2.60)."""
    if address in ("auto", "local"):
        return  # Ray finds the cluster itself
    host, _, port = address.removeprefix("ray://").rpartition(":")  # checked by Settings
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=5).close()
    except OSError as error:
        raise EfxError(
            f"cannot reach the Ray cluster at {address}: {error.strerror or error} (is "
            "`ray start --head` running there, and is the port open?)"
        ) from None


def _first_line(error: BaseException) -> str:
    text = str(error).strip() or type(error).__name__
    return text.splitlines()[0]
