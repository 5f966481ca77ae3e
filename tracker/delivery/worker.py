"""The sender worker: its own process (`tracker deliver`, started by `tracker serve`), so
a slow or failing receiver holds up nothing but its own deliveries, never an edge
answering clicks or postbacks, nor the sink storing events.

It reads deliveries from the queue's consumer group, at most `concurrency` in flight.
After each attempt, in one Redis transaction, the delivery is acknowledged and either
done, scheduled for a later attempt (exponential backoff with jitter), or dead-lettered
after `max_attempts`. A delivery whose worker died mid-attempt stays pending in the group
and is taken again (its own at start, another worker's once idle long enough): at least
once. Every attempt becomes a `deliveries` row, appended to the events stream in small
batches, which the sink stores in ClickHouse like any other event.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
import uuid
from typing import Any

import orjson
from redis.exceptions import RedisError, ResponseError

from tracker import metrics
from tracker import redis_keys as K
from tracker.append_once import XADD_ONCE
from tracker.background import Beat
from tracker.config import DeliverySettings
from tracker.delivery.policy import backoff_seconds, parse_allowed
from tracker.delivery.queue import JOB_FIELD, MOVE_DUE
from tracker.delivery.sender import Attempt, Sender
from tracker.delivery.targets import Target
from tracker.reasons import DeliveryOutcome
from tracker.timefmt import format_ms

log = logging.getLogger(__name__)

MAX_URL = 2048
LOG_FLUSH_SECONDS = 0.2
LOG_FLUSH_ROWS = 500
LOG_MARKER_TTL_S = 900  # a log chunk's marker: longer than any retry of it takes
MOVE_EVERY = 0.2
TARGETS_EVERY = 1.0


def attempt_row(job: dict, attempt: int, result: Attempt, ms: int, next_ms: int | None) -> dict:
    return {
        "event_time": format_ms(ms),
        "delivery_id": job["id"],
        "target_id": job["target_id"],
        "kind": job["kind"],
        "trigger": job["trigger"],
        "conversion_id": job["conversion_id"],
        "affiliate_id": job.get("affiliate_id", ""),
        "campaign_id": job.get("campaign_id", ""),
        "attempt": attempt,
        "outcome": result.outcome,
        "status_code": result.status,
        "latency_ms": result.latency_ms,
        "error": result.error,
        "url": job["url"][:MAX_URL],
        "next_attempt_at": format_ms(next_ms) if next_ms is not None else None,
    }


class Worker:
    def __init__(self, redis: Any, settings: DeliverySettings, consumer: str) -> None:
        self.redis = redis
        self.settings = settings
        self.consumer = consumer
        self.claim_idle_ms = int((settings.timeout_seconds * 3 + 10) * 1000)
        self.inflight: set[asyncio.Task] = set()
        # the stream entries of those tasks: a pending entry is read again after a Redis
        # error (its own, from "0") and may be claimed back; never attempt one twice at once
        self.inflight_entries: set[bytes] = set()
        # the last attempt taken per (target, conversion): the next one for the same pair
        # waits for it, so a partner hears "pending" before "approved", not at random
        self.last_of_pair: dict[tuple[str, str], asyncio.Task] = {}
        self.log_rows: list[bytes] = []
        self._unsent: tuple[str, bytes] | None = None  # (batch id, rows) sent, not answered
        self.targets: dict[str, Target] = {}
        self._targets_version: bytes | None = None
        self.attempts = 0

    # -- the loop ---------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        s = self.settings
        async with Sender(
            timeout=s.timeout_seconds,
            max_response_bytes=s.max_response_bytes,
            allowed=parse_allowed(s.allowed_networks),
            concurrency=s.concurrency,
        ) as sender:
            self.sender = sender
            flusher = Beat()
            flusher.start(self._flush_loop(flusher))
            try:
                await self._loop(stop)
            finally:
                if self.inflight:  # let calls in flight end (bounded by their timeout)
                    await asyncio.wait(self.inflight, timeout=s.timeout_seconds + 1)
                for task in self.inflight:  # still pending in the group: taken again
                    task.cancel()
                await flusher.stop()
                await self.flush_log()

    async def _loop(self, stop: asyncio.Event) -> None:
        backoff = 0.2
        started = False
        last_move = last_claim = last_targets = 0.0
        while not stop.is_set():
            try:
                if not started:
                    await self.ensure_group()
                    await self.load_targets()
                    await self.take(await self.read("0"))  # ours, left by a previous run
                    started = True
                now = time.monotonic()
                if now - last_targets >= TARGETS_EVERY:
                    last_targets = now
                    await self.load_targets()
                if now - last_move >= MOVE_EVERY:
                    last_move = now
                    await self.move_due()
                if now - last_claim >= self.claim_idle_ms / 2000:
                    last_claim = now
                    await self.take(await self.claim())
                free = self.settings.concurrency - len(self.inflight)
                if free <= 0:
                    await asyncio.wait(self.inflight, timeout=0.2, return_when="FIRST_COMPLETED")
                    continue
                await self.take(await self.read(">", count=free, block=200))
                backoff = 0.2
            except (RedisError, OSError) as exc:
                log.warning("redis unavailable to the delivery worker (%r)", exc)
                started = False
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), backoff)
                backoff = min(backoff * 2, 10.0)

    async def ensure_group(self) -> None:
        try:
            await self.redis.xgroup_create(
                K.DELIVERY_STREAM, K.DELIVERY_GROUP, id="0", mkstream=True
            )
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    async def read(self, start: str, count: int = 0, block: int | None = None) -> list:
        count = count or self.settings.concurrency
        reply = await self.redis.xreadgroup(
            K.DELIVERY_GROUP, self.consumer, {K.DELIVERY_STREAM: start}, count=count, block=block
        )
        return reply[0][1] if reply else []

    async def claim(self) -> list:
        """Deliveries another worker took and never finished (it died)."""
        reply = await self.redis.xautoclaim(
            K.DELIVERY_STREAM,
            K.DELIVERY_GROUP,
            self.consumer,
            self.claim_idle_ms,
            start_id="0",
            count=self.settings.concurrency,
        )
        return reply[1]

    async def take(self, entries: list) -> None:
        for entry_id, fields in entries:
            raw = fields.get(JOB_FIELD) if fields else None
            if raw is None:  # deleted meanwhile: nothing to do
                await self.redis.xack(K.DELIVERY_STREAM, K.DELIVERY_GROUP, entry_id)
                continue
            if entry_id in self.inflight_entries:
                continue
            job = orjson.loads(raw)
            pair = (str(job.get("target_id")), str(job.get("conversion_id")))
            task = asyncio.create_task(self.attempt(entry_id, job, self.last_of_pair.get(pair)))
            self.inflight.add(task)
            self.inflight_entries.add(entry_id)
            self.last_of_pair[pair] = task
            task.add_done_callback(functools.partial(self._done, entry_id, pair))

    def _done(self, entry_id: bytes, pair: tuple[str, str], task: asyncio.Task) -> None:
        self.inflight.discard(task)
        self.inflight_entries.discard(entry_id)
        if self.last_of_pair.get(pair) is task:
            del self.last_of_pair[pair]

    async def move_due(self) -> None:
        now_ms = int(time.time() * 1000)
        keys = [K.DELIVERY_RETRY_ZSET, K.DELIVERY_STREAM]
        await self.redis.eval(MOVE_DUE, len(keys), *keys, now_ms, 500)

    async def load_targets(self, force: bool = False) -> None:
        version = await self.redis.get(K.DELIVERY_TARGETS_VERSION)
        if version == self._targets_version and self.targets and not force:
            return
        raw = await self.redis.hgetall(K.DELIVERY_TARGETS_HASH)
        self.targets = {k.decode(): Target.from_json(v) for k, v in raw.items()}
        self._targets_version = version

    # -- one delivery -----------------------------------------------------------------

    async def attempt(self, entry_id: bytes, job: dict, after: asyncio.Task | None = None) -> None:
        if after is not None:  # the same target and conversion's earlier event goes first
            await asyncio.wait([after])
        try:
            await self._attempt(entry_id, job)
        except (RedisError, OSError) as exc:  # stays pending: taken again later
            log.warning("delivery %s not settled (%r); it will be retried", job.get("id"), exc)
        except Exception:
            log.exception("delivery %s failed in the worker", job.get("id"))

    async def _attempt(self, entry_id: bytes, job: dict) -> None:
        s = self.settings
        attempt = int(job.get("attempt", 0)) + 1
        target = self.targets.get(job["target_id"])
        if target is None:  # created since the last reload, perhaps: look again
            await self.load_targets(force=True)
            target = self.targets.get(job["target_id"])
        if target is None or not target.enabled:
            result = Attempt(DeliveryOutcome.TARGET_GONE, error="target deleted or disabled")
        else:
            result = await self.sender.send(job, target.secret)
        self.attempts += 1
        metrics.DELIVERIES.labels(job["kind"], result.outcome).inc()
        metrics.DELIVERY_SECONDS.observe(result.latency_ms / 1000)
        now_ms = int(time.time() * 1000)
        pipe = self.redis.pipeline(transaction=True)
        next_ms: int | None = None
        if result.outcome in (DeliveryOutcome.DELIVERED, DeliveryOutcome.TARGET_GONE):
            pass
        elif attempt >= s.max_attempts or result.outcome == DeliveryOutcome.BLOCKED_ADDRESS:
            dead = {
                **job,
                "attempt": attempt,
                "dead_ms": now_ms,
                "last_outcome": result.outcome,
                "last_status": result.status,
                "last_error": result.error,
            }
            pipe.hset(K.DELIVERY_DEAD_HASH, job["id"], orjson.dumps(dead))
            metrics.DELIVERIES.labels(job["kind"], DeliveryOutcome.DEAD_LETTERED).inc()
        else:
            delay = backoff_seconds(attempt, s.backoff_base_seconds, s.backoff_max_seconds)
            next_ms = now_ms + int(delay * 1000)
            pipe.zadd(K.DELIVERY_RETRY_ZSET, {orjson.dumps({**job, "attempt": attempt}): next_ms})
        pipe.xack(K.DELIVERY_STREAM, K.DELIVERY_GROUP, entry_id)
        pipe.xdel(K.DELIVERY_STREAM, entry_id)
        self.log_rows.append(orjson.dumps(attempt_row(job, attempt, result, now_ms, next_ms)))
        await pipe.execute()

    # -- the attempt log --------------------------------------------------------------

    async def _flush_loop(self, beat: Beat) -> None:
        while await beat.wait(LOG_FLUSH_SECONDS):
            try:
                await self.flush_log()
                await self.report_sizes()
            except (RedisError, OSError) as exc:
                log.warning("delivery log not written yet (%r)", exc)

    async def flush_log(self) -> None:
        """The attempts so far as `deliveries` entries of the events stream, up to
        LOG_FLUSH_ROWS each. A chunk keeps its batch id until Redis has answered for it and
        is appended once per id (tracker/append_once.py): a call cut off after it went out
        (a timeout; the stop cancelling the flush loop mid-call) is sent again, as itself,
        and not logged twice."""
        while self.log_rows or self._unsent is not None:
            if self._unsent is None:
                rows, self.log_rows = self.log_rows[:LOG_FLUSH_ROWS], self.log_rows[LOG_FLUSH_ROWS:]
                self._unsent = (uuid.uuid4().hex, b"\n".join(rows))
            batch_id, payload = self._unsent
            await self.redis.eval(
                XADD_ONCE,
                2,
                K.EVENTS_STREAM,
                K.batch_marker_key(batch_id, 0),
                LOG_MARKER_TTL_S,
                K.BATCH_ID_FIELD,
                batch_id,
                "deliveries",
                payload,
            )
            self._unsent = None

    async def report_sizes(self) -> None:
        pipe = self.redis.pipeline(transaction=False)
        pipe.zcard(K.DELIVERY_RETRY_ZSET)
        pipe.hlen(K.DELIVERY_DEAD_HASH)
        retrying, dead = await pipe.execute()
        metrics.DELIVERY_QUEUE.labels("retrying").set(retrying)
        metrics.DELIVERY_QUEUE.labels("dead").set(dead)
