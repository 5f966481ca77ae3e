"""tracker/redisconn.py: commands packed by hiredis are the bytes redis-py would send."""

from __future__ import annotations

import pytest
import redis
import redis.asyncio as aredis

from tracker.redis_connection import HiredisPacking, async_client


class Packed(HiredisPacking, aredis.Connection):
    pass


ARGS = [
    ("SET", "trk:click:{a}", b'{"sub1":"caf\\u00e9"}', "EX", 2592000),
    ("EVALSHA", "f" * 40, 2, "k1", "k2", 1.5, -7, "välue ✓", b"\x00\xff", memoryview(b"mv")),
    ("CONFIG GET", "maxmemory"),
    (b"XADD", "s", "*", "clicks", b"x" * 100_000),
    ("HSET", "h", bytearray(b"f"), bytearray(b"\x00v")),  # hiredis takes no bytearray as is
]


@pytest.mark.parametrize("args", ARGS)
def test_same_bytes_as_redis_py(args):
    ours = b"".join(Packed().pack_command(*args))
    theirs = b"".join(bytes(chunk) for chunk in aredis.Connection().pack_command(*args))
    assert ours == theirs


def test_bad_argument_is_a_data_error():
    with pytest.raises(redis.DataError):
        Packed().pack_command("SET", "k", object())


async def test_client_talks_to_a_real_server(redis_server):
    client = async_client(redis_server.url, 5.0)
    try:
        assert isinstance(client.connection_pool.connection_class(), HiredisPacking)
        await client.set("k", "välue ✓")
        pipe = client.pipeline(transaction=False)
        pipe.get("k")
        pipe.incrby("n", 3)
        assert await pipe.execute() == ["välue ✓".encode(), 3]
    finally:
        await client.aclose()
