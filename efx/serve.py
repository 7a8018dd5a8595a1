"""`efx serve`: a model kept loaded behind a local socket, so that `efx extract` and `efx similar`
skip the start-up a fresh process pays (TensorFlow's import, the model's load and first call,
the decoders' tracing: README, Interactive use).

The server is an engine in another process: a run that finds one serving its model sends it
its inputs (paths, and where in a shard or bucket an image is) and gets back, batch by batch,
what the local engine would have computed: the same decode, the same model, the same bits
(tests/test_serve.py). Everything else (planning, --update, --resume, writing, failures'
rows) stays in the run's own process, which then never imports TensorFlow.

Safety: a Unix socket only (no network port), created 0600 in a folder of the user's own; both
ends check that the other runs as the same user (SO_PEERCRED). A server is used only when it
runs the same efx (version and files) and serves the model the run asks for, with files
unchanged since it loaded them; otherwise the run says why and loads the model itself.

Messages: a 4-byte big-endian length, a JSON header of that length, then `header["bytes"]`
bytes of payload (arrays, raw).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import socket
import socketserver
import struct
import tempfile
import threading
import traceback
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np

from . import files, process, remote
from .batches import Batch
from .config import DecodeOptions, Settings
from .errors import EfxError
from .inputs import Input, Member
from .model import LoadedModel, ModelSpec, asked_model

SOCKET_ENV = "EFX_SOCKET"  # the socket's path; "" turns the use of a server off
_HEADER = struct.Struct(">I")
_CREDENTIALS = struct.Struct("3i")  # struct ucred: pid, uid, gid


def socket_path() -> str | None:
    """Where the server listens: EFX_SOCKET, else `$XDG_RUNTIME_DIR/efx-serve.sock` (the
    user's runtime folder, as systemd makes it), else `/tmp/efx-UID/serve.sock`. None when
    EFX_SOCKET is set to "" (no server)."""
    chosen = os.environ.get(SOCKET_ENV)
    if chosen is not None:
        return chosen or None
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime and os.path.isdir(runtime):
        return os.path.join(runtime, "efx-serve.sock")
    return os.path.join(tempfile.gettempdir(), f"efx-{os.getuid()}", "serve.sock")


def build() -> str:
    """This efx: its version and its files' sizes and dates (an edited or upgraded efx is
    another efx: a server running the old one is stale)."""
    from .version import __version__

    digest = hashlib.sha1(__version__.encode())
    files.digest_tree(digest, os.path.dirname(os.path.abspath(__file__)))
    return f"{__version__}+{digest.hexdigest()[:12]}"


def model_stamp(handle: str) -> str:
    """What says a model's files changed: a folder's files' sizes and dates, a tarball's; a
    TF-Hub handle is its name (tensorflow-hub's cache never changes a handle's files)."""
    digest = hashlib.sha1(handle.encode())
    if os.path.isdir(handle):
        files.digest_tree(digest, handle)
    elif os.path.isfile(handle):
        stat = os.stat(handle)
        digest.update(f"{stat.st_size}|{stat.st_mtime_ns}".encode())
    return digest.hexdigest()[:16]


@dataclass(frozen=True)
class Asked:
    """The model settings a run (or a server) was given, before the model is loaded."""

    handle: str
    image_size: int | None
    batch_size: int | None
    precision: str
    backend: str

    @classmethod
    def of(cls, spec: ModelSpec, settings: Settings) -> Asked:
        return cls(
            spec.handle, settings.image_size, settings.batch_size, settings.precision,
            settings.backend,
        )  # fmt: skip


def refusal(hello: dict[str, Any], asked: Asked, built: str) -> str | None:
    """Why a server that answered `hello` cannot do a run that asked for `asked` (None: it
    can). It must be this efx, serve this model, its files unchanged, and give what the run
    would have got loading the model itself."""
    theirs, loaded = Asked(**hello["asked"]), hello["loaded"]
    if hello["build"] != built:
        return f"it runs another efx ({hello['build']}, this is {built}): restart it"
    if theirs.handle != asked.handle:
        return f"it serves another model ({theirs.handle})"
    if hello["model_stamp"] != model_stamp(asked.handle):
        return "the model's files changed since it loaded them: restart it"
    mismatches = {
        # Asked for the model's own size: so must the server have been; else that size.
        "--image-size": theirs.image_size is not None
        if asked.image_size is None
        else asked.image_size != loaded["image_size"],
        # TensorFlow's rows depend on the batch (OpenVINO's do not): the same default, or that.
        "--batch-size": theirs.batch_size is not None
        if asked.batch_size is None
        else asked.batch_size != loaded["batch_size"],
        "--precision": asked.precision != theirs.precision,
        "--backend": theirs.backend != "auto"
        if asked.backend == "auto"
        else asked.backend != loaded["backend"],
    }
    differ = [flag for flag, different in mismatches.items() if different]
    if differ:
        return f"it runs the model with another {', '.join(differ)}"
    return None


# Messages --------------------------------------------------------------------------------


def send(sock: socket.socket, header: dict[str, Any], payload: bytes = b"") -> None:
    data = json.dumps({**header, "bytes": len(payload)}).encode()
    sock.sendall(_HEADER.pack(len(data)) + data + payload)


def receive(sock: socket.socket) -> tuple[dict[str, Any], bytes]:
    """One message; ConnectionError when the other end has gone."""
    (length,) = _HEADER.unpack(_exactly(sock, _HEADER.size))
    header = json.loads(_exactly(sock, length))
    return header, _exactly(sock, int(header["bytes"]))


def _exactly(sock: socket.socket, count: int) -> bytes:
    chunks, left = [], count
    while left:
        chunk = sock.recv(min(left, 1 << 20))
        if not chunk:
            raise ConnectionError("the other end closed the connection")
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def _peer_uid(sock: socket.socket) -> int:
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _CREDENTIALS.size)
    return int(_CREDENTIALS.unpack(creds)[1])


def _wire(inp: Input) -> list[Any]:
    """An input as the server needs it: where its bytes are (a path made absolute: the server
    runs elsewhere; a name that is not UTF-8 kept by surrogate escapes)."""
    path = inp.path if remote.is_url(inp.path) else os.path.abspath(inp.path)
    return [inp.key, path, list(inp.member) if inp.member else None]


def _unwire(item: list[Any]) -> Input:
    key, path, member = item
    return Input(key, path, Member(*member) if member else None)


# The client: an engine whose model runs in the server ------------------------------------


class ServedEngine:
    """The engine of a run whose model the server runs (efx.engine.Engine)."""

    def __init__(self, sock: socket.socket, path: str, hello: dict[str, Any]) -> None:
        self._sock, self._path, self._hello = sock, path, hello

    def load_model(
        self, spec: ModelSpec, settings: Settings, images: int | None = None
    ) -> LoadedModel:
        loaded = self._hello["loaded"]
        known = {f.name for f in fields(LoadedModel)} - {"embed", "notes"}
        known &= set(loaded)
        served = f"the model ran in efx serve (process {self._hello['pid']}, {self._path})"
        return LoadedModel(
            **{name: loaded[name] for name in known}, embed=_runs_in_the_server,
            notes=[*loaded["notes"], served],
        )  # fmt: skip

    def batches(
        self, inputs: Sequence[Input], options: DecodeOptions, loaded: LoadedModel
    ) -> Iterator[Batch]:
        """The server's batches, each with the reasons of its failed inputs."""
        if not inputs:
            return
        request = {
            "op": "embed", "inputs": [_wire(inp) for inp in inputs],
            "options": asdict(options), "storage_options": remote.storage_options(),
        }  # fmt: skip
        try:
            send(self._sock, request)
            while True:
                header, payload = receive(self._sock)
                if "error" in header:
                    raise EfxError(f"efx serve ({self._path}): {header['error']}")
                if header.get("done"):
                    return
                count, dim = header["count"], header["dim"]
                positions = np.frombuffer(payload[: 8 * count], np.int64)
                ok = np.frombuffer(payload[8 * count : 9 * count], np.bool_)
                embeddings = np.frombuffer(payload[9 * count :], np.float32).reshape(-1, dim)
                reasons = {int(position): why for position, why in header["reasons"].items()}
                yield Batch(positions, embeddings, ok, reasons)
        except OSError as error:  # ConnectionError included: the server stopped
            raise EfxError(
                f"efx serve ({self._path}) stopped answering during the run ({error}); the "
                "rows so far are written: run the same command with --resume"
            ) from None

    def close(self) -> None:
        self._sock.close()


def _runs_in_the_server(images: Any) -> np.ndarray:
    raise RuntimeError("this model runs in efx serve: its batches come from ServedEngine")


def connect(spec: ModelSpec, settings: Settings) -> tuple[ServedEngine | None, str | None]:
    """The server's engine if one is running that can do this run; else (None, why not) where
    a server answered but cannot (said to the user), (None, None) where none runs."""
    path = socket_path()
    if path is None or not os.path.exists(path):
        return None, None
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.settimeout(5.0)  # a server answers a hello at once, even while it embeds
        sock.connect(path)
        if _peer_uid(sock) != os.getuid():
            raise _Foreign("it runs as another user")
        send(sock, {"op": "hello"})
        hello, _ = receive(sock)
        why = refusal(hello, Asked.of(spec, settings), build())
    except _Foreign as foreign:
        sock.close()
        return None, f"not using the efx server at {path}: {foreign}"
    except (OSError, ValueError, KeyError, TypeError):  # none there (a stale socket), or not one
        sock.close()
        return None, None
    if why is not None:
        sock.close()
        return None, f"not using the efx server at {path} (process {hello['pid']}): {why}"
    sock.settimeout(None)  # a batch takes as long as it takes
    return ServedEngine(sock, path, hello), None


class _Foreign(Exception):
    pass


# The server -------------------------------------------------------------------------------


class Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    """Answers hellos at once; runs one embedding request at a time (the model has the
    machine's cores to itself), the others wait their turn."""

    daemon_threads = True

    def __init__(self, path: str, asked: Asked, loaded: LoadedModel) -> None:
        self.asked, self.loaded = asked, loaded
        self.hello = {
            "build": build(), "pid": os.getpid(), "asked": asdict(asked),
            "model_stamp": model_stamp(asked.handle),
            "loaded": {f.name: getattr(loaded, f.name) for f in fields(loaded)
                       if f.name != "embed"},
        }  # fmt: skip
        self.turn = threading.Lock()
        super().__init__(path, _Connection)


class _Connection(socketserver.BaseRequestHandler):
    server: Server

    def handle(self) -> None:
        sock = self.request
        if _peer_uid(sock) != os.getuid():
            return  # another user's process: not even a hello
        with contextlib.suppress(OSError):  # the run went away (Ctrl-C): its request ends
            while True:
                header, _ = receive(sock)
                if header["op"] == "hello":
                    send(sock, self.server.hello)
                elif header["op"] == "embed":
                    with self.server.turn:
                        self._embed(sock, header)

    def _embed(self, sock: socket.socket, request: dict[str, Any]) -> None:
        from .batches import direct_batches

        inputs = [_unwire(item) for item in request["inputs"]]
        try:
            options = DecodeOptions(**request["options"])
            remote.configure(request["storage_options"])
            batches = direct_batches(inputs, options, self.server.loaded)
            for positions, embeddings, ok, failed in batches:
                reasons = {str(position): why for position, why in failed.items()}
                payload = b"".join(
                    [positions.astype(np.int64).tobytes(), ok.astype(np.bool_).tobytes(),
                     np.ascontiguousarray(embeddings, np.float32).tobytes()]
                )  # fmt: skip
                header = {"count": len(positions), "dim": self.server.loaded.feature_dim}
                send(sock, {**header, "reasons": reasons}, payload)
        except ConnectionError:
            raise  # the run went away
        except Exception as error:  # noqa: BLE001 - said to the run; a bug's traceback here
            if not isinstance(error, (EfxError, OSError)):
                traceback.print_exc()
            send(sock, {"error": str(error) or type(error).__name__})
            return
        send(sock, {"done": True})


def prepare_socket(path: str) -> None:
    """Make the socket's folder (0700, the user's own) and clear a stale socket; refuse when
    a server already answers there."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, mode=0o700, exist_ok=True)
    stat = os.stat(folder)
    if stat.st_uid != os.getuid():
        raise EfxError(f"the socket's folder {folder} belongs to another user; set {SOCKET_ENV}")
    if not os.path.exists(path):
        return
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.settimeout(5.0)
        probe.connect(path)
    except OSError:
        os.unlink(path)  # left by a server that stopped without removing it (kill -9)
        return
    finally:
        probe.close()
    raise EfxError(
        f"an efx server is already running at {path}; stop it first (Ctrl-C where it runs), or "
        f"start this one elsewhere with --socket PATH (and {SOCKET_ENV}=PATH for the runs)"
    )


def run(path: str | None, say: Any, **options: Any) -> None:
    """`efx serve`: load the model once (as a run would), listen at `path` (default:
    socket_path()), and answer runs until Ctrl-C or SIGTERM; the socket is removed on the way
    out. `options` are efx.config.Settings' fields, as efx.extract takes them (the model and
    its settings); `say(text)` hears what a person should know (loading, ready, stopped)."""
    settings = Settings(**options)
    from .model import check_precision, load_model

    path = path or socket_path()
    if path is None:
        raise EfxError(f"{SOCKET_ENV} is empty (no server): pass --socket PATH")
    if len(os.fsencode(path)) > 100:  # sun_path: 108 bytes on Linux
        raise EfxError(f"the socket path is too long for a Unix socket (max 100 bytes): {path}")
    spec = asked_model(settings.model)
    check_precision(settings.precision, settings.backend)
    prepare_socket(path)
    say(f"loading {spec.handle} ...")
    # One image per batch on OpenVINO (rows do not depend on the batch there): a one-image run
    # is then one image's compute, not a padded batch's.
    loaded = load_model(
        spec, settings.image_size, settings.batch_size, settings.precision, settings.backend, 1
    )
    warm_up(loaded)
    prepare_socket(path)  # (another server may have started meanwhile)
    server = bind(path, Asked.of(spec, settings), loaded)
    for note in loaded.notes:
        say(f"note: {note}")
    say(
        f"serving {loaded.name} ({loaded.backend} {loaded.precision}, {loaded.image_size}x"
        f"{loaded.image_size}, batch {loaded.batch_size}) at {path}: efx extract and efx "
        "similar with this model use it. Ctrl-C stops it."
    )
    try:
        with process.sigterm_stops():  # SIGTERM stops it as Ctrl-C does
            server.serve_forever(poll_interval=0.5)
    except KeyboardInterrupt:
        pass  # how a server is stopped
    finally:
        server.server_close()
        with contextlib.suppress(OSError):
            os.unlink(path)
        say("server stopped")


def bind(path: str, asked: Asked, loaded: LoadedModel) -> Server:
    """The server, listening at `path` (0600: only this user can connect)."""
    previous = os.umask(0o177)
    try:
        return Server(path, asked, loaded)
    finally:
        os.umask(previous)


def warm_up(loaded: LoadedModel) -> None:
    """Pay the decoder's first-call costs (tracing, instantiation: ~2 s) before the first run
    does: one small PNG decoded with the default decode settings, and embedded."""
    from PIL import Image

    from .batches import direct_batches

    with tempfile.TemporaryDirectory(prefix="efx-serve-") as scratch:
        image = os.path.join(scratch, "warm-up.png")
        Image.new("RGB", (64, 48), (120, 80, 40)).save(image)
        options = DecodeOptions(loaded.image_size)
        for _ in direct_batches([Input(image, image)], options, loaded):
            pass
