"""The fast path: the hot tracking routes served by a lean protocol on the same event loop.

aiohttp's per-request machinery (request and response objects, routing, a task per
request) costs several times what recording a click does. This protocol parses with
llhttp (httptools) and answers bodiless `GET`/`HEAD` requests for `/c/{slug}` and
impression pixels itself: the click core (`clickpath.py`, compiled when built) reads the
request head that llhttp validated and gives the answer bytes, with the same
`click_reply` / `pixel_reply` as the aiohttp routes. A bodiless `GET /postback` is
answered from a task, with the same code as aiohttp's route (`postback_fast.py`); the
connection reads nothing more until that answer is written. Anything else (other paths or
methods, a request with a body, a conversion pixel, an upgrade) is handed to aiohttp on
the same connection, bytes and all, and aiohttp keeps that connection from then on.

While the event writer is behind Redis (more full batches waiting than
`writer.max_waiting_batches`), no fast connection reads: clients wait in TCP, and the
edge's memory stays bounded, until half of those batches are sent.

HTTP details kept: keep-alive (HTTP/1.1 by default, HTTP/1.0 on request), pipelining
(answers in order), HEAD (headers of the GET, no body), a bound on request size (431),
400 on malformed requests, and no header value that did not pass validation or
percent-encoding.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import cast

import httptools
from aiohttp import web

from tracker.edge import postback_fast
from tracker.edge.clickpath import (
    HAND_OVER,
    REASONS,
    ClickPath,
    Core,
    date_header,
    encode,
    head_span,
    parse_head,
)
from tracker.edge.clicks import ClickContext, Reply
from tracker.edge.intake import ConversionIntake
from tracker.edge.keys import INTAKE
from tracker.http_limits import MAX_HEADERS, MAX_LINE

__all__ = ["FastPathSite", "FastProtocol", "date_header", "encode"]

log = logging.getLogger(__name__)

# A request head still incomplete past this many bytes is refused (431): the limits of
# the request line and of all header fields together, and room for the separators.
MAX_HEAD = MAX_LINE + MAX_HEADERS + 16384
POSTBACK_GRACE_S = 5.0  # at shutdown, for postbacks being recorded to answer


class HandOver(Exception):
    """This request is not for the fast path."""


class TooLarge(Exception):
    """A request line or headers over the limits."""


class Suspend(Exception):
    """Stop parsing: a postback is being answered (what follows it waits in the buffer),
    or the connection was dropped (the process is stopping)."""


class Readers:
    """The fast path's open connections, and whether they are held: not reading while the
    event writer is behind Redis (it calls `hold`)."""

    def __init__(self) -> None:
        self.open: set[FastProtocol] = set()
        self.held = False

    def hold(self, held: bool) -> None:
        self.held = held
        for connection in list(self.open):
            connection.read_if_free()


class FastProtocol(asyncio.Protocol):
    """llhttp validates each request; the click core (`ClickPath`) reads its head from the
    buffer in one call and returns the answer bytes."""

    def __init__(
        self,
        ctx: ClickContext,
        fallback: Callable[[], asyncio.Protocol],
        readers: Readers,
        core: Core | None = None,
        intake: ConversionIntake | None = None,
        in_flight: set[asyncio.Future[bytes]] | None = None,
    ) -> None:
        self.ctx = ctx
        self.core = core if core is not None else ClickPath(ctx)
        self.intake = intake  # None: postbacks are aiohttp's
        self.in_flight = in_flight if in_flight is not None else set()
        self.fallback = fallback  # aiohttp's protocol factory
        self.readers = readers
        self.parser = httptools.HttpRequestParser(self)
        self.buffer = bytearray()  # bytes of requests not yet answered
        self.peer: str | None = None
        self.keep_alive = True  # of the request being answered
        self.closing = False
        self.waiting = False  # a postback's answer is being made
        self.suspended = False  # llhttp stopped mid-read for it: a new parser goes on
        self.slow_reader = False  # the client is not reading its answers

    # -- connection ---------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # set before any other callback (the protocol is only in `readers` after it)
        self.transport = cast(asyncio.Transport, transport)
        peer = transport.get_extra_info("peername")
        self.peer = peer[0] if peer else None
        self.readers.open.add(self)
        if self.readers.held:
            # The loop starts reading once this returns (uvloop does, whatever was paused
            # here): pause it right after.
            asyncio.get_running_loop().call_soon(self.read_if_free)

    def connection_lost(self, exc: Exception | None) -> None:
        self.readers.open.discard(self)

    def pause_writing(self) -> None:  # a slow reader: stop reading its requests meanwhile
        self.slow_reader = True
        self.read_if_free()

    def resume_writing(self) -> None:
        self.slow_reader = False
        self.read_if_free()

    def read_if_free(self) -> None:
        """Read requests unless something holds this connection: a postback being
        answered, a client not reading its answers, or the event writer behind Redis."""
        free = not (self.waiting or self.slow_reader or self.readers.held)
        transport = self.transport
        if free != transport.is_reading() and not transport.is_closing():
            if free:
                transport.resume_reading()
            else:
                transport.pause_reading()

    def data_received(self, data: bytes) -> None:
        if self.closing:
            return
        if not self.ctx.accepting:
            self.closing = True
            self.transport.abort()
            return
        self.buffer += data
        if self.waiting:  # parsed once the postback before it is answered
            self.read_if_free()
            return
        self.feed(data)

    def feed(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserCallbackError as exc:
            if isinstance(exc.__context__, Suspend):
                return
            if isinstance(exc.__context__, HandOver):
                return self.hand_over()
            if isinstance(exc.__context__, TooLarge):
                return self.fail(431)
            raise
        except httptools.HttpParserUpgrade:
            return self.hand_over()
        except httptools.HttpParserError:
            return self.fail(400)
        if not self.closing and len(self.buffer) > MAX_HEAD:  # a head that never ends
            self.fail(431)

    def hand_over(self) -> None:
        """Give this connection, from the current request on, to aiohttp."""
        protocol = self.fallback()
        self.readers.open.discard(self)
        if not self.transport.is_reading():  # aiohttp reads this connection from now on
            self.transport.resume_reading()
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

    def on_headers_complete(self) -> None:
        # A request that reaches here has no body to wait for (llhttp's message-complete
        # callback would follow at once, so this protocol has none), or is handed over:
        # it is answered now.
        if self.closing:  # after an answer that closed the connection (llhttp refuses
            raise Suspend  # what follows one anyway): not answered, so not recorded
        buffer = self.buffer
        start, end = head_span(buffer)
        if end < 0:  # not a head this parser reads the same way: aiohttp's
            raise HandOver
        if not self.ctx.accepting:  # stopping: not answered, so not acknowledged
            self.closing = True
            self.transport.abort()
            raise Suspend
        self.keep_alive = keep_alive = self.parser.should_keep_alive()
        if self.intake is not None and buffer.startswith(postback_fast.STARTS, start):
            return self.start_postback(start, end)
        answer = self.core.handle(buffer, start, end, self.peer, keep_alive)
        if isinstance(answer, int):
            raise HandOver if answer == HAND_OVER else TooLarge
        del buffer[: end + 4]  # bodiless: the request ends with its head
        self.send(answer)

    def send(self, answer: bytes) -> None:
        """Write an answer; close the connection after it unless it is kept alive."""
        self.transport.write(answer)
        if not self.keep_alive:
            self.closing = True
            self.transport.close()

    def start_postback(self, start: int, end: int) -> None:
        """Answer the postback: at once (a refusal), or when its answer is settled; parse
        nothing after it until that is written (answers in order). Requests sent right
        behind it (pipelined) stop llhttp with an exception raised here, and a fresh
        parser reads them once the answer is written; without them (the usual case) llhttp
        has nothing more to read and goes on as it is: no exception, no new parser."""
        assert self.intake is not None
        parsed = parse_head(bytes(self.buffer[start:end]))
        if isinstance(parsed, int):
            raise TooLarge
        _, url, headers = parsed
        if not postback_fast.servable(url, headers):
            raise HandOver
        del self.buffer[: end + 4]  # bodiless
        answer = postback_fast.start(
            self.intake, self.ctx, url, headers, self.peer, self.keep_alive
        )
        if isinstance(answer, bytes):
            return self.send(answer)
        self.waiting = True
        self.in_flight.add(answer)
        answer.add_done_callback(self.postback_done)
        if self.buffer:  # the rest of what llhttp is reading
            self.suspended = True
            raise Suspend

    def postback_done(self, task: asyncio.Future[bytes]) -> None:
        self.in_flight.discard(task)
        self.waiting = False
        if self.closing or self.transport.is_closing():
            return
        if task.cancelled() or task.exception() is not None:
            # answer_postback answers every failure of its own (500, logged): a bug here
            log.error(
                "postback not answered", exc_info=None if task.cancelled() else task.exception()
            )
            self.transport.write(postback_fast.INTERNAL_ERROR)
            self.closing = True
            self.transport.close()
            return
        self.send(task.result())
        if self.closing:
            return
        if self.suspended:
            self.suspended = False
            self.parser = httptools.HttpRequestParser(self)
        self.read_if_free()
        if self.buffer:  # received while the answer was made: not read by llhttp yet
            self.feed(bytes(self.buffer))


class FastPathSite(web.BaseSite):
    """The fast path as a site of aiohttp's runner: the runner starts it, and its cleanup
    stops it (no new connections, open fast connections closed; answers in flight are
    already written) before aiohttp's own connections and the cleanup contexts."""

    __slots__ = ("_ctx", "_host", "_port", "_readers", "_in_flight")

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
        self._readers = Readers()
        self._in_flight: set[asyncio.Future[bytes]] = set()  # postbacks being answered

    @property
    def name(self) -> str:
        return f"http://{self._host}:{self._port} (fast path)"

    async def start(self) -> None:
        await super().start()
        fallback = self._runner.server
        assert fallback is not None  # the runner is set up before its sites start
        core = ClickPath(self._ctx)  # one per process: its per-link cache is shared
        self._ctx.writer.on_behind = self._readers.hold
        intake = self._runner.app.get(INTAKE) if isinstance(self._runner, web.AppRunner) else None
        self._server = await asyncio.get_running_loop().create_server(
            lambda: FastProtocol(self._ctx, fallback, self._readers, core, intake, self._in_flight),
            self._host,
            self._port,
            reuse_port=True,
            backlog=self._backlog,
        )

    async def stop(self) -> None:
        server = self._server
        await super().stop()  # stops accepting
        if self._in_flight:  # postbacks being recorded: let them answer
            await asyncio.wait(list(self._in_flight), timeout=POSTBACK_GRACE_S)
        for connection in list(self._readers.open):
            connection.transport.close()
        if server is not None:
            await server.wait_closed()
