"""The sink: events stream -> ClickHouse, at least once from Redis, exactly once in tables.

Loop: read up to `read_entries` stream entries through the consumer group, insert each
table's rows as one JSONEachRow block, then XACK (and XDEL) the entries. Nothing is
acknowledged before its insert succeeded; a failed insert is retried with backoff.

Exactly once: the insert token is derived from the entries' ids. After a crash the
sink's pending list splits into the batches it read: each unacknowledged batch is read
again with the same ids, so the same token, and ClickHouse skips an insert it has already
seen. That holds because the sink reads ahead (the next batch, from a thread, while
chDB inserts this one; chDB releases the GIL) only after a full read: the pending list
is then a full batch followed by the one read ahead, and re-reading it `read_entries`
at a time gives the same two batches. Entries left pending by a consumer that
went silent are claimed per consumer, so they too keep their batch and token. An edge
batch appended twice (an unclear Redis failure, then a replay) is recognised by its
batch id: the edge's script appends it once, and the sink skips a repeat within a read.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from functools import partial
from typing import Any

import orjson
from redis.exceptions import ResponseError

from tracker import metrics, stream_payload
from tracker import redis_keys as K
from tracker.clickhouse import ClickHouse
from tracker.ledger.commissions import Engine
from tracker.reasons import EnrichmentDrop
from tracker.redis_connection import BETWEEN_STATES, UNREACHABLE
from tracker.redis_connection import as_text as _text
from tracker.sink import deferred
from tracker.sink.attributor import Attributor
from tracker.sink.enrich import rows
from tracker.sink.enrich.pipeline import Pipeline
from tracker.sink.erasures import Erasures
from tracker.sink.history import ClickHistory
from tracker.stream_lag import stream_lag
from tracker.types import StreamEntry, SyncRedis

log = logging.getLogger(__name__)

BACKOFF_START = 0.2
ENRICH_SLICE = 1_000  # rows enriched at a time (see Sink.enrich)
BACKOFF_MAX = 10.0
# Replies saying the stream's consumer group is gone: NOGROUP to a read, UNBLOCKED to a
# read blocked while the stream was deleted (FLUSHALL on the node).
GROUP_GONE = ("NOGROUP", "UNBLOCKED")


class Stopping(Exception):
    """Asked to stop while a batch could not be stored; it stays pending."""


class Sink:
    def __init__(
        self,
        redis: SyncRedis,
        ch: ClickHouse,
        *,
        consumer: str,
        read_entries: int,
        block_ms: int,
        reclaim_idle_ms: int,
        insert_interval_ms: int = 0,
        stop: threading.Event | None = None,
        attributor: Attributor | None = None,
        pipeline: Pipeline | None = None,
        streams: list[str] | None = None,
        commissions: Engine | None = None,
        auto_approve: Callable[[], int] | None = None,
        auto_approve_seconds: float = 60.0,
        deliveries: Callable[[list[bytes], list[bytes]], int] | None = None,
        history: ClickHistory | None = None,
        lookback_ms: int = 30 * 86_400_000,
        erasures: Erasures | None = None,
    ) -> None:
        self.redis = redis
        self.ch = ch
        self.consumer = consumer
        self.read_entries = read_entries
        self.block_ms = block_ms
        self.reclaim_idle_ms = reclaim_idle_ms
        self.insert_interval = insert_interval_ms / 1000
        self._next_read = 0.0  # monotonic time before which a read waits (see step)
        self.stop = stop or threading.Event()
        self.attributor = attributor
        self.pipeline = pipeline
        self.commissions = commissions
        self.auto_approve = auto_approve  # approves what campaigns approve by themselves
        self.auto_approve_seconds = auto_approve_seconds
        self._last_auto_approve = 0.0
        self.deliveries = deliveries  # postbacks out / webhooks onto their queue
        self.history = history  # finds the clicks of deferred conversions
        self.lookback_ms = lookback_ms
        self.erasures = erasures  # events of visitors erased while on their way
        self.streams = streams or [K.EVENTS_STREAM]  # every shard of the events stream
        self._turn = 0
        self._last_reclaim = 0.0
        self._last_lag_report = 0.0
        self._ahead: tuple[str, Future] | None = None  # (stream, the next batch's read)
        self._reader = ThreadPoolExecutor(1, thread_name_prefix="sink-read-ahead")
        # counters
        self.rows_inserted: dict[str, int] = defaultdict(int)
        self.batches = 0
        self.insert_failures = 0
        self.duplicate_batches = 0

    # -- the loop ---------------------------------------------------------------------

    def ensure_group(self) -> None:
        for stream in self.streams:
            try:
                self.redis.xgroup_create(stream, K.SINK_GROUP, id="0", mkstream=True)
            except ResponseError as exc:
                if "BUSYGROUP" not in str(exc):
                    raise

    def run(self, drain_seconds: float = 5.0) -> None:
        """Consume until `stop` is set, then keep going while entries remain, for at most
        `drain_seconds`, so a clean stop leaves nothing behind that was already sent."""
        try:
            self._consume(drain_seconds)
        finally:
            self.close()

    def _consume(self, drain_seconds: float) -> None:
        backoff = BACKOFF_START
        setup = False
        drain_until: float | None = None
        while True:
            if self.stop.is_set() and drain_until is None:
                drain_until = time.monotonic() + drain_seconds
            try:
                if not setup:
                    self.ensure_group()
                    self.process_own_pending()
                    setup = True
                if drain_until is None:
                    self.maybe_reclaim()
                    self.maybe_auto_approve()
                    self.maybe_report_lag()
                draining = drain_until is not None
                if drain_until is not None and time.monotonic() > drain_until:
                    return
                handled = self.step(block=not draining)
                if draining and not handled:
                    return
                backoff = BACKOFF_START
            except Stopping:
                return
            except UNREACHABLE as exc:
                if isinstance(exc, ResponseError) and not isinstance(exc, BETWEEN_STATES):
                    if not str(exc).startswith(GROUP_GONE):
                        raise
                    # Redis came back with empty memory (no persistence), or its memory was
                    # flushed while this read was blocked (UNBLOCKED): the group is gone
                    log.warning("the sink's consumer group is gone (an emptied Redis); creating it")
                    self._drop_ahead()
                    setup = False
                    continue
                self._drop_ahead()
                if drain_until is not None:
                    return
                # entries delivered in a reply we never got are pending for us: look again
                setup = False
                log.warning("redis unavailable to the sink (%r); retrying in %.1fs", exc, backoff)
                self.stop.wait(backoff)
                backoff = min(backoff * 2, BACKOFF_MAX)

    def step(self, block: bool = True) -> int:
        """Read one batch of new entries per shard and store it; returns entries handled.
        Waits (up to block_ms, on one shard in turn) only when every shard was empty.

        Paced: after a step that read entries but filled no read, the next step waits
        until `insert_interval` after that one began (not while stopping). An insert's
        cost is mostly fixed, so gathering what arrives meanwhile into one read makes
        fewer, larger inserts; a full read means a backlog, and the next read goes at once."""
        pause = self._next_read - time.monotonic()
        if pause > 0 and block:
            self.stop.wait(pause)
        began = time.monotonic()
        if len(self.streams) == 1:
            handled = self._read(self.streams[0], ">", self.block_ms if block else None)
        else:
            handled = sum(self._read(stream, ">", None) for stream in self.streams)
            if not handled and block:
                self._turn = (self._turn + 1) % len(self.streams)
                handled = self._read(self.streams[self._turn], ">", self.block_ms)
        paced = handled and self._ahead is None  # no read was full
        self._next_read = began + self.insert_interval if paced else 0.0
        return handled

    def _read(self, stream: str, start: str, block: int | None) -> int:
        entries = self._take_ahead(stream) if start == ">" else []
        if not entries:
            entries = self._fetch(stream, start, block)
        if entries:
            if start == ">" and len(entries) == self.read_entries and self._ahead is None:
                # a full read: more is waiting, so read it while this batch is inserted
                # (unless another shard's read ahead is still to be taken: replacing it
                # would leave those entries pending for this consumer until a restart)
                self._ahead = (stream, self._reader.submit(self._fetch, stream, ">", None))
            self.handle(entries, stream, redelivered=start != ">")
        return len(entries)

    def _fetch(self, stream: str, start: str, block: int | None) -> list[StreamEntry]:
        response: Any = self.redis.xreadgroup(  # [[stream, [(id, fields), ...]]] or []
            K.SINK_GROUP, self.consumer, {stream: start}, count=self.read_entries, block=block
        )
        return response[0][1] if response else []

    def _take_ahead(self, stream: str) -> list[StreamEntry]:
        if self._ahead is None or self._ahead[0] != stream:
            return []
        future = self._ahead[1]
        self._ahead = None
        return future.result()

    def _drop_ahead(self) -> None:
        """Forget the batch read ahead: its entries are pending for this consumer, and
        `process_own_pending` takes them up in order."""
        if self._ahead is not None:
            with contextlib.suppress(Exception):
                self._ahead[1].result()
            self._ahead = None

    def close(self) -> None:
        """Wait for a read in flight, so nothing reads for this consumer after it stops."""
        self._drop_ahead()
        self._reader.shutdown()

    def process_own_pending(self) -> None:
        """Finish what this consumer read but did not acknowledge before it stopped."""
        for stream in self.streams:
            while not self.stop.is_set() and self._read(stream, "0", None):
                pass

    def maybe_auto_approve(self) -> None:
        now = time.monotonic()
        if self.auto_approve is None or now - self._last_auto_approve < self.auto_approve_seconds:
            return
        self._last_auto_approve = now
        try:
            self.auto_approve()
        except Exception as exc:  # the ledger away: the next round tries again
            log.warning("auto-approval skipped: %r", exc)

    def maybe_reclaim(self) -> None:
        now = time.monotonic()
        if now - self._last_reclaim < max(self.reclaim_idle_ms / 2000, 0.5):
            return
        self._last_reclaim = now
        self.reclaim()

    def maybe_report_lag(self) -> None:
        now = time.monotonic()
        if now - self._last_lag_report < 5.0:
            return
        self._last_lag_report = now
        metrics.STREAM_LAG.set(stream_lag(self.redis, self.streams) or 0)

    def reclaim(self) -> int:
        """Take over entries another consumer left pending for longer than the idle
        bound: one consumer and shard at a time, so its unacknowledged batch stays one
        batch."""
        taken = 0
        for stream in self.streams:
            summary = self.redis.xpending(stream, K.SINK_GROUP)
            for consumer in summary.get("consumers") or []:
                name = _text(consumer["name"])
                if name != self.consumer:
                    taken += self._claim(stream, name)
        return taken

    def _claim(self, stream: str, name: str) -> int:
        pending: Any = self.redis.xpending_range(
            stream,
            K.SINK_GROUP,
            min="-",
            max="+",
            count=self.read_entries,
            consumername=name,
            idle=self.reclaim_idle_ms,
        )
        ids = [p["message_id"] for p in pending]
        if not ids:
            return 0
        claimed: Any = self.redis.xclaim(
            stream, K.SINK_GROUP, self.consumer, self.reclaim_idle_ms, ids
        )
        entries = [(eid, fields) for eid, fields in claimed if fields]
        gone = [eid for eid, fields in claimed if not fields]
        if gone:  # deleted from the stream already: nothing left to store
            self.redis.xack(stream, K.SINK_GROUP, *gone)
        if entries:
            log.warning("claimed %d entries left pending by %s", len(entries), name)
            self.handle(entries, stream, redelivered=True)
        return len(entries)

    # -- one batch --------------------------------------------------------------------

    def handle(
        self, entries: list[StreamEntry], stream: str = K.EVENTS_STREAM, redelivered: bool = False
    ) -> None:
        """Store one batch and acknowledge it. Raises Stopping when asked to stop while
        ClickHouse refuses it: the batch then stays pending, whole, for the next start.
        `redelivered`: read before (by a sink that stopped or died), so ClickHouse may
        hold it already and deduplicate it by its token."""
        started = time.monotonic()
        ids = [_text(eid) for eid, _ in entries]
        token = f"{ids[0]}/{ids[-1]}/{len(ids)}"
        if stream != K.EVENTS_STREAM:  # entry ids repeat across shards
            token = f"{stream}/{token}"
        payloads: dict[str, list[bytes]] = defaultdict(list)
        seen: set[bytes] = set()
        for _, fields in entries:
            batch_id = fields.get(K.BATCH_ID_FIELD.encode(), b"")
            if batch_id in seen:
                self.duplicate_batches += 1
                metrics.SINK_DROPPED.labels(EnrichmentDrop.DUPLICATE_BATCH).inc()
                continue
            seen.add(batch_id)
            for key, value in fields.items():
                table = _text(key)
                if table in K.TABLES:
                    try:
                        payloads[table].append(stream_payload.unpack(value))
                    except stream_payload.Unreadable as exc:
                        metrics.SINK_DROPPED.labels(EnrichmentDrop.UNREADABLE_ROWS).inc()
                        log.error("entry field %r does not decompress (%s); skipped", table, exc)
                elif table != K.BATCH_ID_FIELD:
                    metrics.SINK_DROPPED.labels(EnrichmentDrop.UNKNOWN_TABLE).inc()
                    log.error("entry field %r is not a known table; skipped", table)
        if self.history and payloads.get("conversions"):
            payloads["conversions"] = deferred.resolve_payload(
                self.history, payloads["conversions"], self.lookback_ms, self.redis
            )
        marks: dict[str, int] = {}
        dropped: dict[str, set] = {}
        if self.erasures:
            marks = self.erasures.marks()
            dropped = self.erasures.drop(payloads, marks)
            self.erasures.forget_hot(dropped)
        if self.pipeline:  # what its steps count from here is kept once the batch is stored
            self.pipeline.begin(stream, ids[-1], redelivered)
            if marks:
                self.pipeline.forget(marks)
            self.enrich(payloads)
        if self.attributor and payloads.get("conversions"):
            credits = self.attributor.credit_rows(b"\n".join(payloads["conversions"]))
            if credits:
                payloads["attribution_credits"] += credits
        rows = 0
        for table, parts in payloads.items():
            if not parts:
                continue
            sent = sum(part.count(b"\n") for part in parts) + len(parts)
            count = self._insert(table, parts, f"{token}/{table}", sent, redelivered)
            if count is None:
                raise Stopping
            self.rows_inserted[table] += count
            metrics.SINK_ROWS.labels(table).inc(count)
            rows += count
        if self.erasures:
            self.erasures.sweep(payloads, marks, dropped, redelivered)
        commission_lines: list[bytes] = []
        if self.commissions and payloads.get("conversions"):
            commission_lines = self.commission(payloads["conversions"], token)
            rows += len(commission_lines)
        if self.deliveries and payloads.get("conversions"):
            self.deliveries(payloads["conversions"], commission_lines)
        if self.pipeline:
            self.pipeline.stored()
        pipe = self.redis.pipeline(transaction=False)
        pipe.xack(stream, K.SINK_GROUP, *ids)
        pipe.xdel(stream, *ids)
        pipe.execute()
        self.batches += 1
        metrics.SINK_BATCHES.inc()
        metrics.SINK_BATCH_ROWS.observe(rows)
        metrics.SINK_BATCH_SECONDS.observe(time.monotonic() - started)

    def commission(self, conversions: list[bytes], token: str) -> list[bytes]:
        """Commissions of the batch's conversion steps into the ledger (one transaction;
        a replayed step returns its stored rows), then their rows into ClickHouse with
        the batch's token, so both hold each step once whatever crashed in between."""
        events = [orjson.loads(line) for part in conversions for line in part.split(b"\n") if line]
        backoff = BACKOFF_START
        while True:
            try:
                assert self.commissions is not None  # only called when there is a ledger
                lines = self.commissions.process(events)
                break
            except Exception as exc:  # store down, or a concurrent writer: the same again
                metrics.SINK_FAILURES.inc()
                log.warning("ledger step failed (%r); retrying in %.1fs", exc, backoff)
                if self.stop.wait(backoff):
                    raise Stopping from None
                backoff = min(backoff * 2, BACKOFF_MAX)
        if not lines:
            return []
        count = self._insert("commissions", [b"\n".join(lines)], f"{token}/commissions", len(lines))
        if count is None:
            raise Stopping
        self.rows_inserted["commissions"] += count
        metrics.SINK_ROWS.labels("commissions").inc(count)
        return lines

    def enrich(self, payloads: dict[str, list[bytes]]) -> None:
        """Run the enrichment steps over the tables they apply to (clicks first, so
        conversions in the same batch see the clicks' flags)."""
        pipeline = self.pipeline
        if pipeline is None:
            return
        for table in sorted(pipeline.tables(), key=lambda t: t != "clicks"):
            if not payloads.get(table):
                continue
            lines = rows.split_lines(payloads[table])
            parts: list[bytes] = []
            # A slice at a time, decoded, enriched and encoded into one part while its rows
            # are still in the CPU's cache, and each row's JSON freed at once for the next
            # to reuse: encoding a whole read (up to 100,000 rows) and joining it at the
            # end cost 5 times more, most of it the kernel handing out fresh memory.
            fields = pipeline.fields.get(table) if rows.compiled else None
            read = rows.Fields(fields) if fields else None
            for start in range(0, len(lines), ENRICH_SLICE):
                some = lines[start : start + ENRICH_SLICE]
                if read is not None:  # read and written where they lie (rows.py)
                    part = rows.enrich_lines(some, read, partial(pipeline.process, table))
                    if part:
                        parts.append(part)
                    continue
                events = pipeline.process(table, [orjson.loads(line) for line in some])
                if events:
                    parts.append(b"\n".join(map(orjson.dumps, events)))
            payloads[table] = parts

    def _insert(
        self, table: str, payload: list[bytes], token: str, rows: int, redelivered: bool = False
    ) -> int | None:
        """Insert until ClickHouse takes it; the rows it stored (None: asked to stop).

        A first insert of a batch stores all its rows. A retry, or a batch read before,
        may be one ClickHouse already holds and deduplicates by its token: its rows are
        the table's growth across the insert (at most the batch's rows), so
        `tracker_sink_rows_total` counts no row twice. (A failed insert that did store its
        rows leaves them uncounted, the lesser error.)"""
        backoff = BACKOFF_START
        before = self._table_rows(table) if redelivered else None
        while True:
            try:
                self.ch.insert_jsonl(table, payload, token)
                if before is None:
                    return rows
                return max(0, min(rows, self._table_rows(table) - before))
            except Exception as exc:  # ClickHouse down or refusing: retry the same batch
                self.insert_failures += 1
                metrics.SINK_FAILURES.inc()
                log.warning("insert into %s failed (%s); retrying in %.1fs", table, exc, backoff)
                if self.stop.wait(backoff):
                    return None
                backoff = min(backoff * 2, BACKOFF_MAX)
                if before is None:
                    with contextlib.suppress(Exception):  # ClickHouse still away: next time
                        before = self._table_rows(table)

    def _table_rows(self, table: str) -> int:
        _, rows = self.ch.query(f"SELECT count() FROM {self.ch.database}.{table}", readonly=False)
        return int(rows[0][0])
