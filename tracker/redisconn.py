"""Redis clients from the configured URL: one place to choose options.

`redis://` (or `rediss://`, `unix://`) is one server; `redis+cluster://host:port` (or
`rediss+cluster://`) is a Redis Cluster, discovered from that node.
"""

from __future__ import annotations

import redis
import redis.asyncio as aredis
from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster
from redis.cluster import RedisCluster


def is_cluster(url: str) -> bool:
    return url.startswith(("redis+cluster://", "rediss+cluster://"))


def _plain(url: str) -> str:
    return url.replace("+cluster://", "://", 1)


def async_client(url: str, timeout: float):
    if is_cluster(url):
        return AsyncRedisCluster.from_url(
            _plain(url), socket_timeout=timeout, socket_connect_timeout=timeout
        )
    return aredis.Redis.from_url(
        url, socket_timeout=timeout, socket_connect_timeout=timeout, health_check_interval=0
    )


def sync_client(url: str, timeout: float = 5.0):
    if is_cluster(url):
        return RedisCluster.from_url(
            _plain(url), socket_timeout=timeout, socket_connect_timeout=timeout
        )
    return redis.Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout)
