"""Redis clients from the configured URL: one place to choose options."""

from __future__ import annotations

import redis
import redis.asyncio as aredis


def async_client(url: str, timeout: float) -> aredis.Redis:
    return aredis.Redis.from_url(
        url, socket_timeout=timeout, socket_connect_timeout=timeout, health_check_interval=0
    )


def sync_client(url: str, timeout: float = 5.0) -> redis.Redis:
    return redis.Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout)
