"""Objects by URL (`s3://bucket/key`, `gs://bucket/key`, `https://host/path`): the one place efx
talks to an object store or web server, through fsspec (s3fs, gcsfs, fsspec's HTTP filesystem).
No TensorFlow.

A URL is turned into a filesystem here, once per protocol (fsspec's `core.url_to_fs`); the rest
of efx passes URLs around as it passes paths. Credentials and endpoints come the way those
libraries take them (AWS_* variables and ~/.aws for S3, `AWS_ENDPOINT_URL` for S3 compatibles,
Google's application default credentials for gs://, fsspec's `FSSPEC_<PROTOCOL>_<OPTION>`
variables and config files), plus `--storage-option KEY=VALUE` (`configure`).

Reads of whole objects are retried with backoff on errors that may pass (timeouts, dropped
connections, 5xx, 429): `ATTEMPTS` in all. What cannot be read becomes a reason a person
understands (`reason`): `HTTP 404`, `s3: access denied`, `connection reset after 3 attempts`.
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import re
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, BinaryIO

from .errors import EfxError

_URL = re.compile(r"^([a-zA-Z][a-zA-Z0-9+.-]*)://")
ATTEMPTS = 3
BACKOFF_SECONDS = 0.5  # before the 2nd attempt; doubled before each further one
# Shards are read through a read-ahead buffer of this many bytes per request: a 2 GB shard
# streams in ranges, one block in memory (s3fs's own default block is 50 MiB).
BLOCK_BYTES = 8 << 20

_INSTALL = {
    "s3": "s3fs", "s3a": "s3fs", "gs": "gcsfs", "gcs": "gcsfs", "http": "aiohttp",
    "https": "aiohttp",
}  # fmt: skip
_EXTRA = {"s3fs": "s3", "gcsfs": "gcs", "aiohttp": "http"}

_options: dict[str, Any] = {}
_filesystems: dict[str, Any] = {}
_listed: dict[str, dict[str, Any]] = {}  # URL -> what a listing said of it (size, date)
_streamed: set[str] = set()  # URLs whose server serves no ranges: read as streams from the start
_lock = threading.Lock()


def is_url(path: str) -> bool:
    """Whether `path` names an object by URL (any fsspec protocol but file://)."""
    found = _URL.match(path)
    return found is not None and found.group(1).lower() != "file"


def protocol(url: str) -> str:
    found = _URL.match(url)
    return found.group(1).lower() if found else "file"


def configure(options: dict[str, Any] | None) -> None:
    """Storage options given to every URL's filesystem, on top of those fsspec reads from its
    environment variables and config files; None keeps those set. A process that serves one
    caller (a Ray worker, efx serve's handler) sets its caller's; a library call sets them for
    itself with `using`."""
    if options is None:
        return
    with _lock:
        if options == _options:
            return  # (the filesystems, and what their listings said, stay valid)
        _options.clear()
        _options.update(options)
        _filesystems.clear()
        _listed.clear()
        _streamed.clear()


@contextlib.contextmanager
def using(options: dict[str, Any] | None) -> Iterator[None]:
    """`options` (`--storage-option`) for every URL's filesystem during one library call, then
    those in force before it: a call leaves the process as it found it. None: those in force."""
    before = storage_options()
    configure(options)
    try:
        yield
    finally:
        configure(before)


def storage_options() -> dict[str, Any]:
    """The options in force (for Ray workers and efx serve, which configure their own
    process)."""
    return dict(_options)


def parse_option(text: str) -> tuple[str, Any]:
    """`KEY=VALUE` of --storage-option: VALUE as JSON when it is JSON (`true`, `3`,
    `{"a": 1}`), else as text. Raises EfxError naming what was received."""
    import json

    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise EfxError(
            "--storage-option takes KEY=VALUE, e.g. endpoint_url=http://127.0.0.1:9000 or "
            f"anon=true. Received: {text!r}"
        )
    try:
        return key.strip(), json.loads(value)
    except ValueError:
        return key.strip(), value


def filesystem(url: str) -> tuple[Any, str]:
    """(fsspec filesystem, its path for `url`). Raises EfxError when the protocol's package is
    not installed, saying which extra installs it."""
    scheme = protocol(url)
    with _lock:
        fs = _filesystems.get(scheme)
    if fs is None:
        # gcsfs logs each failed attempt with its traceback at WARNING: efx says why, once.
        logging.getLogger("gcsfs").setLevel(logging.CRITICAL)
        try:
            import fsspec

            fs, _ = fsspec.core.url_to_fs(url, **_options)
        except ImportError as error:
            package = _INSTALL.get(scheme, getattr(error, "name", None) or "fsspec")
            extra = _EXTRA.get(package)
            how = f"pip install 'efx[{extra}]'" if extra else f"pip install {package}"
            raise EfxError(f"{scheme}:// URLs need {package}: {how}") from None
        except (TypeError, ValueError) as error:
            if "Protocol not known" in str(error):
                raise EfxError(
                    f"unknown URL scheme {scheme}:// (efx reads s3://, gs://, http(s):// and "
                    f"fsspec's other protocols). Received: {url}"
                ) from None
            raise EfxError(f"cannot use {scheme}:// with these storage options: {error}") from None
        except Exception as error:  # noqa: BLE001 - ftp:// and others connect when made
            raise EfxError(f"cannot open {url}: {reason(error)}") from None
        with _lock:
            _filesystems[scheme] = fs
    return fs, fs._strip_protocol(url)


def url_of(fs: Any, path: str, like: str) -> str:
    """The URL of `path` (as `fs` names it) in the protocol of the URL `like`."""
    if protocol(like) in ("http", "https"):
        return path
    return f"{protocol(like)}://{path}"


def join(url: str, name: str) -> str:
    return url.rstrip("/") + "/" + name


def walk(url: str, wanted: Callable[[str], bool]) -> list[str]:
    """The URLs of the objects below the prefix `url` whose names `wanted` takes, sorted by
    their path relative to the prefix (as a folder walk sorts). Their sizes and dates are kept
    (`stat` answers from them: a no-change --update lists the prefix and reads nothing).
    Raises EfxError if the prefix cannot be listed."""
    fs, root = filesystem(url)
    try:
        fs.invalidate_cache(root)  # a long-lived process (the Python API) lists afresh
        found = fs.find(root, detail=True)
    except Exception as error:  # noqa: BLE001 - every library's error, told in words
        raise EfxError(f"cannot list {url}: {reason(error)}") from None
    urls = []
    with _lock:
        for path, info in found.items():
            if info.get("type", "file") != "file" or not wanted(path):
                continue
            full = url_of(fs, path, url)
            _listed[full] = info
            urls.append(full)
    prefix = len(root.rstrip("/"))
    return sorted(urls, key=lambda u: fs._strip_protocol(u)[prefix:])


def forget_listings() -> None:
    """Drop what earlier listings said (a new run asks again)."""
    with _lock:
        _listed.clear()


def info(url: str) -> dict[str, Any]:
    """What the store says of an object (from a listing when it was listed); OSError if it
    is not there or cannot be asked."""
    with _lock:
        known = _listed.get(url)
    if known is not None:
        return known
    fs, path = filesystem(url)
    try:
        found: dict[str, Any] = _retried(lambda: fs.info(path))
    except OSError:
        raise
    except Exception as error:  # noqa: BLE001
        raise RemoteError(reason(error)) from error
    return found


def stat(url: str) -> tuple[int, int] | None:
    """(size in bytes, modification time in ns since the epoch; each -1 where the store does
    not say) of an object; None if it is not there or not a file."""
    try:
        found = info(url)
    except OSError:
        return None
    if found.get("type", "file") != "file":
        return None
    size = found.get("size")  # None: a web server that gives no length (chunked)
    return (-1 if size is None else int(size)), _mtime_ns(found)


def _mtime_ns(found: dict[str, Any]) -> int:
    """An object's modification time: S3's LastModified, GCS's `updated`, HTTP's
    Last-Modified; -1 when there is none (then --update reads its bytes to compare)."""
    value = next(
        (found[k] for k in ("LastModified", "updated", "mtime", "Last-Modified") if k in found),
        None,
    )
    if isinstance(value, str):
        from email.utils import parsedate_to_datetime

        try:
            value = (
                parsedate_to_datetime(value)
                if "," in value
                else datetime.datetime.fromisoformat(value.replace("Z", "+00:00"))
            )
        except (TypeError, ValueError):
            return -1
    if isinstance(value, datetime.datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=datetime.timezone.utc)
        return int(value.timestamp()) * 1_000_000_000 + value.microsecond * 1000
    if isinstance(value, int | float):
        return int(value * 1e9)
    return -1


def exists(url: str) -> bool:
    return stat(url) is not None


def is_prefix(url: str) -> bool:
    """Whether `url` names a folder-like prefix (objects below it), not an object. Raises
    EfxError when the store cannot be asked (a missing bucket, bad credentials)."""
    if protocol(url) in ("http", "https"):
        return False  # no listing over plain HTTP: a URL is a file
    fs, path = filesystem(url)
    try:
        return bool(fs.isdir(path))
    except Exception as error:  # noqa: BLE001
        raise EfxError(f"cannot read {url}: {reason(error)}") from None


def check_source(url: str) -> None:
    """End the run before any work when `url` cannot be a source: a missing bucket, bad
    credentials, a missing object, a folder over plain HTTP (which has no listing). One clear
    line (EfxError)."""
    web = protocol(url) in ("http", "https")
    if web and url.endswith("/"):
        raise EfxError(
            f"{url} names a folder, and plain HTTP has no listing: give the URLs of the files "
            "or shards (as SOURCEs, or one per line on stdin with SOURCE -)"
        )
    fs, path = filesystem(url)
    try:
        _retried(lambda: fs.info(path))
        return
    except FileNotFoundError as error:
        missing: BaseException = error
        if status_of(error) not in (None, 404):  # fsspec's HTTP says "not found" for a 403
            raise EfxError(f"source cannot be read: {url} ({reason(error)})") from None
    except Exception as error:  # noqa: BLE001
        raise EfxError(f"source cannot be read: {url} ({reason(error)})") from None
    if not web:
        try:
            fs.ls(path.split("/", 1)[0])  # a missing bucket or bad credentials say so here
        except Exception as error:  # noqa: BLE001
            missing = error
    why = reason(missing)
    if why not in ("no such object", "HTTP 404: not found"):
        raise EfxError(f"source cannot be read: {url} ({why})")
    raise EfxError(f"source not found: {url} (no such object or prefix)")


def open_file(url: str, whole: bool = False) -> BinaryIO:
    """`url` opened for reading, seekable, read in ranges of BLOCK_BYTES; RemoteError (an
    OSError whose text is the reason) if it cannot be opened.

    A web server that serves no byte ranges (it answers a Range request with the whole body,
    as `python -m http.server` does) or gives no length (chunked transfer) is read front to
    back as one stream instead, as curl and webdataset read it: a seek forwards skips, a seek
    backwards asks again from the start. With `whole` (a format read from its end: Parquet's
    footer), such an object is first copied into an anonymous temporary file (removed when
    closed) and read from there."""
    fs, path = filesystem(url)
    try:
        opened = _retried(
            lambda: fs.open(path, "rb", block_size=BLOCK_BYTES, cache_type="readahead")
        )
    except Exception as error:  # noqa: BLE001
        raise RemoteError(reason(error)) from error
    restart = None
    if protocol(url) in ("http", "https"):
        restart = lambda: fs.open(path, "rb", block_size=0)  # noqa: E731 - a stream from the top
    file = _Retrying(opened, restart, whole, url)
    with _lock:
        known = url in _streamed  # (found before: no ranged request to fail first)
    if restart is not None and (known or getattr(opened, "size", 0) is None):  # no length
        file.front_to_back()
    return file  # type: ignore[return-value]


class _Retrying:
    """A file of fsspec's whose reads are retried (ATTEMPTS, from the same offset) on errors
    that may pass, and whose errors are RemoteErrors (OSErrors) with a reason: a connection
    dropped in the middle of a 2 GB shard costs a retry, not the shard, and the readers
    (tarfile, pyarrow, the TFRecord reader) handle it as any read error. A web object whose
    server serves no ranges is read on as a stream (`front_to_back`: see open_file)."""

    def __init__(
        self, file: Any, restart: Callable[[], Any] | None = None, whole: bool = False,
        url: str = "",
    ) -> None:  # fmt: skip
        self._file = file
        self._restart = restart
        self._whole = whole
        self._url = url

    def front_to_back(self) -> None:
        """Read the object as one stream from its start from now on (see open_file)."""
        assert self._restart is not None
        with _lock:
            _streamed.add(self._url)
        at = self._file.tell()
        with contextlib.suppress(Exception):
            self._file.close()
        self._file = _spooled(self._restart) if self._whole else _Stream(self._restart)
        self._file.seek(at)
        self._restart = None

    def read(self, size: int = -1) -> bytes:
        return self._again(lambda: self._file.read(size))  # type: ignore[no-any-return]

    def readinto(self, buffer: Any) -> int:
        return self._again(lambda: self._file.readinto(buffer))  # type: ignore[no-any-return]

    def seek(self, offset: int, whence: int = 0) -> int:
        return self._file.seek(offset, whence)  # type: ignore[no-any-return]

    def _again(self, call: Callable[[], Any]) -> Any:
        at = self._file.tell()

        def from_there() -> Any:
            self._file.seek(at)
            return call()

        try:
            return _retried(from_there)
        except Exception as error:  # noqa: BLE001
            if self._restart is not None and _no_ranges(error):
                try:
                    self.front_to_back()
                except Exception as again:  # noqa: BLE001
                    raise RemoteError(reason(again)) from again
                return self._again(call)
            raise RemoteError(reason(error)) from error

    def __enter__(self) -> _Retrying:
        return self

    def __exit__(self, *exc: object) -> None:
        self._file.close()

    def __getattr__(self, name: str) -> Any:  # tell, close, closed, size, seekable ...
        return getattr(self._file, name)


def _no_ranges(error: BaseException) -> bool:
    """fsspec's word for a web server that answered a Range request with the whole body."""
    return isinstance(error, ValueError) and (
        "support range requests" in str(error) or "Cannot seek streaming" in str(error)
    )


class _Stream:
    """A web object read front to back through fsspec's streaming file (`restart()` opens one
    from the start): seeks are noted, and done at the next read, skipping forwards or asking
    again from the top; the first HEAD_BYTES are kept, so sniffing a format costs one request."""

    HEAD_BYTES = 64 << 10

    def __init__(self, restart: Callable[[], Any]) -> None:
        self._restart = restart
        self._file = restart()
        self._at = 0  # where the stream is
        self._want = 0  # where the reader asked to be
        self._head = b""
        self.size = None

    def tell(self) -> int:
        return self._want

    def seek(self, offset: int, whence: int = 0) -> int:
        if whence == 2:
            raise OSError("cannot seek from the end: the server gives no length")
        self._want = offset + (self._want if whence == 1 else 0)
        return self._want

    def read(self, size: int = -1) -> bytes:
        if self._want < self._at:  # backwards: from the kept head, else from the top again
            end = self._want + size
            if size >= 0 and end <= len(self._head):
                data = self._head[self._want : end]
                self._want = end
                return data
            self._file.close()
            self._file, self._at = self._restart(), 0
        while self._at < self._want and self._take(min(self._want - self._at, 1 << 20)):
            pass
        parts, left = [], size
        while left != 0:  # a stream's read may give fewer bytes than asked: read them all
            chunk = self._take(left if left > 0 else 1 << 20)
            if not chunk:
                break
            parts.append(chunk)
            left -= len(chunk) if left > 0 else 0
        self._want = self._at
        return b"".join(parts)

    def _take(self, size: int) -> bytes:
        """Up to `size` bytes from where the stream is (fewer only at its end)."""
        data: bytes = self._file.read(size)
        if self._at == len(self._head) < self.HEAD_BYTES:
            self._head = (self._head + data)[: self.HEAD_BYTES]
        self._at += len(data)
        return data

    def readinto(self, buffer: Any) -> int:
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def seekable(self) -> bool:
        return True

    def close(self) -> None:
        self._file.close()


def _spooled(restart: Callable[[], Any]) -> BinaryIO:
    """The whole object, copied into an anonymous temporary file (gone once closed)."""
    import tempfile

    def copy() -> BinaryIO:
        spool = tempfile.TemporaryFile()  # noqa: SIM115 - handed to the caller, open
        source = restart()
        try:
            while chunk := source.read(1 << 20):
                spool.write(chunk)
        except BaseException:
            spool.close()
            raise
        finally:
            source.close()
        spool.seek(0)
        return spool  # type: ignore[return-value]

    return _retried(copy)  # type: ignore[no-any-return]


def read_object(url: str) -> bytes:
    """The bytes of an object, retried (ATTEMPTS) on errors that may pass; RemoteError (an
    OSError) with a reason for a person if they cannot be read."""
    fs, path = filesystem(url)
    try:
        return _retried(lambda: fs.cat_file(path))  # type: ignore[no-any-return]
    except Exception as error:  # noqa: BLE001
        raise RemoteError(reason(error)) from error


class RemoteError(OSError):
    """An object that could not be read, with the reason (`str(error)`) for its failure."""


def _retried(call: Callable[[], Any]) -> Any:
    wait = BACKOFF_SECONDS
    for attempt in range(1, ATTEMPTS + 1):
        try:
            return call()
        except Exception as error:  # noqa: BLE001
            if attempt == ATTEMPTS or not transient(error):
                if transient(error):
                    error.efx_attempts = ATTEMPTS  # type: ignore[attr-defined]
                raise
        time.sleep(wait)
        wait *= 2
    raise AssertionError("unreachable")


# Errors of reaching the server at all (a wrong endpoint, no network, a name not resolved).
_CONNECTING = {
    "EndpointConnectionError", "ClientConnectorError", "ClientConnectorDNSError",
    "ConnectTimeoutError", "gaierror", "ConnectionRefusedError",
}  # fmt: skip


def names_in_chain(error: BaseException) -> set[str]:
    """The class names of `error` and of the errors it was raised from."""
    found: set[str] = set()
    seen = 0
    current: BaseException | None = error
    while current is not None and seen < 8:
        found.update(cls.__name__ for cls in type(current).__mro__)
        current = current.__cause__ or current.__context__
        seen += 1
    return found


def _short(error: BaseException) -> str:
    """The innermost error's first line: where the connection failed."""
    inner = error
    while (inner.__cause__ or inner.__context__) is not None:
        inner = inner.__cause__ or inner.__context__  # type: ignore[assignment]
    text = " ".join(str(inner).split())
    return text[:160] or type(inner).__name__


_TRANSIENT_NAMES = {
    "ClientConnectionError", "ServerDisconnectedError", "ClientPayloadError",
    "ClientOSError", "ServerTimeoutError", "EndpointConnectionError", "ConnectionClosedError",
    "ReadTimeoutError", "ConnectTimeoutError", "ResponseStreamingError", "IncompleteRead",
    "RemoteDisconnected", "ConnectionError",
}  # fmt: skip


def status_of(error: BaseException) -> int | None:
    """The HTTP status behind an error of aiohttp, botocore or s3fs, if there is one."""
    status = getattr(error, "status", None) or getattr(error, "code", None)
    if isinstance(status, int) and 100 <= status < 600:
        return status
    response = getattr(error, "response", None)
    if isinstance(response, dict):
        code = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        if isinstance(code, int):
            return code
    cause = error.__cause__ or error.__context__
    return status_of(cause) if cause is not None and cause is not error else None


def transient(error: BaseException) -> bool:
    """Whether trying again may succeed: a timeout, a dropped or refused connection, a 5xx or
    429 answer."""
    if isinstance(error, FileNotFoundError | PermissionError | IsADirectoryError):
        return False
    if isinstance(error, ConnectionError | TimeoutError):
        return True
    if any(cls.__name__ in _TRANSIENT_NAMES for cls in type(error).__mro__):
        return True
    status = status_of(error)
    if status is not None:
        return status >= 500 or status == 429
    cause = error.__cause__ or error.__context__
    return cause is not None and cause is not error and transient(cause)


def reason(error: BaseException) -> str:
    """Why an object could not be read or listed, in words: `HTTP 404`, `s3: access denied`,
    `connection reset after 3 attempts`."""
    if isinstance(error, RemoteError):
        return str(error)
    attempts = getattr(error, "efx_attempts", None)
    after = f" after {attempts} attempts" if attempts else ""
    text = str(error).strip()
    status = status_of(error)
    if isinstance(error, PermissionError) or status in (401, 403):
        return "access denied (check the credentials and the bucket's permissions)"
    names = names_in_chain(error)
    if isinstance(error, FileNotFoundError) and names & _CONNECTING:  # fsspec's HTTP says so
        return f"cannot connect to the server ({_short(error)})"
    if isinstance(error, FileNotFoundError) and status in (None, 404):
        if "bucket does not exist" in text.lower():
            return "no such bucket"
        return "HTTP 404: not found" if status == 404 or "http" in text[:5] else "no such object"
    if isinstance(error, ConnectionRefusedError):
        return f"connection refused{after}"
    if names & _CONNECTING or isinstance(error, socket.gaierror):
        return f"cannot connect to the server{after} ({_short(error)})"
    if isinstance(error, TimeoutError) or names & {"ServerTimeoutError", "ReadTimeoutError"}:
        return f"timed out{after}"
    if isinstance(error, ConnectionError) or names & _TRANSIENT_NAMES:
        return f"connection reset{after}"
    if status is not None:
        return f"HTTP {status}{after}"
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    first = " ".join(lines[:2]) if lines and lines[0].endswith(":") else (lines or [""])[0]
    return f"{first or type(error).__name__}{after}"
