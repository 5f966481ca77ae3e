"""The edge's lean Redis connection (tracker/edge/lean_redis.py) against real redis-servers:
every reply type, many calls in flight answered in order on one connection, redis-py's
exceptions (NOSCRIPT, errors, a lost or silent server, a wrong password), AUTH, SELECT, TLS
and a unix socket; and a postback through it answers 503 while Redis is away, as before,
and is recorded again once Redis is back.
"""

from __future__ import annotations

import asyncio
import os
import signal

import orjson
import pytest
from redis.exceptions import (
    AuthenticationError,
    NoScriptError,
    ResponseError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from tests.edge.test_postback import ADV_TOKEN, client
from tracker import redis_keys as K
from tracker.edge.lean_redis import LeanRedis
from tracker.redis_connection import UNREACHABLE, async_client
from tracker.testing import RedisServer

__all__ = ["client"]  # the edge app over redis_server, shared with the route's tests
CLICK = "01900000-0000-7000-8000-000000000001"  # long past the lookback: unattributed


@pytest.fixture
async def lean(redis_server):
    client = LeanRedis.like(async_client(redis_server.url, 2.0))
    yield client
    client.close()


def connections(client) -> int:
    return client.info("stats")["total_connections_received"]


async def test_every_reply_type(lean):
    assert await lean.execute("SET", "k", "v") == b"OK"  # status
    assert await lean.execute("GET", "k") == b"v"  # bulk
    assert await lean.execute("GET", "nothing") is None  # nil
    assert await lean.execute("INCRBY", "n", 41) == 41  # integer
    assert await lean.execute("RPUSH", "l", "a", b"\x00\xff", 3) == 3
    assert await lean.execute("LRANGE", "l", 0, -1) == [b"a", b"\x00\xff", b"3"]  # array
    assert await lean.execute("LRANGE", "empty", 0, -1) == []
    nested = await lean.execute("EVAL", "return {1, {'a', {}}, 'b'}", 0)
    assert nested == [1, [b"a", []], b"b"]
    with pytest.raises(ResponseError, match="WRONGTYPE"):
        await lean.execute("INCR", "l")
    with pytest.raises(ResponseError, match="unknown command"):
        await lean.execute("NOSUCHCOMMAND")
    assert await lean.execute("GET", "k") == b"v"  # an error reply leaves it in step


async def test_concurrent_calls_share_one_connection_and_are_answered_in_order(lean, redis_server):
    watcher = redis_server.client()
    before = connections(watcher)
    replies = await asyncio.gather(*(lean.execute("INCR", "counter") for _ in range(500)))
    assert replies == list(range(1, 501))
    echoes = await asyncio.gather(*(lean.execute("ECHO", f"m{i}" * i) for i in range(300)))
    assert echoes == [f"m{i}".encode() * i for i in range(300)]  # replies over many reads
    assert connections(watcher) - before == 1


async def test_noscript_is_redis_pys_exception_and_a_loaded_script_runs(lean, redis_server):
    sha = await lean.script_load("return {KEYS[1], ARGV[1]}")
    assert await lean.evalsha(sha, 1, "key", "arg") == [b"key", b"arg"]
    redis_server.client().script_flush()
    with pytest.raises(NoScriptError):
        await lean.evalsha(sha, 1, "key", "arg")
    assert await lean.evalsha(await lean.script_load("return 7"), 0) == 7


async def test_a_cancelled_call_does_not_shift_the_replies(lean):
    slow = asyncio.ensure_future(lean.execute("BLPOP", "nothing", "0.2"))
    await asyncio.sleep(0.05)
    slow.cancel()
    assert await lean.execute("ECHO", "after") == b"after"


async def test_redis_killed_mid_flight_fails_pending_calls_then_it_reconnects(tmp_path):
    server = RedisServer(tmp_path / "redis")
    server.start()
    lean = LeanRedis.like(async_client(server.url, 5.0))
    try:
        assert await lean.execute("SET", "kept", "1") == b"OK"
        os.kill(server.proc.pid, signal.SIGSTOP)  # the calls wait in flight
        pending = [asyncio.ensure_future(lean.execute("INCR", "n")) for _ in range(20)]
        await asyncio.sleep(0.1)
        server.proc.kill()
        server.proc.wait(10)
        results = await asyncio.gather(*pending, return_exceptions=True)
        assert all(type(r) is RedisConnectionError for r in results), results
        assert all(isinstance(r, UNREACHABLE) for r in results)
        with pytest.raises(RedisConnectionError, match="Error connecting"):
            await lean.execute("PING")  # refused: still redis-py's exception
        server.start()
        assert await lean.execute("PING") == b"PONG"
    finally:
        lean.close()
        server.stop()


async def test_a_silent_redis_times_out_and_the_next_call_reconnects(redis_server):
    lean = LeanRedis.like(async_client(redis_server.url, 0.3))
    try:
        # BLPOP holds the connection: the calls behind it wait too
        calls = [asyncio.ensure_future(lean.execute("BLPOP", "nothing", "1"))]
        calls += [asyncio.ensure_future(lean.execute("PING")) for _ in range(5)]
        results = await asyncio.gather(*calls, return_exceptions=True)
        assert all(type(r) is RedisTimeoutError for r in results), results
        assert all(isinstance(r, UNREACHABLE) for r in results)
        assert await lean.execute("ECHO", "back") == b"back"
        # a process that stops answering (SIGSTOP) also times out
        os.kill(redis_server.proc.pid, signal.SIGSTOP)
        try:
            with pytest.raises(RedisTimeoutError):
                await lean.execute("PING")
        finally:
            os.kill(redis_server.proc.pid, signal.SIGCONT)
        assert await lean.execute("PING") == b"PONG"
    finally:
        lean.close()


async def test_auth_with_password_and_user_and_a_wrong_password(tmp_path):
    server = RedisServer(tmp_path / "redis", password="s3cr/et")
    server.start()
    clients = []
    try:
        lean = LeanRedis.like(async_client(server.url, 2.0))
        clients.append(lean)
        assert await lean.execute("PING") == b"PONG"
        server.client().acl_setuser(
            "alice", enabled=True, passwords=["+alicepw"], commands=["+@all"], keys=["*"]
        )
        alice = LeanRedis.like(
            async_client(f"redis://alice:alicepw@127.0.0.1:{server.port}/0", 2.0)
        )
        clients.append(alice)
        assert await alice.execute("ACL", "WHOAMI") == b"alice"
        wrong = LeanRedis.like(async_client(f"redis://:nope@127.0.0.1:{server.port}/0", 2.0))
        clients.append(wrong)
        with pytest.raises(AuthenticationError, match="invalid username-password"):
            await wrong.execute("PING")
        nobody = LeanRedis.like(async_client(f"redis://127.0.0.1:{server.port}/0", 2.0))
        clients.append(nobody)
        with pytest.raises(AuthenticationError, match="Authentication required"):
            await nobody.execute("PING")
    finally:
        for client in clients:
            client.close()
        server.stop()


async def test_the_urls_database_is_selected(redis_server):
    lean = LeanRedis.like(async_client(redis_server.url.removesuffix("/0") + "/3", 2.0))
    try:
        await lean.execute("SET", "in-db-3", "yes")
    finally:
        lean.close()
    direct = redis_server.client()
    assert direct.get("in-db-3") is None
    direct.select(3)
    assert direct.get("in-db-3") == b"yes"


async def test_tls_and_unix_socket(tmp_path):
    tls = RedisServer(tmp_path / "tls", tls=True, password="pw")
    unix = RedisServer(tmp_path / "unix", unix_socket=True)
    for server in (tls, unix):
        server.start()
    clients = [
        LeanRedis.like(async_client(tls.url, 2.0)),
        LeanRedis.like(async_client(f"unix://{unix.socket_path}?db=2", 2.0)),
    ]
    try:
        assert clients[0].ssl_context is not None
        assert clients[1].path == str(unix.socket_path)
        for lean in clients:
            replies = await asyncio.gather(*(lean.execute("INCR", "n") for _ in range(50)))
            assert replies == list(range(1, 51))
        assert tls.client().get("n") == b"50"
    finally:
        for client in clients:
            client.close()
        for server in (tls, unix):
            server.stop()


async def test_a_postback_answers_503_while_redis_is_away_then_records_again(client, redis_server):
    def postback(txid: str):
        return client.get(
            f"/postback?advertiser=shop&token={ADV_TOKEN}&txid={txid}&click_id={CLICK}"
        )

    async def answer(txid: str) -> tuple[int, dict]:
        r = await postback(txid)
        return r.status, await r.json()

    status, body = await answer("before")
    assert (status, body["status"]) == (200, "accepted")
    os.kill(redis_server.proc.pid, signal.SIGSTOP)  # in flight when Redis dies
    during = asyncio.ensure_future(answer("during"))
    await asyncio.sleep(0.1)
    redis_server.proc.kill()
    redis_server.proc.wait(10)
    for status, body in (await during, await answer("refused")):
        assert (status, body["reason"]) == (503, "temporarily_unavailable")
    redis_server.start()  # the same port and data (AOF)
    status, body = await answer("during")
    assert (status, body["status"]) == (200, "accepted")
    stored = redis_server.client().xrange(K.EVENTS_STREAM)
    txids = [orjson.loads(fields[b"conversions"])["txid"] for _, fields in stored]
    assert txids == ["before", "during"]
