"""Each edge process's copy of a Redis hash of JSON records (links, advertisers).

Lookups never touch Redis: the cache reloads the whole hash when its version counter
moves (checked every `refresh_seconds`), so a miss is answered from memory and is at most
that far behind. Every reload also writes a local snapshot file, read at start when Redis
does not answer, so an edge (re)started during a Redis outage keeps working.
"""

from __future__ import annotations

import asyncio
import logging
import os
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar

import orjson

from tracker.background import Beat
from tracker.redis_connection import as_text
from tracker.types import AnyPipeline, AsyncRedis, SyncRedis

log = logging.getLogger(__name__)
T = TypeVar("T")


def parse_hash(raw: dict, parse: Callable[[Any], T]) -> dict[str, T]:
    """Records of a Redis hash by key; an unreadable record is logged and skipped."""
    items = {}
    for key, value in raw.items():
        name = key.decode() if isinstance(key, bytes) else key
        try:
            items[name] = parse(value)
        except (TypeError, ValueError):
            log.error("record %r in Redis is unreadable; ignored", name)
    return items


@dataclass(frozen=True, slots=True)
class NewRecord:
    """A record to add to its hash only if the key is free; `stage` queues the rest of its
    save on a pipeline (the version bump that makes edges reload, a mirror row)."""

    hash_key: str
    key: str
    value: bytes | str
    stage: Callable[[AnyPipeline], object]


def create(redis: SyncRedis, new: NewRecord) -> bool:
    """Create-then-stage with a sync client (CLI, start-up); False when the key is taken."""
    if not redis.hsetnx(new.hash_key, new.key, new.value):
        return False
    pipe = redis.pipeline(transaction=False)
    new.stage(pipe)
    pipe.execute()
    return True


async def create_async(redis: AsyncRedis, new: NewRecord) -> bool:
    """The same with the edge's async client."""
    if not await redis.hsetnx(new.hash_key, new.key, new.value):
        return False
    pipe = redis.pipeline(transaction=False)
    new.stage(pipe)
    await pipe.execute()
    return True


def write_snapshot(path: Path, data: bytes) -> None:
    """Replace the file at once. The temporary file is each write's own: an admin call's
    reload and the refresh loop's can write at the same time in one process."""
    tmp = path.with_name(f"{path.name}.{os.getpid()}.{uuid.uuid4().hex[:12]}.tmp")
    tmp.parent.mkdir(parents=True, exist_ok=True)
    tmp.write_bytes(data)
    os.replace(tmp, path)


class HashCache(Generic[T]):
    def __init__(
        self,
        redis: AsyncRedis,
        hash_key: str,
        version_key: str,
        parse: Callable[[Any], T],
        refresh_seconds: float,
        snapshot: Path | None = None,
    ) -> None:
        self._redis = redis
        self._hash_key = hash_key
        self._version_key = version_key
        self._parse = parse
        self._refresh = refresh_seconds
        self._snapshot = snapshot
        self._version: bytes | str | None = None
        self.items: dict[str, T] = {}
        self._beat = Beat()

    def get(self, key: str) -> T | None:
        return self.items.get(key)

    async def reload(self) -> None:
        version = await self._redis.get(self._version_key)
        if version is not None and version == self._version:
            return
        raw = await self._redis.hgetall(self._hash_key)
        self.items = parse_hash(raw, self._parse)
        self._version = version
        if self._snapshot:
            data = orjson.dumps({as_text(k): as_text(v) for k, v in raw.items()})
            try:
                await asyncio.get_running_loop().run_in_executor(
                    None, write_snapshot, self._snapshot, data
                )
            except OSError as exc:  # only a start-up aid when Redis is down: serve on
                log.warning("%s snapshot not written: %r", self._hash_key, exc)

    async def start(self) -> None:
        try:
            await self.reload()
        except Exception as exc:  # Redis down at start: serve the last snapshot meanwhile
            if self._snapshot and self._snapshot.exists():
                self.items = parse_hash(orjson.loads(self._snapshot.read_bytes()), self._parse)
            log.warning(
                "%s not loaded from redis (%r); %d from the local snapshot",
                self._hash_key,
                exc,
                len(self.items),
            )
        self._beat.start(self._loop())

    async def stop(self) -> None:
        await self._beat.stop()

    async def _loop(self) -> None:
        while await self._beat.wait(self._refresh):
            try:
                await self.reload()
            except Exception as exc:  # keep serving what we have
                log.debug("%s reload failed: %s", self._hash_key, exc)
