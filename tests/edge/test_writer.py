"""tracker/writer.py in-process against a real redis-server: batch bounds and memory."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import signal
import time
import tracemalloc

import orjson
import redis.asyncio as aioredis

from tracker import hot
from tracker import redis_keys as K
from tracker.edge import writer as writer_module
from tracker.edge.spool import Spool
from tracker.edge.writer import Batch, EventWriter
from tracker.ids import uuid7
from tracker.reasons import EventDrop
from tracker.records import click_record
from tracker.stream_payload import unpack

BATCH = 50


def make_writer(
    redis_server, tmp_path, timeout: float = 10.0, max_waiting_batches: int = 4
) -> EventWriter:
    client = aioredis.Redis.from_url(redis_server.url)
    return EventWriter(
        client,
        Spool(tmp_path / "edge-0.spool"),
        batch_max_events=BATCH,
        batch_max_delay_ms=5,
        lookback_seconds=3600,
        timeout_seconds=timeout,
        dedup_ttl_seconds=60,
        max_waiting_batches=max_waiting_batches,
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
        order += [orjson.loads(line)["sub_n"] for line in unpack(fields[b"clicks"]).split(b"\n")]
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
    sizes = [len(unpack(fields[b"clicks"]).split(b"\n")) for _, fields in entries]
    assert stream_order(redis_server) == list(range(630))
    assert max(sizes) <= BATCH
    assert len(entries) >= 630 // BATCH


async def test_the_writer_says_when_it_falls_behind_redis_and_when_it_caught_up(
    redis_server, tmp_path
):
    """More full batches waiting than `max_waiting_batches`: behind (the fast path stops
    reading, aiohttp's handlers wait in `caught_up`) until half of them are sent; told once
    each way, nothing lost."""
    writer = make_writer(redis_server, tmp_path, max_waiting_batches=4)
    told: list[bool] = []
    writer.on_behind = told.append
    await writer.start()
    await add_clicks(writer, range(10))
    await asyncio.sleep(0.05)
    with frozen(redis_server):
        await add_clicks(writer, range(10, 10 + BATCH * 4), pause_every=BATCH, pause=0.01)
        assert told == [] and not writer.behind  # at most four full batches wait
        await add_clicks(writer, range(10 + BATCH * 4, 10 + BATCH * 6))
        assert told == [True] and writer.behind
        waiter = asyncio.create_task(writer.caught_up())  # aiohttp's tracking handlers
        await asyncio.sleep(0.05)
        assert not waiter.done()
    await wait_for(lambda: told == [True, False])
    await asyncio.wait_for(waiter, 5)
    await asyncio.wait_for(writer.caught_up(), 1)  # not behind: at once
    await writer.close()
    assert stream_order(redis_server) == list(range(10 + BATCH * 6))
    assert writer.held_spells == 1


def test_buffered_events_take_about_their_own_size(redis_server, tmp_path):
    """What the writer holds per event is close to the event's JSON, not orjson's working
    buffer (8 KB per row, which let an edge grow by hundreds of MB while Redis was slow)."""
    writer = make_writer(redis_server, tmp_path)
    clicks = [click(n) for n in range(2000)]
    json_bytes = sum(len(orjson.dumps(row)) + len(hot.encode(rec)) for row, rec, _ in clicks)
    # Only what the writer's own code allocated and still holds counts (the compact record
    # is made in tracker/hot.py): not whatever other threads of the test process (or the
    # interpreter) allocate meanwhile.
    only_writer = [
        tracemalloc.Filter(True, writer_module.__file__),
        tracemalloc.Filter(True, hot.__file__),
    ]
    tracemalloc.start()
    try:
        before = tracemalloc.take_snapshot().filter_traces(only_writer)
        for row, record, ms in clicks:
            writer.add_click(row, record, ms)
        after = tracemalloc.take_snapshot().filter_traces(only_writer)
    finally:
        tracemalloc.stop()
    held = sum(stat.size_diff for stat in after.compare_to(before, "filename"))
    assert writer.recorded == 2000
    # the JSON itself plus a little bookkeeping per click (an orjson buffer kept per
    # row would be 8 KB each, over ten times this)
    assert json_bytes < held < 1.6 * json_bytes, (held, json_bytes)


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


class RefusingSpool(Spool):
    """A spool whose disk refuses writes while `full` is set (an injected ENOSPC)."""

    full = False

    def append(self, lines: list[bytes]) -> None:
        if self.full:
            raise OSError(errno.ENOSPC, "No space left on device")
        super().append(lines)


async def wait_for(predicate, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0.02)


async def test_spool_refusing_writes_during_an_outage_drops_counted_and_recovers(
    redis_server, tmp_path
):
    """Redis down and the spool's disk full: the flush loop keeps running, nothing is held
    in memory, every lost event is counted, and `losing` is set. When the disk takes
    writes again, and then Redis comes back, recording resumes by itself."""
    writer = make_writer(redis_server, tmp_path, timeout=0.3)
    writer.spool = spool = RefusingSpool(tmp_path / "edge-0.spool")
    await writer.start()
    redis_server.stop()
    spool.full = True
    await add_clicks(writer, range(0, 200), pause_every=50, pause=0.02)
    await wait_for(lambda: sum(writer.dropped.values()) == 200)
    assert writer.dropped == {EventDrop.NO_STORAGE: 200}
    assert writer.losing and not writer._task.done()
    assert not writer._ready and writer._count == 0  # nothing kept in memory

    spool.full = False  # the disk has room again, Redis still away
    await add_clicks(writer, range(200, 300), pause_every=50, pause=0.02)
    await wait_for(lambda: spool.pending and writer._count == 0 and not writer._ready)
    assert not writer.losing
    redis_server.start()
    await wait_for(lambda: writer.redis_ok)
    await add_clicks(writer, range(300, 350))
    await writer.close()
    assert stream_order(redis_server) == list(range(200, 350))
    assert sum(writer.dropped.values()) == 200


async def test_full_spool_with_redis_answering_sends_directly(redis_server, tmp_path):
    """The spool's disk is full while batches are waiting in it and Redis answers again:
    new batches go to Redis rather than being dropped."""
    spool_batches(tmp_path / "edge-0.spool", range(1000, 1010, 10))
    writer = make_writer(redis_server, tmp_path, timeout=0.3)
    writer.spool = spool = RefusingSpool(tmp_path / "edge-0.spool")
    writer.redis_ok = False
    writer._redis_answers = True
    spool.full = True
    await writer.start()
    await add_clicks(writer, range(0, 100))
    await writer.close()
    assert sorted(stream_order(redis_server)) == list(range(100)) + list(range(1000, 1010))
    assert not writer.dropped


def spool_batches(path, numbers: range) -> None:
    spool = Spool(path)
    for start in numbers:
        batch = Batch(uuid7())
        for n in range(start, start + 10):
            row, record, ms = click(n)
            batch.rows.setdefault("clicks", []).append(orjson.dumps(row))
            batch.clicks.append((row["click_id"], row["visitor_id"], ms, orjson.dumps(record)))
        spool.append([batch.dumps()])


async def test_replayed_batches_are_appended_once_when_the_position_cannot_be_saved(
    redis_server, tmp_path, monkeypatch
):
    """The spool's disk refuses the replay position and the emptying of the file (a
    read-only disk); after the markers' usual TTL has passed, a restart replays the same
    spool again, and the stream still holds every batch once."""
    path = tmp_path / "edge-0.spool"
    spool_batches(path, range(0, 100, 10))
    (tmp_path / "edge-0.spool.pos.tmp").mkdir()  # the position cannot be written

    def read_only(*args):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr("tracker.edge.spool.os.truncate", read_only)

    async def replay_once() -> EventWriter:
        writer = make_writer(redis_server, tmp_path, timeout=1.0)
        writer._dedup_ttl = 1  # the usual marker TTL, shortened so that it passes
        await writer.start()
        await wait_for(lambda: writer.redis_ok)
        await writer.close()
        return writer

    first = await replay_once()
    assert first.replayed_batches == 10 and path.stat().st_size > 0
    assert stream_order(redis_server) == list(range(100))
    await asyncio.sleep(1.5)
    second = await replay_once()  # the restart: the same lines again
    assert second.replayed_batches == 10
    assert stream_order(redis_server) == list(range(100))


async def test_replayed_batch_markers_expire_once_the_position_is_saved(redis_server, tmp_path):
    """Markers are kept without expiry only until the spool is emptied: none leak."""
    spool_batches(tmp_path / "edge-0.spool", range(0, 50, 10))
    writer = make_writer(redis_server, tmp_path)
    await writer.start()
    await wait_for(lambda: writer.redis_ok)
    await writer.close()
    client = redis_server.client()
    markers = list(client.scan_iter(match=K.batch_marker_key("*")))
    assert len(markers) == 5
    assert all(0 < client.ttl(m) <= 60 for m in markers)
    assert stream_order(redis_server) == list(range(50))


async def test_a_hot_hash_gets_its_expiry_from_the_first_batch_then_every_few_minutes(
    redis_server, tmp_path
):
    """EXPIREAT once per hash and edge, not once per batch: a hash whose expiry Redis lost
    (here: PERSIST) gets it back when the edge sends it again (`ExpiriesSent.resend`)."""
    client = redis_server.client()
    writer = make_writer(redis_server, tmp_path)
    await writer.start()
    hour = time.time_ns() // 1_000_000 // hot.HOUR_MS
    # clicks of this hour in one click hash (shard 0: the last byte of the id)
    ids = iter(c for c in (uuid7() for _ in range(10_000)) if hot.shard(hot.raw_id(c)) == 0)
    key = K.hot_clicks_key(hour, 0)

    async def record_a_click() -> None:
        row, record, ms = click(0)
        row["click_id"] = click_id = next(ids)
        writer.add_click(row, record, ms)
        for _ in range(500):
            if client.hexists(key, hot.raw_id(click_id)):
                return
            await asyncio.sleep(0.01)
        raise AssertionError("the click was not written")

    await record_a_click()
    assert client.ttl(key) > 48 * 3600  # the hot window and then some
    client.persist(key)
    await record_a_click()
    assert client.ttl(key) == -1  # not sent again so soon
    writer._expiries.resend = 0.0
    await record_a_click()
    assert client.ttl(key) > 48 * 3600
    await writer.close()


def test_expiries_sent_are_left_out_until_resent():
    sent = hot.ExpiriesSent(resend=300)
    assert sent.recent(["a", "b"], now=1000) == set()
    sent.sent(["a"], now=1000)
    assert sent.recent(["a", "b"], now=1299) == {"a"}
    assert sent.recent(["a", "b"], now=1300) == set()
