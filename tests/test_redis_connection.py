"""tracker/redis_connection.py: commands packed in C (hiredis, or the compiled packer,
tracker/_resp.pyx) are the bytes redis-py would send."""

from __future__ import annotations

import random

import hiredis
import pytest
import redis
import redis.asyncio as aredis

from tracker import redis_connection
from tracker.redis_connection import HiredisPacking, async_client
from tracker.testing import compiled_missing

try:
    from tracker import _resp as compiled
except ImportError:  # not built: the compiled cases say so
    compiled = None  # type: ignore[assignment]


@pytest.fixture(params=["hiredis", "compiled"])
def packer(request, monkeypatch):
    """Each packer (hiredis's, the reference; tracker/_resp.pyx) as the clients'."""
    if request.param == "compiled" and compiled is None:
        compiled_missing("the compiled command packer")
    chosen = hiredis.pack_command if request.param == "hiredis" else compiled.pack_command
    monkeypatch.setattr(redis_connection, "pack_command", chosen)
    return chosen


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
def test_same_bytes_as_redis_py(args, packer):
    ours = b"".join(Packed().pack_command(*args))
    theirs = b"".join(bytes(chunk) for chunk in aredis.Connection().pack_command(*args))
    assert ours == theirs


def test_bad_argument_is_a_data_error(packer):
    with pytest.raises(redis.DataError):
        Packed().pack_command("SET", "k", object())


SURROGATE = "\ud800 lone"  # no UTF-8 for it


def hostile_argument(rng: random.Random) -> object:
    """What the service sends (bytes, str, int), sizes around the protocol's digit
    boundaries, and what only hiredis packs or refuses."""
    size = rng.choice([0, 1, 9, 10, 99, 100, 999, 1000, 9999, 10_000, rng.randrange(200)])
    return rng.choice(
        [
            rng.randbytes(size),
            rng.randbytes(size),
            "".join(chr(rng.randrange(0x20, 0x3000)) for _ in range(size % 40)),
            "trk:clicks:{h490000:3/8}",
            rng.randrange(-(10**20), 10**20),
            rng.choice([0, -1, 9, 10, 2**63, -(2**63)]),
            rng.random() * 10 ** rng.randrange(-5, 20),
            True,
            bytearray(rng.randbytes(size)),
            memoryview(rng.randbytes(size)),
            SURROGATE,
            None,
            object(),
        ]
    )


def packed_or_refused(pack, args: tuple) -> bytes | type:
    try:
        return pack(args)
    except Exception as exc:  # the same refusal from both
        return type(exc)


def test_the_compiled_packer_matches_hiredis_on_random_and_hostile_commands():
    if compiled is None:
        compiled_missing("the compiled command packer")
    rng = random.Random(2026)
    for n in range(3000):
        size = rng.choice([0, 1, 2, 9, 10, 11, rng.randrange(300)])
        args = tuple(hostile_argument(rng) for _ in range(size))
        if n % 3:  # mostly the service's own kinds, so most commands are packed in full
            args = tuple(a for a in args if type(a) in (bytes, str, int) and a != SURROGATE)
        expected = packed_or_refused(hiredis.pack_command, args)
        assert packed_or_refused(compiled.pack_command, args) == expected, args


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
