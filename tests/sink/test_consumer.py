"""The sink's exactly-once rules, step by step, against real Redis and real chDB."""

from __future__ import annotations

import threading

import orjson
import pytest

from tracker import config, metrics, migrations, stream_payload
from tracker import redis_keys as K
from tracker.clickhouse import ClickHouse
from tracker.ids import uuid7
from tracker.reasons import EnrichmentDrop
from tracker.sink.consumer import Sink, Stopping
from tracker.testing import wait_until
from tracker.timefmt import format_ms, now_ms


@pytest.fixture
def ch(chdb_database):
    return chdb_database


def test_migrations_are_idempotent(ch, tmp_path):
    settings = config.load(
        env={"TRACKER_DATA_DIR": str(tmp_path), "TRACKER_CLICKHOUSE_DATABASE": ch.database}
    )
    assert migrations.apply(ch, settings) == []
    versions = ch.query(f"SELECT version FROM {ch.database}.schema_migrations ORDER BY version")[1]
    assert [v[0] for v in versions] == [n for n, _, _ in migrations.migration_files()]


@pytest.fixture
def r(redis_server):
    return redis_server.client()


def add_batches(
    r, batches: int, per_batch: int, stream: str = K.EVENTS_STREAM, packed: bool = True
) -> list[str]:
    """Stream entries as the edge writes them (rows compressed unless `packed` is
    false, as other writers append them); returns the click ids."""
    ids = []
    for _ in range(batches):
        rows = []
        for _ in range(per_batch):
            click_id = uuid7()
            ids.append(click_id)
            rows.append(
                orjson.dumps(
                    {
                        "event_time": format_ms(now_ms()),
                        "click_id": click_id,
                        "visitor_id": uuid7(),
                        "link_slug": "s",
                        "campaign_id": "c",
                        "ip": "10.0.0.1",
                    }
                )
            )
        payload = b"\n".join(rows)
        if packed:
            payload = stream_payload.pack(payload)
        r.xadd(stream, {K.BATCH_ID_FIELD: uuid7(), "clicks": payload})
    return ids


def count(ch: ClickHouse) -> int:
    return ch.query(f"SELECT count() FROM {ch.database}.clicks")[1][0][0]


def make_sink(r, ch, consumer="sink-a", read_entries=4, **kwargs) -> Sink:
    sink = Sink(
        r,
        ch,
        consumer=consumer,
        read_entries=read_entries,
        block_ms=10,
        reclaim_idle_ms=kwargs.pop("reclaim_idle_ms", 60_000),
        **kwargs,
    )
    sink.ensure_group()
    return sink


class CrashAfterInsert:
    """The real ClickHouse, but the process 'dies' right after an insert succeeded."""

    def __init__(self, ch: ClickHouse) -> None:
        self.ch = ch

    def __getattr__(self, name):  # queries go to the real one
        return getattr(self.ch, name)

    def insert_jsonl(self, table, payload, token):
        self.ch.insert_jsonl(table, payload, token)
        raise SystemExit("crashed before XACK")


class FailingInserts:
    """The real ClickHouse, refusing the first `failures` inserts (ClickHouse down)."""

    def __init__(self, ch: ClickHouse, failures: int) -> None:
        self.ch, self.failures, self.calls = ch, failures, 0

    def __getattr__(self, name):
        return getattr(self.ch, name)

    def insert_jsonl(self, table, payload, token):
        self.calls += 1
        if self.calls <= self.failures:
            raise ConnectionError("clickhouse is down")
        self.ch.insert_jsonl(table, payload, token)


def test_reads_inserts_and_acknowledges(r, ch):
    add_batches(r, 10, 25)
    sink = make_sink(r, ch)
    while sink.step(block=False):
        pass
    assert count(ch) == 250
    assert r.xlen(K.EVENTS_STREAM) == 0  # acknowledged entries are deleted
    assert r.xpending(K.EVENTS_STREAM, K.SINK_GROUP)["pending"] == 0


def test_crash_between_insert_and_ack_does_not_double_count(r, ch):
    add_batches(r, 3, 10)
    with pytest.raises(SystemExit):
        make_sink(r, CrashAfterInsert(ch)).step(block=False)
    assert count(ch) == 10 * 3  # inserted (read_entries=4 takes all three entries)...
    assert r.xpending(K.EVENTS_STREAM, K.SINK_GROUP)["pending"] == 3  # ...not acknowledged

    restarted = make_sink(r, ch)  # same consumer name: it finishes its own batch first
    restarted.process_own_pending()
    assert count(ch) == 30  # same entries -> same token -> ClickHouse skipped the repeat
    assert r.xpending(K.EVENTS_STREAM, K.SINK_GROUP)["pending"] == 0
    assert restarted.rows_inserted["clicks"] == 0  # and tracker_sink_rows_total counts none


def test_full_reads_of_several_shards_each_keep_their_read_ahead(r, ch):
    """Two shards, each with more than one read's worth: every entry is stored and
    acknowledged without a restart (a second shard's read ahead must not replace the
    first's, whose entries would stay pending for this consumer)."""
    streams = [K.events_stream(0), K.events_stream(1)]
    for stream in streams:
        add_batches(r, 10, 5, stream)
    sink = make_sink(r, ch, streams=streams)
    while sink.step(block=False):
        pass
    assert count(ch) == distinct_clicks(ch) == 100
    assert all(r.xpending(s, K.SINK_GROUP)["pending"] == 0 for s in streams)


def test_reads_are_paced_so_what_arrives_meanwhile_goes_in_one_insert(r, ch):
    """After a read that was not full, the next waits for the insert interval: entries
    appended during the wait are read and inserted together."""
    add_batches(r, 1, 5)
    sink = make_sink(r, ch, insert_interval_ms=2_000)
    assert sink.step() == 1
    add_batches(r, 1, 5)
    later = threading.Timer(0.05, add_batches, (r, 1, 5))
    later.start()
    assert sink.step() == 2  # both, in one read, after the pause
    later.join()
    assert sink.batches == 2 and count(ch) == 15


def test_full_reads_are_not_paced_and_a_stop_ends_the_pause(r, ch):
    add_batches(r, 10, 5)
    stop = threading.Event()
    sink = make_sink(r, ch, insert_interval_ms=600_000, stop=stop)
    steps = threading.Thread(target=lambda: [sink.step() for _ in range(3)])
    steps.start()
    steps.join(60)  # 4 + 4 + 2: a backlog is read at once, not every ten minutes
    assert not steps.is_alive() and count(ch) == 50
    add_batches(r, 1, 5)
    stop.set()  # the last read was not full: the next would wait, but not once stopping
    stopped = threading.Thread(target=sink.step)
    stopped.start()
    stopped.join(60)
    assert not stopped.is_alive() and count(ch) == 55


def distinct_clicks(ch: ClickHouse) -> int:
    return ch.query(f"SELECT uniqExact(click_id) FROM {ch.database}.clicks")[1][0][0]


def crash_with_a_batch_read_ahead(r, ch, consumer: str) -> None:
    """Ten entries of 5 rows, batches of 4: the sink dies after inserting the first batch,
    while the second, read ahead during that insert, is pending too."""
    add_batches(r, 10, 5)
    sink = make_sink(r, CrashAfterInsert(ch), consumer=consumer)
    with pytest.raises(SystemExit):
        sink.step(block=False)
    sink.close()
    assert count(ch) == 20
    assert r.xpending(K.EVENTS_STREAM, K.SINK_GROUP)["pending"] == 8


def test_a_restart_after_reading_ahead_stores_each_row_once(r, ch):
    crash_with_a_batch_read_ahead(r, ch, "sink-a")
    restarted = make_sink(r, ch)  # re-reads its pending list as the same two batches
    restarted.process_own_pending()
    assert count(ch) == 40
    while restarted.step(block=False):
        pass
    assert count(ch) == distinct_clicks(ch) == 50
    assert r.xpending(K.EVENTS_STREAM, K.SINK_GROUP)["pending"] == 0


def test_entries_of_a_dead_consumer_are_claimed_once(r, ch):
    crash_with_a_batch_read_ahead(r, ch, "sink-dead")
    other = make_sink(r, ch, consumer="sink-b", reclaim_idle_ms=0)
    assert other.reclaim() == 4  # the batch it inserted: same ids, same token, skipped
    assert count(ch) == 20
    assert other.reclaim() == 4  # the batch it read ahead
    while other.step(block=False):
        pass
    assert count(ch) == distinct_clicks(ch) == 50


def test_clickhouse_down_is_retried_until_it_answers(r, ch):
    add_batches(r, 2, 7)
    flaky = FailingInserts(ch, failures=3)
    sink = make_sink(r, flaky)
    sink.step(block=False)
    assert flaky.calls == 4 and sink.insert_failures == 3
    assert count(ch) == 14
    assert sink.rows_inserted["clicks"] == 14
    assert r.xpending(K.EVENTS_STREAM, K.SINK_GROUP)["pending"] == 0


def test_stop_while_clickhouse_is_down_leaves_the_batch_pending(r, ch):
    add_batches(r, 2, 3)
    stop = threading.Event()
    flaky = FailingInserts(ch, failures=10**6)
    sink = make_sink(r, flaky, stop=stop)
    stop.set()
    with pytest.raises(Stopping):
        sink.step(block=False)
    assert count(ch) == 0
    assert r.xpending(K.EVENTS_STREAM, K.SINK_GROUP)["pending"] == 2  # kept for the next run
    make_sink(r, ch).process_own_pending()
    assert count(ch) == 6


def test_an_edge_batch_appended_twice_is_stored_once(r, ch):
    add_batches(r, 1, 4)
    ((entry_id, fields),) = r.xrange(K.EVENTS_STREAM)
    r.xadd(K.EVENTS_STREAM, fields)  # the same batch id again (a replay after a timeout)
    sink = make_sink(r, ch)
    sink.step(block=False)
    assert count(ch) == 4 and sink.duplicate_batches == 1


def test_packed_and_plain_entries_are_stored_and_an_unreadable_field_is_dropped(r, ch):
    """The edge's compressed rows and other writers' plain rows go in alike; a packed
    value that does not decompress is left out and counted, not retried for ever."""
    packed = add_batches(r, 2, 30)
    plain = add_batches(r, 1, 5, packed=False)
    broken = stream_payload.MAGIC + b"\xff\xff\xff\x7f not lz4"
    r.xadd(K.EVENTS_STREAM, {K.BATCH_ID_FIELD: uuid7(), "clicks": broken})
    dropped = metrics.SINK_DROPPED.labels(EnrichmentDrop.UNREADABLE_ROWS)
    before = dropped._value.get()
    sink = make_sink(r, ch)
    sink.step(block=False)
    stored = {str(row[0]) for row in ch.query(f"SELECT click_id FROM {ch.database}.clicks")[1]}
    assert stored == set(packed + plain)
    assert dropped._value.get() == before + 1
    assert r.xlen(K.EVENTS_STREAM) == 0


def test_run_drains_the_stream_when_stopped(r, ch):
    add_batches(r, 9, 3)
    stop = threading.Event()
    stop.set()  # asked to stop before it starts: it still drains what is there
    make_sink(r, ch, stop=stop).run(drain_seconds=10)
    assert count(ch) == 27


def test_a_flush_while_the_read_blocks_recreates_the_group(r, ch):
    """FLUSHALL while the sink's read waits on the stream: Redis unblocks it with an
    error (the stream is gone); the sink makes its group again and goes on."""
    stop = threading.Event()
    sink = make_sink(r, ch, stop=stop)
    sink.block_ms = 60_000
    runner = threading.Thread(target=sink.run)
    runner.start()
    try:
        wait_until(
            lambda: any(
                c["cmd"] == "xreadgroup" and "b" in c["flags"] for c in r.client_list("normal")
            ),
            10,
            "the sink's read to block",
        )
        r.flushall()
        wait_until(lambda: r.exists(K.EVENTS_STREAM), 10, "the group made again")
        add_batches(r, 2, 5)
        wait_until(lambda: count(ch) == 10, 30, "the batches stored")
        assert runner.is_alive()
    finally:
        stop.set()
        add_batches(r, 1, 1)  # ends the blocked read
        runner.join(30)
    assert not runner.is_alive()
