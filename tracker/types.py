"""Types shared across the seams: the Redis clients, and the rows the edge writes."""

from __future__ import annotations

from typing import Any, TypeAlias

import redis
import redis.asyncio as aredis
from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster
from redis.cluster import RedisCluster

# A Redis client as the configuration makes it: one server, or a Redis Cluster.
AsyncRedis: TypeAlias = "aredis.Redis | AsyncRedisCluster"
SyncRedis: TypeAlias = "redis.Redis | RedisCluster"

# A row bound for one ClickHouse table, as JSONEachRow: column name -> value.
Row: TypeAlias = dict[str, Any]
