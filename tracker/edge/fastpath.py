"""The fast path: the hot tracking routes served by a lean protocol on the same event loop.

aiohttp's per-request machinery (request and response objects, routing, a task per
request) costs several times what recording a click does. This protocol parses with
llhttp (httptools) and answers bodiless `GET`/`HEAD` requests for `/c/{slug}` and
impression pixels itself, with the same `click_reply` / `pixel_reply` as the aiohttp
routes. Anything else (other paths or methods, a request with a body, a conversion pixel,
an upgrade) is handed to aiohttp on the same connection, bytes and all, and aiohttp keeps
that connection from then on.

HTTP details kept: keep-alive (HTTP/1.1 by default, HTTP/1.0 on request), pipelining
(answers in order), HEAD (headers of the GET, no body), a bound on request size (431),
400 on malformed requests, and no header value that did not pass validation or
percent-encoding.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import cast
from urllib.parse import unquote

import httptools
from aiohttp import web

from tracker import records
from tracker.edge.clicks import (
    ClickContext,
    Hit,
    Reply,
    click_reply,
    is_conversion_pixel,
    pixel_reply,
)
from tracker.http_limits import MAX_FIELD, MAX_HEADERS, MAX_LINE

REASONS = {
    200: "OK",
    302: "Found",
    400: "Bad Request",
    404: "Not Found",
    431: "Request Header Fields Too Large",
}

CLOSE = "Connection: close\r\n"

_date_line = ""
_date_second = 0


def date_header() -> str:
    """The Date header, formatted once a second."""
    global _date_line, _date_second
    now = int(time.time())
    if _date_second != now:
        _date_line = time.strftime("Date: %a, %d %b %Y %H:%M:%S GMT\r\n", time.gmtime(now))
        _date_second = now
    return _date_line


def encode(reply: Reply, head: bool, keep_alive: bool) -> bytes:
    fields = "".join([f"{name}: {value}\r\n" for name, value in reply.headers])
    data = (
        f"HTTP/1.1 {reply.status} {REASONS.get(reply.status, 'OK')}\r\n{fields}"
        f"Content-Length: {len(reply.body)}\r\n{date_header()}Server: tracker\r\n"
        f"{'' if keep_alive else CLOSE}\r\n"
    ).encode()
    return data if head else data + reply.body


class HandOver(Exception):
    """This request is not for the fast path."""


class TooLarge(Exception):
    """A request line or headers over the limits."""


class FastProtocol(asyncio.Protocol):
    def __init__(
        self, ctx: ClickContext, fallback: Callable[[], asyncio.Protocol], connections: set
    ) -> None:
        self.ctx = ctx
        self.fallback = fallback  # aiohttp's protocol factory
        self.connections = connections
        self.parser = httptools.HttpRequestParser(self)
        self.buffer = bytearray()  # bytes of requests not yet answered
        self.url = b""
        self.headers: dict[str, str] = {}
        self.peer: str | None = None
        self.header_bytes = 0
        self.closing = False

    # -- connection ---------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # set before any other callback (the protocol is only in `connections` after it)
        self.transport = cast(asyncio.Transport, transport)
        peer = transport.get_extra_info("peername")
        self.peer = peer[0] if peer else None
        self.connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.connections.discard(self)

    def pause_writing(self) -> None:  # a slow reader: stop reading its requests meanwhile
        self.transport.pause_reading()

    def resume_writing(self) -> None:
        self.transport.resume_reading()

    def data_received(self, data: bytes) -> None:
        if self.closing:
            return
        if not self.ctx.accepting:
            self.closing = True
            self.transport.abort()
            return
        self.buffer += data
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserCallbackError as exc:
            if isinstance(exc.__context__, HandOver):
                return self.hand_over()
            if isinstance(exc.__context__, TooLarge):
                return self.fail(431)
            raise
        except httptools.HttpParserUpgrade:
            return self.hand_over()
        except httptools.HttpParserError:
            return self.fail(400)

    def hand_over(self) -> None:
        """Give this connection, from the current request on, to aiohttp."""
        protocol = self.fallback()
        self.connections.discard(self)
        self.transport.set_protocol(protocol)
        protocol.connection_made(self.transport)
        data, self.buffer = bytes(self.buffer), bytearray()
        self.closing = True
        if data:
            protocol.data_received(data)

    def fail(self, status: int) -> None:
        self.transport.write(
            encode(
                Reply(status, [("Content-Type", "text/plain")], REASONS[status].encode()),
                False,
                False,
            )
        )
        self.closing = True
        self.transport.close()

    # -- llhttp callbacks ---------------------------------------------------------------

    def on_message_begin(self) -> None:
        self.url = b""
        self.headers = {}
        self.header_bytes = 0

    def on_url(self, url: bytes) -> None:
        self.url += url
        if len(self.url) > MAX_LINE:
            raise TooLarge

    def on_header(self, name: bytes, value: bytes) -> None:
        self.header_bytes += len(name) + len(value)
        if len(value) > MAX_FIELD or self.header_bytes > MAX_HEADERS:
            raise TooLarge
        key = name.decode("latin-1").lower()
        if key not in self.headers:  # the first of a repeated header, as aiohttp's .get()
            self.headers[key] = value.decode("utf-8", "surrogateescape")

    def on_headers_complete(self) -> None:
        method = self.parser.get_method()
        if (
            method not in (b"GET", b"HEAD")
            or "content-length" in self.headers
            and (self.headers["content-length"] != "0")
            or "transfer-encoding" in self.headers
        ):
            raise HandOver
        path = self.url.split(b"?", 1)[0]
        if not (
            path.startswith(b"/c/") and b"/" not in path[3:] and len(path) > 3 or path == b"/p.gif"
        ):
            raise HandOver

    def on_message_complete(self) -> None:
        if not self.ctx.accepting:  # stopping: not answered, so not acknowledged
            self.closing = True
            self.transport.abort()
            return
        raw = self.url.decode("utf-8", "surrogateescape")
        path, _, query = raw.partition("?")
        method = self.parser.get_method().decode()
        hit = Hit(method, raw, query, self.headers, self.peer)
        if path == "/p.gif":
            params = records.parse_query(query, self.ctx.max_query_bytes)
            if is_conversion_pixel(params):
                raise HandOver
            reply = pixel_reply(self.ctx, hit, params)
            route = "/p.gif"
        else:
            reply = click_reply(self.ctx, hit, unquote(path[3:], errors="replace"))
            route = "/c/{slug}"
        self.ctx.counters.requests[(route, reply.status)] += 1
        keep_alive = self.parser.should_keep_alive()
        self.transport.write(encode(reply, method == "HEAD", keep_alive))
        end = self.buffer.find(b"\r\n\r\n")  # bodiless: the request ends with its headers
        del self.buffer[: end + 4]
        if not keep_alive:
            self.closing = True
            self.transport.close()


class FastPathSite(web.BaseSite):
    """The fast path as a site of aiohttp's runner: the runner starts it, and its cleanup
    stops it (no new connections, open fast connections closed; answers in flight are
    already written) before aiohttp's own connections and the cleanup contexts."""

    __slots__ = ("_ctx", "_host", "_port", "_connections")

    def __init__(
        self,
        runner: web.BaseRunner,
        ctx: ClickContext,
        host: str,
        port: int,
        *,
        backlog: int = 4096,
    ) -> None:
        super().__init__(runner, backlog=backlog)
        self._ctx = ctx
        self._host = host
        self._port = port
        self._connections: set[FastProtocol] = set()

    @property
    def name(self) -> str:
        return f"http://{self._host}:{self._port} (fast path)"

    async def start(self) -> None:
        await super().start()
        fallback = self._runner.server
        assert fallback is not None  # the runner is set up before its sites start
        self._server = await asyncio.get_running_loop().create_server(
            lambda: FastProtocol(self._ctx, fallback, self._connections),
            self._host,
            self._port,
            reuse_port=True,
            backlog=self._backlog,
        )

    async def stop(self) -> None:
        server = self._server
        await super().stop()  # stops accepting
        for connection in list(self._connections):
            connection.transport.close()
        if server is not None:
            await server.wait_closed()
