"""tracker/writer.py in-process against a real redis-server: batch bounds and memory."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import tracemalloc

import orjson
import redis.asyncio as aioredis

from tracker import redis_keys as K
from tracker.edge.spool import Spool
from tracker.edge.writer import EventWriter
from tracker.ids import uuid7
from tracker.records import click_record

BATCH = 50


def make_writer(redis_server, tmp_path, timeout: float = 10.0) -> EventWriter:
    client = aioredis.Redis.from_url(redis_server.url)
    return EventWriter(
        client,
        Spool(tmp_path / "edge-0.spool"),
        batch_max_events=BATCH,
        batch_max_delay_ms=5,
        lookback_seconds=3600,
        timeout_seconds=timeout,
        dedup_ttl_seconds=60,
    )


async def add_clicks(
    writer: EventWriter, numbers: range, pause_every: int = 0, pause: float = 0.0
) -> None:
    """Clicks numbered in arrival order; every `pause_every`, the flush task gets to run."""
    for n in numbers:
        writer.add_click(*click(n))
        if pause_every and n % pause_every == 0:
            await asyncio.sleep(pause)


@contextlib.contextmanager
def frozen(redis_server):
    """Redis stops answering (SIGSTOP) until the block ends."""
    redis_server.proc.send_signal(signal.SIGSTOP)
    try:
        yield
    finally:
        redis_server.proc.send_signal(signal.SIGCONT)


def stream_order(redis_server) -> list[int]:
    order = []
    for _, fields in redis_server.client().xrange(K.events_stream(0)):
        order += [orjson.loads(line)["sub_n"] for line in fields[b"clicks"].split(b"\n")]
    return order


def click(n: int) -> tuple[dict, dict, int]:
    ms = 1_700_000_000_000 + n
    row = {
        "event_time": "2023-11-14 22:13:20.000",
        "click_id": uuid7(ms),
        "visitor_id": uuid7(ms),
        "link_slug": "spring",
        "campaign_id": "c1",
        "affiliate_id": "a1",
        "advertiser_id": "",
        **{f"sub{i}": f"value-{n}-{i}" for i in range(1, 6)},
        "user_agent": "Mozilla/5.0 (Windows NT 10.0; Win64; x64) Chrome/131.0 " + "x" * 400,
        "sub_n": n,
    }
    return row, click_record(row, ms), ms


async def test_batches_stay_bounded_and_ordered_while_redis_stalls(redis_server, tmp_path):
    """Clicks keep arriving while Redis is frozen; once it thaws, every stream entry
    holds at most batch_max_events and the clicks come out in the order they came in."""
    writer = make_writer(redis_server, tmp_path)
    await writer.start()
    await add_clicks(writer, range(30))  # a first flush, so the frozen one below is in flight
    await asyncio.sleep(0.05)
    with frozen(redis_server):  # the flush task runs and waits on Redis
        await add_clicks(writer, range(30, 630), pause_every=100, pause=0.01)
    await writer.close()
    assert writer.spooled_batches == 0

    entries = redis_server.client().xrange(K.events_stream(0))
    sizes = [len(fields[b"clicks"].split(b"\n")) for _, fields in entries]
    assert stream_order(redis_server) == list(range(630))
    assert max(sizes) <= BATCH
    assert len(entries) >= 630 // BATCH


def test_buffered_events_take_about_their_own_size(redis_server, tmp_path):
    """What the writer holds per event is close to the event's JSON, not orjson's working
    buffer (8 KB per row, which let an edge grow by hundreds of MB while Redis was slow)."""
    writer = make_writer(redis_server, tmp_path)
    clicks = [click(n) for n in range(2000)]
    json_bytes = sum(len(orjson.dumps(row)) + len(orjson.dumps(rec)) for row, rec, _ in clicks)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for row, record, ms in clicks:
            writer.add_click(row, record, ms)
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert writer.recorded == 2000
    assert held < 1.6 * json_bytes, (held, json_bytes)


async def test_spool_replays_a_chunk_at_a_time_while_new_clicks_join_its_end(
    redis_server, tmp_path, monkeypatch
):
    """Redis freezes past the timeout, so batches go to the spool; once it answers, the
    spool is replayed a chunk at a time while clicks keep coming. Every click reaches the
    stream once, in arrival order, and the spool ends empty."""
    monkeypatch.setattr("tracker.edge.spool.CHUNK_BYTES", 30_000)  # under one batch: a line a read
    writer = make_writer(redis_server, tmp_path, timeout=0.3)
    reads = []
    read_chunk = writer.spool.read_chunk
    writer.spool.read_chunk = lambda: reads.append(1) or read_chunk()
    await writer.start()
    await add_clicks(writer, range(30))
    await asyncio.sleep(0.05)
    with frozen(redis_server):  # past the timeout: batches go to the spool
        await add_clicks(writer, range(30, 330), pause_every=50, pause=0.1)
        await asyncio.sleep(0.4)
    await add_clicks(writer, range(330, 630), pause_every=25, pause=0.01)  # during replay
    await writer.close(replay_seconds=10)

    assert writer.spooled_batches >= 300 // BATCH
    assert writer.replayed_batches == writer.spooled_batches
    assert len(reads) > writer.spooled_batches // 2  # chunks, not the whole file at once
    assert stream_order(redis_server) == list(range(630))
    assert not writer.spool.pending
    assert writer.spool.path.stat().st_size == 0
    assert not writer.spool.position_path.exists()
