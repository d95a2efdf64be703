"""A maintained HTTP server for the remote-file tests: aiohttp's static file responses
(``aiohttp.web.FileResponse``: ``Range``, ``HEAD``, ``ETag``, ``Last-Modified``, ``If-Range``
as aiohttp implements them), on a free loopback port, in a thread of its own.

It has the interface of :class:`tests.support.http_server.FileServer` (``put``, ``url``,
``stats``), whose own small server stays for what no real server does on purpose (ignoring
``Range`` while saying so, short bodies).  Bytes are counted on the server side: each GET's
``Content-Length`` as the response is prepared (what aiohttp then sends, by ``sendfile``).
"""

from __future__ import annotations

import asyncio
import os
import re
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from aiohttp import web

from .http_server import Stats

__all__ = ["StaticServer", "serve_static"]

_RANGE = re.compile(r"bytes (\d+)-(\d+)/")


class StaticServer:
    """Files by URL path (``/name``), each a file on disk; :meth:`put` again to change one."""

    def __init__(self) -> None:
        self.files: dict[str, str] = {}
        self.stats = Stats()
        self._folder = tempfile.TemporaryDirectory(prefix="pthfmt-static-")
        self._made = 0
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.port = 0
        self._runner: web.AppRunner | None = None

    def put(self, name: str, content: str | bytes | os.PathLike[str]) -> str:
        """Serve ``content`` (bytes, or a file's path) at ``/name``; returns its URL."""
        if isinstance(content, bytes):
            self._made += 1
            path = os.path.join(self._folder.name, f"{self._made}-{os.path.basename(name)}")
            with open(path, "wb") as fh:
                fh.write(content)
            content = path
        self.files["/" + name] = os.fspath(content)
        return self.url(name)

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.port}/{name}"

    async def _file(self, request: web.Request) -> web.StreamResponse:
        with self.stats.lock:
            self.stats.requests += 1
        path = self.files.get(request.path)
        if path is None:
            raise web.HTTPNotFound()
        return web.FileResponse(path)

    async def _count(self, request: web.Request, response: web.StreamResponse) -> None:
        if request.method != "GET" or response.status not in (200, 206):
            return
        length = response.content_length or 0
        found = _RANGE.match(response.headers.get("Content-Range", ""))
        start = int(found.group(1)) if found else 0
        with self.stats.lock:
            self.stats.body_bytes += length
            self.stats.ranges.append((start, length))

    async def _start(self) -> None:
        app = web.Application()
        app.router.add_route("*", "/{name:.*}", self._file)
        app.on_response_prepare.append(self._count)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        server = site._server
        assert server is not None
        self.port = server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    def start(self) -> StaticServer:
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self.loop).result(30)
        return self

    def stop(self) -> None:
        if self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self.loop).result(30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()
        self._folder.cleanup()


@contextmanager
def serve_static(**kwargs: Any) -> Iterator[StaticServer]:
    server = StaticServer(**kwargs).start()
    try:
        yield server
    finally:
        server.stop()
