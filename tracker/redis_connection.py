"""Redis clients from the configured URL: one place to choose options.

`redis://` (or `rediss://`, `unix://`) is one server; `redis+cluster://host:port` (or
`rediss+cluster://`) is a Redis Cluster, discovered from that node.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import hiredis
import redis
import redis.asyncio as aredis
from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster
from redis.cluster import RedisCluster
from redis.exceptions import ClusterDownError, RedisClusterException, RedisError, TryAgainError

from tracker import extensions
from tracker.types import AsyncRedis, SyncRedis

# Redis is away: a server error, or a cluster none of whose nodes answers (redis-py raises
# RedisClusterException for that, which is not a RedisError).
UNREACHABLE: tuple[type[Exception], ...] = (RedisError, RedisClusterException)
# A Redis Cluster between states (masters going away or failing over) answers these
# errors rather than refusing connections: wait and retry, as when it is away.
BETWEEN_STATES: tuple[type[Exception], ...] = (ClusterDownError, TryAgainError)


def as_text(value: bytes | str) -> str:
    """A reply value as text (the clients answer bytes: decode_responses is off)."""
    return value.decode() if isinstance(value, bytes) else value


def is_cluster(url: str) -> bool:
    return url.startswith(("redis+cluster://", "rediss+cluster://"))


def _plain(url: str) -> str:
    return url.replace("+cluster://", "://", 1)


class HiredisPacking:
    """Commands packed by hiredis, in C. redis-py's asyncio connections pack in Python
    (its sync ones already use hiredis): for an edge's batch call of a few thousand
    arguments that was 4.6 µs per click, against 0.6 µs. Same bytes on the wire."""

    def pack_command(self, *args: Any) -> list[bytes]:
        return pack(*args)


class HiredisPacker:
    """The same for redis-py's sync connections (their `command_packer`): theirs copies
    every argument in Python first, ~0.2 µs each; a sink's fraud call sends a few per click."""

    def pack(self, *args: Any) -> list[bytes]:
        return pack(*args)


# A command's arguments in the Redis protocol: hiredis's packer, the reference, or the
# compiled one (tracker/_resp.pyx: the same bytes, several times faster on the bytes, str
# and int arguments the service sends; it hands any other command to hiredis).
pack_command: Callable[[tuple], bytes] = hiredis.pack_command
_compiled = extensions.load("tracker._resp")
if _compiled is not None:
    pack_command = _compiled.pack_command


def pack(*args: Any) -> list[bytes]:
    """One command in the Redis protocol, packed in C."""
    if isinstance(args[0], str):  # "CONFIG GET" goes out as two arguments
        args = tuple(args[0].encode().split()) + args[1:]
    elif b" " in args[0]:
        args = tuple(args[0].split()) + args[1:]
    try:
        return [pack_command(args)]  # any length
    except TypeError:  # hiredis takes bytes, str, numbers, memoryviews: not a bytearray
        pass
    try:
        packed = tuple(bytes(a) if isinstance(a, (bytearray, memoryview)) else a for a in args)
        return [pack_command(packed)]
    except TypeError as exc:  # as redis-py's own encoder answers a bad argument
        raise redis.DataError(str(exc)) from exc


_HIREDIS_PACKING: dict[type, type] = {
    cls: type(f"Hiredis{cls.__name__}", (HiredisPacking, cls), {})
    for cls in (aredis.Connection, aredis.SSLConnection, aredis.UnixDomainSocketConnection)
}


def _hiredis_class(cls: type) -> type:
    return _HIREDIS_PACKING.get(cls, cls)


def async_client(url: str, timeout: float) -> AsyncRedis:
    if is_cluster(url):
        cluster = AsyncRedisCluster.from_url(
            _plain(url), socket_timeout=timeout, socket_connect_timeout=timeout
        )
        # Nodes are made from these keyword arguments as the cluster is discovered; the
        # startup nodes exist already.
        kwargs = cluster.nodes_manager.connection_kwargs
        kwargs["connection_class"] = _hiredis_class(
            kwargs.get("connection_class", aredis.Connection)
        )
        for node in cluster.nodes_manager.startup_nodes.values():
            node.connection_class = _hiredis_class(node.connection_class)
        return cluster
    client = aredis.Redis.from_url(
        url, socket_timeout=timeout, socket_connect_timeout=timeout, health_check_interval=0
    )
    pool = client.connection_pool
    pool.connection_class = _hiredis_class(pool.connection_class)
    return client


def sync_client(url: str, timeout: float = 5.0) -> SyncRedis:
    if is_cluster(url):
        return RedisCluster.from_url(
            _plain(url), socket_timeout=timeout, socket_connect_timeout=timeout
        )
    return redis.Redis.from_url(
        url,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        command_packer=HiredisPacker(),
    )
