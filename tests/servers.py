"""Servers on 127.0.0.1 for the object-store tests and scripts/bench_remote.py: an S3-compatible
store (moto in server mode, as s3fs and Ray test against it) that counts requests and can add
latency to each, and a plain HTTP server with Range requests that can drop connections."""

from __future__ import annotations

import http.server
import logging
import os
import re
import threading
import time
from collections import Counter
from typing import Any

# What boto and s3fs need to talk to the loopback store, and nothing else (no instance-metadata
# probe, no real credentials).
S3_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_EC2_METADATA_DISABLED": "true",
}


class S3Server:
    """moto's S3 on a free loopback port. `requests` counts (method, kind) with kind "object"
    (a key read or written), "list" (a listing) or "bucket"; `latency` seconds are slept before
    each request is answered (the network between a machine and its region's store)."""

    def __init__(self, latency: float = 0.0) -> None:
        from moto.server import ThreadedMotoServer

        logging.getLogger("werkzeug").setLevel(logging.ERROR)
        self.latency = latency
        self.requests: Counter[tuple[str, str]] = Counter()
        self.log: list[tuple[str, str]] = []  # (method, path) of every request
        self._lock = threading.Lock()
        self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        self._server.start()
        wsgi = self._server._server  # werkzeug's server: its handler calls `server.app`
        inner = wsgi.app
        wsgi.app = lambda environ, start: self._serve(inner, environ, start)
        host, port = self._server.get_host_and_port()
        self.endpoint = f"http://{host}:{port}"

    def _serve(self, inner: Any, environ: dict[str, Any], start: Any) -> Any:
        path, query = environ.get("PATH_INFO", ""), environ.get("QUERY_STRING", "")
        kind = "list" if "list-type" in query or "prefix=" in query else (
            "object" if path.strip("/").count("/") >= 1 else "bucket"
        )  # fmt: skip
        with self._lock:
            self.requests[(environ["REQUEST_METHOD"], kind)] += 1
            self.log.append((environ["REQUEST_METHOD"], path))
        if self.latency:
            time.sleep(self.latency)
        return inner(environ, start)

    def env(self) -> dict[str, str]:
        return {**S3_ENV, "AWS_ENDPOINT_URL": self.endpoint}

    def clear(self) -> None:
        with self._lock:
            self.requests.clear()
            self.log.clear()

    def touched(self, suffixes: tuple[str, ...]) -> list[tuple[str, str]]:
        """The requests (GET or HEAD) for keys ending with one of `suffixes` since `clear`."""
        with self._lock:
            return [(m, p) for m, p in self.log if p.lower().endswith(suffixes)]

    def stop(self) -> None:
        self._server.stop()


def filesystem(server: S3Server) -> Any:
    """An s3fs filesystem of the loopback store (a fresh one: no listing cache)."""
    import s3fs

    return s3fs.S3FileSystem(
        key="testing", secret="testing", client_kwargs={"endpoint_url": server.endpoint},
        skip_instance_cache=True, use_listings_cache=False,
    )  # fmt: skip


class _Handler(http.server.SimpleHTTPRequestHandler):
    """Files of a folder, with single Range requests (as object stores and CDNs answer them).
    `/drop/...` closes every connection without an answer; `/flaky/...` drops the first request
    for each file, then serves it; `/unsteady/...` drops every other request for each file
    (a connection lost in the middle of a shard); `/denied/...` answers 403; `/whole/...`
    ignores Range and answers 200 with the whole body (as `python -m http.server` does);
    `/chunked/...` sends the body in chunks with no Content-Length, not even to HEAD (a dynamic
    endpoint, a streaming gateway)."""

    seen: Counter[str] = Counter()
    lock = threading.Lock()

    def log_message(self, *args: Any) -> None:
        pass

    def _gate(self) -> str | None:
        """The real path to serve, or None when this request was answered (or dropped)."""
        path = self.path
        if path.startswith("/drop/"):
            self.close_connection = True
            self.connection.close()
            return None
        if path.startswith("/denied/"):
            self.send_error(403)
            return None
        if path.startswith("/flaky/"):
            with self.lock:
                self.seen[path] += 1
                first = self.seen[path] == 1
            if first:
                self.close_connection = True
                self.connection.close()
                return None
            return path[len("/flaky") :]
        if path.startswith("/unsteady/"):
            with self.lock:
                self.seen[path] += 1
                odd = self.seen[path] % 2 == 1
            if odd:
                self.close_connection = True
                self.connection.close()
                return None
            return path[len("/unsteady") :]
        return path

    plain = False  # this request is answered as a server without ranges answers it

    def do_HEAD(self) -> None:
        self.plain = self.path.startswith(("/chunked/", "/whole/"))
        if self.path.startswith("/chunked/"):
            self._chunked(head=True)
        elif (path := self._gate()) is not None:
            self.path = path.removeprefix("/whole")
            super().do_HEAD()

    def _chunked(self, head: bool) -> None:
        file = self.translate_path(self.path[len("/chunked") :])
        if not os.path.isfile(file):
            self.send_error(404)
            return
        with open(file, "rb") as handle:
            data = handle.read()
        self.protocol_version = "HTTP/1.1"
        self.send_response(200)
        self.send_header("Transfer-Encoding", "chunked")
        self.send_header("Connection", "close")
        self.end_headers()
        if not head:
            for at in range(0, len(data), 16384):
                piece = data[at : at + 16384]
                self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
            self.wfile.write(b"0\r\n\r\n")
        self.close_connection = True

    def do_GET(self) -> None:
        self.plain = self.path.startswith(("/chunked/", "/whole/"))
        if self.path.startswith("/chunked/"):
            self._chunked(head=False)
            return
        if self.path.startswith("/whole/"):
            self.path = self.path[len("/whole") :]
            super().do_GET()  # SimpleHTTPRequestHandler ignores Range (python/cpython#86809)
            return
        path = self._gate()
        if path is None:
            return
        self.path = path
        wanted = re.match(r"bytes=(\d+)-(\d*)$", self.headers.get("Range", ""))
        if not wanted:
            super().do_GET()
            return
        file = self.translate_path(path)
        if not os.path.isfile(file):
            self.send_error(404)
            return
        size = os.path.getsize(file)
        first = int(wanted.group(1))
        last = min(int(wanted.group(2)) if wanted.group(2) else size - 1, size - 1)
        if first >= size:
            self.send_error(416)
            return
        with open(file, "rb") as handle:
            handle.seek(first)
            data = handle.read(last - first + 1)
        self.send_response(206)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Range", f"bytes {first}-{last}/{size}")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Accept-Ranges", "bytes")
        self.end_headers()
        self.wfile.write(data)

    def end_headers(self) -> None:
        if not self.plain and "Accept-Ranges" not in str(getattr(self, "_headers_buffer", b"")):
            self.send_header("Accept-Ranges", "bytes")
        super().end_headers()


class HTTPServer:
    """`folder` served on a free loopback port at `url`."""

    def __init__(self, folder: str) -> None:
        handler = type("Handler", (_Handler,), {"seen": Counter()})
        self._server = http.server.ThreadingHTTPServer(
            ("127.0.0.1", 0), lambda *a, **k: handler(*a, directory=folder, **k)
        )
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self._server.server_port}"

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
