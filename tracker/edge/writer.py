"""The edge's event writer: buffer in memory, flush one Redis call per batch.

Handlers call `add_*` (no await, no I/O). A single flush task sends a batch when it holds
`batch_max_events` events or its oldest event is `batch_max_delay_ms` old. A batch never
holds more than `batch_max_events`: while a flush is in flight, full batches queue up in
order, so each script call (and the memory to encode it) stays the same size however slow
Redis gets. (Unbounded batches fed back on themselves: a slow call made a bigger batch,
which made a slower call, and the edge's memory grew by hundreds of MB.) Nor may full
batches pile up without end when Redis answers, only slower than clicks arrive (a busy
machine: Redis gets too little of the CPU): past `max_waiting_batches` the writer says it
is behind (`on_behind(True)`, the fast path stops reading requests; aiohttp's tracking
handlers wait in `caught_up`) until half of them are sent (`on_behind(False)`). One batch is
one script call: the stream entry (appended once per batch id, so a batch replayed after
an unclear failure is not appended twice), the click records and the visitors' paths in
the hot window's per-hour hashes (tracker/hot.py).

When Redis fails or is slower than `redis.timeout_seconds`, the batch goes to the spool;
later batches follow it there (order is kept) until a recovery task has replayed the
spool into Redis, a chunk at a time (new batches join the spool's end meanwhile). Memory
is bounded by what arrives during one Redis timeout.

When neither Redis nor the spool takes a batch (Redis away and the spool's disk full or
read-only), the batch is dropped, its events counted by reason (`dropped`), the state
change logged once, and `losing` set (`/readyz` answers 503). The flush loop never
stops: recording resumes by itself as soon as either takes batches again.

A spooled batch reaches the stream at most once however long it waited: its marker is
written without an expiry when it is replayed, and given the usual `dedup_ttl` only once
the spool's replay position past it is on disk (a restart that replays it again finds
the marker and appends nothing).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections import Counter, deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import orjson
from redis.exceptions import NoScriptError

from tracker import hot, metrics, stream_payload
from tracker import redis_keys as K
from tracker.append_once import MARK_ONCE, XADD_ONCE
from tracker.background import Beat
from tracker.edge.spool import Spool
from tracker.ids import uuid7
from tracker.metrics import REDIS_FLUSH
from tracker.reasons import EventDrop
from tracker.types import AsyncRedis, ClickRecord, ClickRow

log = logging.getLogger(__name__)

# One script call records a whole batch, so the edge encodes one command and parses one
# reply per batch instead of several per click (this was most of an edge's time).
# KEYS: stream, batch marker, the hot window's `since` mark, then the hot window's hashes
#       (tracker/hot.py: click hashes, then path hashes).
# ARGV: marker ttl (0: keep the marker until told otherwise), number of entry arguments,
#       the entry's field/value pairs, the batch's oldest click time (ms), then the hot
#       part (`hot.WRITE_HOT`).
# The stream entry is appended once per batch id (a replayed batch is not appended
# twice: tracker/append_once.py); click records are plain overwrites and path appends skip
# a click id already there, so the rest is safe to repeat. Each hash gets one EXPIREAT per
# batch.
RECORD_BATCH = (
    hot.WRITE_HOT
    + MARK_ONCE
    + """
local nf = tonumber(ARGV[2])
if fresh then
  redis.call('XADD', KEYS[1], '*', unpack(ARGV, 3, 2 + nf))
end
local a = 3 + nf
if #KEYS > 3 then
  redis.call('SET', KEYS[3], ARGV[a], 'NX')
  write_hot(4, a + 1)
end
return 1
"""
)
RECOVERY_INTERVAL = 0.5


def compact_json(obj: Mapping[str, object]) -> bytes:
    """JSON in a bytes object of its own size. orjson hands back its bytes with the whole
    working buffer still allocated (8 KB for a 1.2 KB click row), and buffered events are
    held until Redis takes them: that was 7x the memory the events needed."""
    return bytes(memoryview(orjson.dumps(obj)))


@dataclass(slots=True)
class Batch:
    id: str
    shard: int = 0  # the events stream shard it goes to (kept when spooled)
    rows: dict[str, list[bytes]] = field(default_factory=dict)  # table -> JSON rows
    # (click_id, visitor_id, event ms, compact click record: tracker/hot.py)
    clicks: list[tuple[str, str, int, bytes]] = field(default_factory=list)

    def count(self) -> int:
        return sum(len(rows) for rows in self.rows.values())

    def entry(self, compress: bool = True) -> list[bytes | str]:
        """The stream entry as field/value pairs: the batch id, then one JSONEachRow
        payload per table, LZ4-compressed unless told not to (tracker/stream_payload.py)."""
        pairs: list[bytes | str] = [K.BATCH_ID_FIELD, self.id]
        for table, rows in self.rows.items():
            payload = b"\n".join(rows)
            pairs += [table, stream_payload.pack(payload) if compress else payload]
        return pairs

    def dumps(self) -> bytes:
        return orjson.dumps(
            {
                "b": self.id,
                "s": self.shard,
                "t": {table: [r.decode() for r in rows] for table, rows in self.rows.items()},
                # records are bytes: latin-1 carries them through JSON unchanged
                "r": [[c, v, ms, rec.decode("latin-1")] for c, v, ms, rec in self.clicks],
            }
        )

    @classmethod
    def loads(cls, raw: bytes) -> Batch:
        data = orjson.loads(raw)
        return cls(
            id=data["b"],
            shard=data.get("s", 0),
            rows={table: [r.encode() for r in rows] for table, rows in data["t"].items()},
            clicks=[(c, v, ms, rec.encode("latin-1")) for c, v, ms, rec in data["r"]]
            if "r" in data  # spooled before the hot window: JSON records
            else [(c, v, ms, hot.encode(orjson.loads(rec))) for c, v, ms, rec in data["c"]],
        )


class EventWriter:
    def __init__(
        self,
        redis: AsyncRedis,
        spool: Spool,
        *,
        batch_max_events: int,
        batch_max_delay_ms: int,
        lookback_seconds: int,
        timeout_seconds: float,
        dedup_ttl_seconds: int,
        stream_shards: int = 1,
        cluster: bool = False,
        hot_hours: int = 48,
        max_waiting_batches: int = 4,
        compress_stream: bool = True,
    ) -> None:
        self._redis = redis
        self._compress = compress_stream  # the stream's rows LZ4-compressed
        self.spool = spool
        self._max_events = batch_max_events
        self._max_delay = batch_max_delay_ms / 1000
        self._lookback = lookback_seconds  # (the hot window decides what Redis keeps)
        self._hot_hours = hot_hours
        self._timeout = timeout_seconds
        self._dedup_ttl = dedup_ttl_seconds
        self._script_sha: str | None = None
        self._expiries = hot.ExpiriesSent()  # the hot hashes' EXPIREATs, sent now and then
        self._shards = stream_shards
        self._cluster = cluster
        self._batch = self._new_batch()
        self._count = 0  # events in self._batch
        self._ready: deque[Batch] = deque()  # full batches waiting for the flush task
        self._max_waiting = max_waiting_batches
        self.on_behind: Callable[[bool], None] | None = None  # told when `behind` changes
        self._caught_up = asyncio.Event()  # clear while behind
        self._caught_up.set()
        self._has_events = asyncio.Event()
        self._full = asyncio.Event()
        self._spool_lock = asyncio.Lock()
        self._closing = False
        self._task: asyncio.Task | None = None
        self._recovery = Beat()  # the recovery loop: its task, sleep and stop
        self.redis_ok = not spool.pending
        self._redis_answers = False  # the recovery task's last ping was answered
        # replayed batches whose markers wait for the replay position to reach the disk
        self._unsaved: list[tuple[str, int]] = []
        self.losing = False  # neither Redis nor the spool takes batches: events are dropped
        # counters (read by /metrics and tests)
        self.clicks_recorded = 0  # a plain int: the compiled click core counts every click
        self.recorded_by_table: Counter[str] = Counter()  # the other tables
        self.flushed_batches = 0
        self.spooled_batches = 0
        self.replayed_batches = 0
        self.unreadable_batches = 0
        self.held_spells = 0  # times the writer fell behind Redis and held the readers
        self.dropped: Counter[EventDrop] = Counter()  # events, by reason
        self._published: dict[str, int] = {}  # the totals Prometheus has seen
        self._dropped_since = 0  # events dropped in the current losing spell

    def publish_metrics(self) -> None:
        """Move this writer's counts into Prometheus (the app does it once a second)."""
        metrics.CLICKS.inc(self.clicks_recorded - self._published.get("clicks", 0))
        for table, total in (("clicks", self.clicks_recorded), *self.recorded_by_table.items()):
            metrics.EVENTS.labels(table).inc(total - self._published.get(table, 0))
            self._published[table] = total
        for action, total in (
            ("spooled", self.spooled_batches),
            ("replayed", self.replayed_batches),
        ):  # totals the tests read too: published as differences
            metrics.SPOOL.labels(action).inc(total - self._published.get(action, 0))
            self._published[action] = total
        metrics.HELD.inc(self.held_spells - self._published.get("held", 0))
        self._published["held"] = self.held_spells
        for reason, n in self.dropped.items():
            metrics.DROPPED.labels(reason.value).inc(n)
        self.dropped.clear()
        metrics.SPOOL_BYTES.set(self.spool.size)

    # -- called by handlers: no I/O --------------------------------------------------

    def add(self, table: str, row: Mapping[str, object]) -> None:
        self._batch.rows.setdefault(table, []).append(compact_json(row))
        self.recorded_by_table[table] += 1
        self._count += 1
        self._added()

    def add_click(self, row: ClickRow, record: ClickRecord, ms: int) -> None:
        self.add_click_encoded(
            row["click_id"], row["visitor_id"], ms, compact_json(row), hot.encode(record)
        )

    def add_click_encoded(
        self, click_id: str, visitor_id: str, ms: int, row: bytes, value: bytes
    ) -> None:
        """A click encoded: its row as JSON, its record in the hot window's compact form
        (`hot.encode`). The compiled click core calls this for every click it answers,
        so it does the least it can (plain int counts, one call more only at a batch's
        first and last event)."""
        batch = self._batch
        rows = batch.rows.get("clicks")
        if rows is None:
            rows = batch.rows["clicks"] = []
        rows.append(row)
        batch.clicks.append((click_id, visitor_id, ms, value))
        self.clicks_recorded += 1
        self._count = count = self._count + 1
        if count == 1 or count >= self._max_events:
            self._added()

    @property
    def recorded(self) -> int:
        """Events recorded so far, of every table."""
        return self.clicks_recorded + sum(self.recorded_by_table.values())

    def _added(self) -> None:
        """After `_count` went up: a batch that has its first event wakes the flush task,
        and a full one waits for it in `_ready`."""
        if self._count == 1:
            self._has_events.set()
        if self._count >= self._max_events:
            self._ready.append(self._batch)
            self._batch, self._count = self._new_batch(), 0
            self._full.set()
            if len(self._ready) > self._max_waiting and not self.behind:
                self._set_behind(True)

    # -- lifecycle --------------------------------------------------------------------

    async def start(self) -> None:
        if self.spool.pending:
            self._start_recovery()
        self._task = asyncio.create_task(self._run())

    async def close(self, replay_seconds: float = 5.0) -> None:
        """Flush everything buffered (to Redis or the spool) and try a last replay."""
        self._closing = True
        self._has_events.set()
        self._full.set()
        if self._task:
            await self._task
        if task := self._recovery.task:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(task), replay_seconds)
            await self._recovery.stop()

    # -- flushing ---------------------------------------------------------------------

    async def _run(self) -> None:
        while True:
            if not self._ready:
                await self._has_events.wait()
                if not self._closing and not self._ready and self._max_delay:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._full.wait(), self._max_delay)
            batch = self._take()
            if batch.rows:
                try:
                    await self._deliver(batch)
                except Exception:  # a bug: the loop must outlive it, and say so
                    log.exception("event batch lost to an unexpected error")
                    self._drop(batch, EventDrop.INTERNAL_ERROR)
            if self._closing and not self._count and not self._ready:
                return

    @property
    def behind(self) -> bool:
        """More than `max_waiting_batches` full batches wait: readers are held."""
        return not self._caught_up.is_set()

    async def caught_up(self) -> None:
        """Return once the writer is not behind (at once when it is not). aiohttp's
        tracking handlers wait here before recording, as the fast path stops reading."""
        if self.behind:
            await self._caught_up.wait()

    def _set_behind(self, behind: bool) -> None:
        self.held_spells += behind
        if behind:
            self._caught_up.clear()
        else:
            self._caught_up.set()
        if self.on_behind is not None:
            self.on_behind(behind)

    def _new_batch(self) -> Batch:
        return Batch(uuid7(), random.randrange(self._shards) if self._shards > 1 else 0)

    def _take(self) -> Batch:
        """The oldest full batch, else the one being filled."""
        if self._ready:
            batch = self._ready.popleft()
            if not self._ready:
                self._full.clear()
            if self.behind and len(self._ready) <= self._max_waiting // 2:
                self._set_behind(False)
            return batch
        batch, self._batch = self._batch, self._new_batch()
        self._count = 0
        self._has_events.clear()
        self._full.clear()
        return batch

    async def _deliver(self, batch: Batch) -> None:
        async with self._spool_lock:
            if self.redis_ok and not self.spool.pending:
                if await self._send_direct(batch):
                    return
                self.redis_ok = False
            try:
                line = batch.dumps()
                await asyncio.get_running_loop().run_in_executor(None, self.spool.append, [line])
                self.spooled_batches += 1
                self._recording()
            except OSError as exc:
                # the spool refuses (disk full, read-only): Redis directly if it answers
                # again (out of order, which beats dropping), else the batch is lost
                if not (self._redis_answers and await self._send_direct(batch)):
                    self._drop(batch, EventDrop.NO_STORAGE, exc)
        self._start_recovery()

    async def _send_direct(self, batch: Batch) -> bool:
        try:
            started = time.perf_counter()
            await self._send(batch)
        except Exception as exc:  # any failure: the spool keeps the batch
            log.warning("redis write failed, spooling: %r", exc)
            self._redis_answers = False
            return False
        REDIS_FLUSH.observe(time.perf_counter() - started)
        self.flushed_batches += 1
        self._recording()
        return True

    def _drop(self, batch: Batch, reason: EventDrop, exc: BaseException | None = None) -> None:
        """Count a lost batch's events; the first loss of a spell is logged and makes the
        edge not ready."""
        n = batch.count()
        self.dropped[reason] += n
        self._dropped_since += n
        if not self.losing:
            self.losing = True
            log.error(
                "events are being dropped: neither redis nor the spool takes them (%s: %r)",
                reason,
                exc,
            )

    def _recording(self) -> None:
        if self.losing:
            self.losing = False
            log.warning("recording again; %d events were dropped", self._dropped_since)
            self._dropped_since = 0

    async def _send(self, batch: Batch, marker_ttl: int | None = None) -> None:
        """Record the batch; `marker_ttl` 0 keeps its marker until `_expire_markers`."""
        ttl = self._dedup_ttl if marker_ttl is None else marker_ttl
        try:
            await asyncio.wait_for(self._send_once(batch, ttl), self._timeout)
        except NoScriptError:  # Redis restarted without our script: load it, send again
            self._script_sha = None
            await asyncio.wait_for(self._send_once(batch, ttl), self._timeout)

    async def _send_once(self, batch: Batch, marker_ttl: int) -> None:
        """One script call for the batch; safe to repeat after an unclear failure."""
        if self._cluster:
            return await self._send_cluster(batch, marker_ttl)
        if self._script_sha is None:
            self._script_sha = await self._redis.script_load(RECORD_BATCH)
        entry = batch.entry(self._compress)
        keys: list[str] = [
            K.events_stream(batch.shard),
            K.batch_marker_key(batch.id, batch.shard),
            K.HOT_SINCE,
        ]
        args: list = [marker_ttl, len(entry), *entry]
        if not batch.clicks:
            await self._redis.evalsha(self._script_sha, len(keys), *keys, *args)
            return
        writes = self._hot_writes(batch)
        now = time.monotonic()
        expiring = self._expiries.recent(writes.expiry, now)
        hot_keys, hot_args = writes.script_args(expiring)
        keys += hot_keys
        args += [writes.oldest_ms, *hot_args]
        await self._redis.evalsha(self._script_sha, len(keys), *keys, *args)
        self._expiries.sent(writes.expiry.keys() - expiring, now)

    def _hot_writes(self, batch: Batch) -> hot.HotWrites:
        return hot.HotWrites.of(self._hot_hours, ((c, rec) for c, _, _, rec in batch.clicks))

    async def _send_cluster(self, batch: Batch, marker_ttl: int) -> None:
        """On a Redis Cluster the click keys live in many slots, so one script cannot
        touch them all: the stream entry goes through the append-once script (stream and
        marker share a slot), the click records and paths through a pipeline that
        redis-py splits by node. Every command is idempotent, as above."""
        entry = batch.entry(self._compress)
        await self._redis.eval(
            XADD_ONCE,
            2,
            K.events_stream(batch.shard),
            K.batch_marker_key(batch.id, batch.shard),
            marker_ttl,
            *entry,
        )
        if not batch.clicks:
            return
        pipe = self._redis.pipeline()
        hot.stage(pipe, self._hot_writes(batch))
        await pipe.execute()

    # -- recovery ---------------------------------------------------------------------

    def _start_recovery(self) -> None:
        if self._recovery.task is None:
            self._recovery = Beat()
            self._recovery.start(self._recover())

    async def _recover(self) -> None:
        while await self._recovery.wait(RECOVERY_INTERVAL):
            try:
                await asyncio.wait_for(self._redis.ping(), self._timeout)
            except Exception:
                self._redis_answers = False
                continue
            self._redis_answers = True
            try:
                if await self._replay():
                    log.warning("redis is back; spool replayed")
                    return
            except Exception:  # the spool unreadable for now: try again later
                log.exception("spool replay failed")

    async def _replay(self) -> bool:
        """Send spooled batches in order, a chunk at a time; True once the spool is empty
        (and Redis takes new batches directly again). The lock is held for one chunk at a
        time: new batches meanwhile join the spool's end, in order, instead of waiting in
        memory for a replay that may take minutes after a long outage."""
        loop = asyncio.get_running_loop()
        while True:
            async with self._spool_lock:
                lines = await loop.run_in_executor(None, self.spool.read_chunk)
                if not lines:
                    if await loop.run_in_executor(None, self.spool.clear):
                        await self._expire_markers()
                    self.redis_ok = True
                    self._recording()
                    return True
                sent = 0
                try:
                    for line in lines:
                        await self._replay_line(line)
                        sent += 1
                except Exception as exc:
                    log.warning("spool replay paused: %r", exc)
                    return False
                finally:  # also when cancelled at shutdown: resume after what was sent
                    saved = await loop.run_in_executor(None, self.spool.advance, lines[:sent])
                if saved:
                    await self._expire_markers()

    async def _replay_line(self, line: bytes) -> None:
        if not line:
            return
        try:
            batch = Batch.loads(line)
        except (ValueError, KeyError, TypeError):
            self.unreadable_batches += 1
            log.error("unreadable spool line dropped: %r", line[:200])
            return
        await self._send(batch, marker_ttl=0)  # kept until the position past it is saved
        self._unsaved.append((batch.id, batch.shard))
        self.replayed_batches += 1

    async def _expire_markers(self) -> None:
        """The replay position past these batches is on disk: their markers may expire.
        (If Redis fails here, they stay: a few bytes each, and never a double append.)"""
        unsaved, self._unsaved = self._unsaved, []
        if not unsaved:
            return
        try:
            if self._cluster:
                for batch_id, shard in unsaved:
                    await self._redis.expire(K.batch_marker_key(batch_id, shard), self._dedup_ttl)
                return
            pipe = self._redis.pipeline(transaction=False)
            for batch_id, shard in unsaved:
                pipe.expire(K.batch_marker_key(batch_id, shard), self._dedup_ttl)
            await asyncio.wait_for(pipe.execute(), self._timeout * 4)
        except Exception as exc:
            log.warning("replayed batch markers left without expiry: %r", exc)
