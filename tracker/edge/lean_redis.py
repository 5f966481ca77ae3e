"""One pipelined Redis connection for the edge's hottest Redis call: a new postback's
EVALSHA (tracker/edge/postback_script.py).

Through redis-py's asyncio client that call cost ~97 µs of the edge's CPU (a pool
checkout, a connection per concurrent call, its reader and response callbacks); on a
bare hiredis connection ~27 µs. This is the bare connection: requests packed in C,
replies parsed by hiredis.Reader, and any number of calls in flight on one socket, answered
in the order they were sent (Redis answers a connection's commands in order), so
concurrent postbacks share one connection and Redis reads them together.

It stands in for redis-py on one server only (`redis://`, `rediss://`, `unix://`, read
from the client redis-py made of the URL) and raises redis-py's exceptions, so callers keep
their handling: ConnectionError / TimeoutError when Redis is away or slow (both in
tracker.redis_connection.UNREACHABLE), NoScriptError, ResponseError, AuthenticationError.
A Redis Cluster and every other command keep redis-py.
"""

from __future__ import annotations

import asyncio
import ssl
from collections import deque
from typing import Any, cast

import hiredis
import redis.asyncio as aredis
from redis._parsers.base import BaseParser
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import InvalidResponse, RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from tracker.redis_connection import pack_command

_LOST = "Connection closed by server."


class _Connection(asyncio.Protocol):
    """One socket: calls go out as they come, replies complete their futures in order.

    Each call carries a deadline (now + the socket timeout). One timer watches the oldest
    call only (calls are answered in order, so it is the first to run out): cheaper than a
    timer per call. A call past its deadline, a protocol error or a lost socket fails every
    call in flight and ends the connection (replies after a timeout would be out of step);
    the next call opens a new one."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        # redis-py's own error mapping: NOSCRIPT -> NoScriptError, WRONGPASS ->
        # AuthenticationError, any other -> ResponseError
        self.reader = hiredis.Reader(
            protocolError=InvalidResponse, replyError=BaseParser.parse_error
        )
        self.pending: deque[tuple[asyncio.Future[Any], float]] = deque()
        self.transport: asyncio.Transport | None = None
        self.broken: tuple[type[RedisError], str] | None = None  # why it takes no more calls
        self.timer: asyncio.TimerHandle | None = None
        self.outgoing: list[bytes] = []  # calls made in this turn of the loop

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        reader, pending = self.reader, self.pending
        reader.feed(data)
        try:
            while (reply := reader.gets()) is not False:
                future = pending.popleft()[0]
                if future.done():  # its caller gave up (cancelled): the reply is dropped
                    continue
                if isinstance(reply, Exception):
                    future.set_exception(reply)
                else:
                    future.set_result(reply)
        except (InvalidResponse, IndexError) as exc:  # garbage, or a reply nobody asked for
            self.fail(InvalidResponse, f"Protocol error from Redis: {exc!r}")

    def connection_lost(self, exc: Exception | None) -> None:
        self.fail(RedisConnectionError, _LOST if exc is None else f"{_LOST} {exc}")

    def call(self, packed: bytes, timeout: float) -> asyncio.Future[Any]:
        if self.broken is not None:
            cls, message = self.broken
            raise cls(message)
        assert self.transport is not None
        future = self.loop.create_future()
        deadline = self.loop.time() + timeout
        self.pending.append((future, deadline))
        # one write for all the calls of this turn of the loop: on loopback a send costs
        # the sender the receiver's TCP work too, ~10 µs, whatever its size
        if not self.outgoing:
            self.loop.call_soon(self.flush)
        self.outgoing.append(packed)
        if self.timer is None:
            self.timer = self.loop.call_at(deadline, self.check_oldest)
        return future

    def flush(self) -> None:
        if self.outgoing and self.broken is None:
            assert self.transport is not None
            self.transport.write(b"".join(self.outgoing))
        self.outgoing.clear()

    def check_oldest(self) -> None:
        self.timer = None
        if not self.pending:
            return
        deadline = self.pending[0][1]
        if deadline <= self.loop.time():
            self.fail(RedisTimeoutError, "Timeout reading from Redis")
        else:
            self.timer = self.loop.call_at(deadline, self.check_oldest)

    def fail(self, cls: type[RedisError], message: str) -> None:
        """Fail every call in flight (each its own exception: one instance raised in many
        tasks would collect all their tracebacks) and end the connection."""
        if self.broken is None:
            self.broken = (cls, message)
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        while self.pending:
            future = self.pending.popleft()[0]
            if not future.done():
                future.set_exception(cls(message))
        if self.transport is not None:
            self.transport.abort()


class LeanRedis:
    """Commands to one Redis server over one lazily opened, pipelined connection."""

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 6379,
        path: str | None = None,
        db: int = 0,
        username: str | None = None,
        password: str | None = None,
        timeout: float = 5.0,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.host, self.port, self.path, self.db = host, port, path, db
        self.username, self.password = username, password
        self.timeout = timeout
        self.ssl_context = ssl_context
        self._conn: _Connection | None = None
        self._connecting: asyncio.Task[_Connection] | None = None

    @classmethod
    def like(cls, client: aredis.Redis) -> LeanRedis:
        """The server, database, credentials, TLS and timeout of a redis-py client (which
        parsed the URL), read from a connection it would open."""
        pool = client.connection_pool
        conn = pool.connection_class(**pool.connection_kwargs)  # opens nothing
        ssl_context = conn.ssl_context.get() if isinstance(conn, aredis.SSLConnection) else None
        return cls(
            host=getattr(conn, "host", "127.0.0.1"),
            port=getattr(conn, "port", 6379),
            path=getattr(conn, "path", None),
            db=int(conn.db),
            username=conn.username,
            password=conn.password,
            timeout=conn.socket_timeout or 5.0,
            ssl_context=ssl_context,
        )

    async def execute(self, *args: Any) -> Any:
        conn = self._conn
        if conn is None or conn.broken is not None:
            conn = await self._connected()
        return await conn.call(pack_command(args), self.timeout)

    def send(self, *args: Any) -> asyncio.Future[Any] | None:
        """The command sent at once, on the open connection: its reply's future (failed
        as `execute` raises). None when no connection is open: `execute` opens one."""
        conn = self._conn
        if conn is None or conn.broken is not None:
            return None
        return conn.call(pack_command(args), self.timeout)

    async def script_load(self, script: str) -> str:
        sha = await self.execute("SCRIPT", "LOAD", script)
        return sha.decode()

    async def evalsha(self, sha: str, numkeys: int, *keys_and_args: Any) -> Any:
        return await self.execute("EVALSHA", sha, numkeys, *keys_and_args)

    def close(self) -> None:
        if self._connecting is not None:
            self._connecting.cancel()
            self._connecting = None
        if self._conn is not None:
            self._conn.fail(RedisConnectionError, "Connection closed by the client.")
            self._conn = None

    async def _connected(self) -> _Connection:
        """The connection, opened once for all the calls that find none: they share the
        attempt and its failure (each would otherwise wait its own timeout)."""
        if self._connecting is None:
            self._connecting = asyncio.get_running_loop().create_task(self._connect())
        task = self._connecting
        try:
            return await asyncio.shield(task)  # a cancelled caller leaves it to the others
        finally:
            if task.done() and self._connecting is task:
                self._connecting = None

    async def _connect(self) -> _Connection:
        loop = asyncio.get_running_loop()
        where = self.path or f"{self.host}:{self.port}"
        try:
            async with asyncio.timeout(self.timeout):
                if self.path:
                    _, conn = await loop.create_unix_connection(
                        lambda: _Connection(loop), self.path
                    )
                else:
                    _, conn = await loop.create_connection(
                        lambda: _Connection(loop),
                        self.host,
                        self.port,
                        ssl=self.ssl_context,
                        server_hostname=self.host if self.ssl_context else None,
                    )
        except TimeoutError:
            raise RedisTimeoutError(f"Timeout connecting to {where}") from None
        except OSError as exc:  # refused, unreachable, a TLS handshake refused
            raise RedisConnectionError(f"Error connecting to {where}: {exc}") from exc
        hello = []  # pipelined: one round trip
        if self.password:
            user = (self.username,) if self.username else ()
            hello.append(("AUTH", *user, self.password))
        if self.db:
            hello.append(("SELECT", self.db))
        replies = [conn.call(pack_command(args), self.timeout) for args in hello]
        for reply in await asyncio.gather(*replies, return_exceptions=True):
            if isinstance(reply, BaseException):  # a wrong password: AuthenticationError
                conn.fail(RedisConnectionError, "Connection set-up failed.")
                raise reply
        self._conn = conn
        return conn
