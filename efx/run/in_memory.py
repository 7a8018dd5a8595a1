"""Images embedded into memory through the stages of efx.extract (sources -> inputs -> what
each needs -> engine and model -> the loop), with no output file: efx similar's query images,
embedded as an output's rows were."""

from __future__ import annotations

from collections.abc import Sequence

from .. import facts as facts_
from .. import process, reuse
from .. import sources as sources_
from ..config import Settings
from ..discover import find_files
from ..engine import Engine, open_engine
from ..model import asked_model, check_precision
from ..writers.memory import MemoryWriter
from .loop import Feed, stream


def embed_in_memory(
    sources: Sequence[str], settings: Settings, verbose: bool = False
) -> MemoryWriter:
    """Embed every image of `sources` (files or URLs of images or shards) with `settings`:
    a MemoryWriter holding the rows (keys, float32 [rows, dim]) and the failures with their
    reasons, exactly as efx.extract would write them. An `efx serve` running the same model is
    used as extract uses it. Raises EfxError (a model that cannot be loaded, say)."""
    spec = asked_model(settings.model)
    check_precision(settings.precision, settings.backend)
    inputs = sources_.list_inputs(find_files(sources), sources_.ShardOptions())
    work = reuse.plan(inputs, [], unstorable={}, hash_files=facts_.hash_files)
    writer = MemoryWriter()
    hidden = process.native_logs_hidden(verbose, whole_process=False)
    with hidden, process.sigterm_stops(), process.tensorflow_options_restored():
        engine: Engine = open_engine(settings, verbose, spec)
        try:
            loaded = engine.load_model(spec, settings, len(work.to_embed))
            feed = Feed(engine, settings.decode_options(loaded.image_size), loaded)
            stream(inputs, work, [], writer, None, feed)
        finally:
            engine.close()
    return writer
