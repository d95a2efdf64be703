"""A real HTTP server for the remote-file tests and benchmark, on a free loopback port.

:class:`FileServer` serves files (paths on disk or bytes) from a thread, honours single
``Range`` requests (``bytes=a-b``, ``bytes=a-``, ``bytes=-n``) with ``206`` and
``Content-Range``, answers ``HEAD`` with ``Content-Length``, ``ETag`` and ``Last-Modified``,
and counts, on the server side, the requests it answers and the body bytes it sends.
``ranges=False`` makes it ignore ``Range`` (``200`` and the whole body, as many servers
do); ``short=N`` makes every ranged body stop ``N`` bytes early (with a ``Content-Length``
that says so, which a client must not take for the range it asked for).
"""

from __future__ import annotations

import email.utils
import hashlib
import json
import os
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

__all__ = ["FileServer", "serve", "Stats"]

_RANGE = re.compile(r"bytes=(\d*)-(\d*)$")
_CHUNK = 1 << 20


@dataclass
class Stats:
    requests: int = 0
    body_bytes: int = 0
    ranges: list[tuple[int, int]] = field(default_factory=list)  # (start, length) sent
    lock: threading.Lock = field(default_factory=threading.Lock)

    def reset(self) -> None:
        with self.lock:
            self.requests, self.body_bytes, self.ranges = 0, 0, []


class FileServer:
    """Files by URL path (``/name``): each a path on disk or bytes; replace one with
    :meth:`put` to make a file change under a client."""

    def __init__(self, *, ranges: bool = True, short: int = 0) -> None:
        self.files: dict[str, str | bytes] = {}
        self.stats = Stats()
        self.ranges, self.short = ranges, short
        handler = _handler(self)
        self.httpd = _Quiet(("127.0.0.1", 0), handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def put(self, name: str, content: str | bytes | os.PathLike[str]) -> str:
        """Serve ``content`` (bytes, or a file's path) at ``/name``; returns its URL."""
        self.files["/" + name] = content if isinstance(content, bytes) else os.fspath(content)
        return self.url(name)

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.port}/{name}"

    def start(self) -> FileServer:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(10)


class _Quiet(ThreadingHTTPServer):
    """Clients that hang up mid-answer (as they should, when a server ignores Range) are not
    errors worth a traceback on stderr."""

    def handle_error(self, request: Any, client_address: Any) -> None:
        import sys

        if not isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError)):
            super().handle_error(request, client_address)


@contextmanager
def serve(**kwargs: Any) -> Iterator[FileServer]:
    server = FileServer(**kwargs).start()
    try:
        yield server
    finally:
        server.stop()


def _handler(server: FileServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = True  # (else each small answer waits out a delayed ACK)

        def log_message(self, format: str, *args: Any) -> None:
            pass

        def do_HEAD(self) -> None:
            self._answer(body=False)

        def do_GET(self) -> None:
            self._answer(body=True)

        def _answer(self, body: bool) -> None:
            if self.path in ("/__stats", "/__reset"):
                return self._stats(reset=self.path == "/__reset")
            content = server.files.get(self.path.split("?", 1)[0])
            with server.stats.lock:
                server.stats.requests += 1
            if content is None:
                self.send_response(404)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            size = len(content) if isinstance(content, bytes) else os.path.getsize(content)
            start, length, status = 0, size, 200
            asked = self.headers.get("Range")
            if asked and server.ranges:
                found = _span(asked, size)
                if found is None:
                    self.send_response(416)
                    self.send_header("Content-Range", f"bytes */{size}")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                start, length = found
                status = 206
                length = max(0, length - server.short)
            self.send_response(status)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Accept-Ranges", "bytes" if server.ranges else "none")
            self.send_header("Content-Length", str(length))
            self.send_header("ETag", _etag(content, size))
            if not isinstance(content, bytes):
                mtime = os.path.getmtime(content)
                self.send_header("Last-Modified", email.utils.formatdate(mtime, usegmt=True))
            if status == 206:
                self.send_header("Content-Range", f"bytes {start}-{start + length - 1}/{size}")
            self.end_headers()
            if body:
                self._send(content, start, length)

        def _stats(self, reset: bool) -> None:
            """The counters as JSON (``/__stats``), or reset them (``/__reset``): for a
            client in another process (the benchmark); neither is counted."""
            with server.stats.lock:
                doc = {"requests": server.stats.requests, "body_bytes": server.stats.body_bytes}
            if reset:
                server.stats.reset()
            data = json.dumps(doc).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _send(self, content: str | bytes, start: int, length: int) -> None:
            sent = 0
            try:
                if isinstance(content, bytes):
                    for at in range(start, start + length, _CHUNK):
                        piece = content[at : min(at + _CHUNK, start + length)]
                        self.wfile.write(piece)
                        sent += len(piece)
                else:
                    with open(content, "rb") as fh:
                        fh.seek(start)
                        while sent < length:
                            piece = fh.read(min(_CHUNK, length - sent))
                            if not piece:
                                break
                            self.wfile.write(piece)
                            sent += len(piece)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client stopped reading: what was written so far counts
            finally:
                with server.stats.lock:
                    server.stats.body_bytes += sent
                    server.stats.ranges.append((start, sent))

    return Handler


def _span(header: str, size: int) -> tuple[int, int] | None:
    m = _RANGE.match(header.strip())
    if m is None or (not m.group(1) and not m.group(2)):
        return None
    if not m.group(1):
        n = min(int(m.group(2)), size)
        return size - n, n
    start = int(m.group(1))
    end = int(m.group(2)) if m.group(2) else size - 1
    end = min(end, size - 1)
    if start > end:
        return None
    return start, end - start + 1


def _etag(content: str | bytes, size: int) -> str:
    if isinstance(content, bytes):
        return '"' + hashlib.sha1(content).hexdigest()[:16] + '"'
    st = os.stat(content)
    return f'"{st.st_ino:x}-{size:x}-{st.st_mtime_ns:x}"'


def main() -> None:
    """``python -m tests.support.http_server FILE...``: serve the files (by base name) until
    killed; prints the port on the first line of stdout."""
    import sys

    server = FileServer()
    for path in sys.argv[1:]:
        server.put(os.path.basename(path), path)
    print(server.port, flush=True)
    server.httpd.serve_forever()


if __name__ == "__main__":
    main()
