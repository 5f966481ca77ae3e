"""The fraud counters in the sink's memory (tracker/sink/enrich/fraud_memory.py): what a
batch counted is kept once it is stored, journaled, replayed at start, never counted
twice across a crash. (Their verdicts against the rules read literally, beside the Redis
counting: tests/sink/test_enrichment.py, under the `counting` fixture.)"""

from __future__ import annotations

import os
import random
import time

import orjson
import pytest

from tests.sink.test_consumer import CrashAfterInsert, make_sink
from tests.sink.test_enrichment import use_memory_counting
from tracker import config, privacy_ops
from tracker import redis_keys as K
from tracker.ids import ZERO_UUID, uuid7
from tracker.sink.enrich import fraud_journal, steps
from tracker.sink.enrich.fraud_journal import Journal
from tracker.sink.enrich.fraud_memory import MINUTES_KEPT, MemoryCounter
from tracker.sink.erasures import Erasures
from tracker.timefmt import format_ms, now_ms

MINUTE = 1_700_000_040_000  # a calendar minute's start, 14 minutes into its hour


@pytest.fixture(autouse=True, params=["python", "compiled"])
def counting(request, monkeypatch) -> None:
    """fraud_memory.py's `py_count`, and tracker/sink/enrich/_fraud_memory.pyx."""
    use_memory_counting(request.param == "compiled", monkeypatch)


def click(ip="198.51.100.1", visitor=None, slug="s", ms=MINUTE) -> dict:
    return {
        "event_time": format_ms(ms),
        "ip": ip,
        "visitor_id": visitor or uuid7(),
        "link_slug": slug,
        "campaign_id": "c",
    }


def counter(folder=None, window_s: float = 60) -> MemoryCounter:
    return MemoryCounter(60, lambda campaign: window_s, folder)


def stored_batch(c: MemoryCounter, last_id: str, events: list[dict], stream=K.EVENTS_STREAM):
    c.begin(stream, last_id, redelivered=False)
    counts = c.count(events)
    c.stored()
    return counts


def test_a_batch_not_stored_is_undone_when_the_next_begins():
    c = counter()
    visitor = uuid7()
    stored_batch(c, "1-0", [click(visitor=visitor)])
    c.begin(K.EVENTS_STREAM, "2-0", redelivered=False)
    failed = c.count([click(visitor=visitor), click(), click(visitor=visitor, slug="t")])
    assert [n.clicks_this_minute for n in failed] == [2, 3, 4]
    assert failed[0].seen_recently and failed[2].visitors_this_hour == 2
    # the insert failed: the same batch is read again and counted as if for the first time
    c.begin(K.EVENTS_STREAM, "2-0", redelivered=True)
    again = c.count([click(visitor=visitor), click(), click(visitor=visitor, slug="t")])
    assert [tuple(n) for n in again] == [tuple(n) for n in failed]
    c.stored()
    assert c.minutes[MINUTE // 60_000]["198.51.100.1"] == 4


def test_the_journal_gives_a_restarted_counter_the_same_counts(tmp_path):
    first = counter(tmp_path)
    visitors = [uuid7() for _ in range(4)]
    for n in range(1, 6):
        stored_batch(first, f"{n}-0", [click(visitor=v, slug=f"s{n % 2}") for v in visitors])
    restarted = counter(tmp_path)
    assert restarted.positions == first.positions == {K.EVENTS_STREAM: (5, 0)}
    assert restarted.minutes == first.minutes
    assert restarted.hours == first.hours
    assert restarted.duplicates == first.duplicates
    later = [click(visitor=visitors[0], ms=MINUTE + 1_000), click(visitor=uuid7())]
    assert stored_batch(restarted, "6-0", later) == stored_batch(first, "6-0", later)


def test_a_batch_read_again_after_it_was_stored_is_not_counted_twice(tmp_path):
    c = counter(tmp_path)
    stored_batch(c, "7-3", [click() for _ in range(3)])
    restarted = counter(tmp_path)  # died after the journal line, before the XACK
    restarted.begin(K.EVENTS_STREAM, "7-3", redelivered=True)
    restarted.count([click() for _ in range(3)])
    restarted.stored()
    assert restarted.minutes[MINUTE // 60_000]["198.51.100.1"] == 3
    # a later batch is counted, even when it is one read before (pending at the crash)
    restarted.begin(K.EVENTS_STREAM, "8-0", redelivered=True)
    assert restarted.count([click()])[0].clicks_this_minute == 4
    restarted.stored()
    assert counter(tmp_path).minutes[MINUTE // 60_000]["198.51.100.1"] == 4
    # another shard's entry ids are its own
    assert stored_batch(restarted, "1-0", [click()], stream=K.events_stream(1))[0][0] == 5


def test_a_line_cut_short_by_a_crash_is_skipped(tmp_path):
    c = counter(tmp_path)
    stored_batch(c, "1-0", [click()])
    stored_batch(c, "2-0", [click()])
    c.journal.close()
    (path,) = tmp_path.glob("counts-*.jsonl")
    data = path.read_bytes()
    path.write_bytes(data[: -len(data.split(b"\n")[1]) // 2 - 1])  # half the second line
    restarted = counter(tmp_path)
    assert restarted.minutes[MINUTE // 60_000]["198.51.100.1"] == 1
    assert restarted.positions == {K.EVENTS_STREAM: (1, 0)}


def test_journal_files_older_than_the_counts_reach_are_deleted(tmp_path, monkeypatch):
    c = counter(tmp_path)
    stored_batch(c, "1-0", [click()])
    c.journal.close()
    (old,) = tmp_path.glob("counts-*.jsonl")
    hours_ago = time.time() - 3 * 3600
    os.utime(old, (hours_ago, hours_ago))
    monkeypatch.setattr(fraud_journal, "SEGMENT_SECONDS", 0)  # each write starts a file
    stored_batch(c, "2-0", [click()])
    assert not old.exists() and len(list(tmp_path.glob("counts-*.jsonl"))) == 1
    assert counter(tmp_path).minutes[MINUTE // 60_000]["198.51.100.1"] == 1


def test_old_windows_are_dropped_as_newer_clicks_come():
    c = counter()
    stored_batch(c, "1-0", [click(ms=MINUTE)])
    stored_batch(c, "2-0", [click(ms=MINUTE + (MINUTES_KEPT - 1) * 60_000)])
    assert MINUTE // 60_000 in c.minutes
    stored_batch(c, "3-0", [click(ms=MINUTE + MINUTES_KEPT * 60_000)])
    assert MINUTE // 60_000 not in c.minutes
    assert sorted(c.hours) == [MINUTE // 3_600_000]  # still this hour
    stored_batch(c, "4-0", [click(ms=MINUTE + 2 * 3_600_000)])
    assert sorted(c.hours) == [MINUTE // 3_600_000 + 2]  # the hour before had no click
    assert sorted(c.duplicates) == [(MINUTE + 2 * 3_600_000) // 60_000]


def test_an_erased_visitor_is_taken_out_and_stays_out_after_a_restart(tmp_path):
    c = counter(tmp_path)
    gone, kept = uuid7(), uuid7()
    stored_batch(
        c, "1-0", [click(visitor=gone), click(visitor=kept), click(ip="203.0.113.9", visitor=gone)]
    )
    c.forget([gone])
    assert c.hours[MINUTE // 3_600_000] == {"198.51.100.1": kept}
    assert not any(gone in field for bucket in c.duplicates.values() for field in bucket)
    restarted = counter(tmp_path)
    assert restarted.hours == c.hours and restarted.duplicates == c.duplicates
    # the visitor clicking again counts afresh: not a duplicate of what was erased
    assert not stored_batch(restarted, "2-0", [click(visitor=gone)])[0].seen_recently
    c.forget([gone])  # each mark is taken out once
    assert len(list(Journal(tmp_path, 3_600_000).load())) == 3


def test_anonymous_clicks_count_in_their_minute_only():
    c = counter()
    counts = stored_batch(c, "1-0", [click(visitor=ZERO_UUID) for _ in range(3)])
    assert [tuple(n) for n in counts] == [(1, False, 0), (2, False, 0), (3, False, 0)]
    assert c.hours == {} and c.duplicates == {}


# -- through the sink, across crashes ---------------------------------------------------------


class CrashBeforeAck:
    """The real Redis, but the process 'dies' when it acknowledges a batch (after the
    batch was stored and journaled)."""

    def __init__(self, redis) -> None:
        self.redis = redis

    def __getattr__(self, name):
        return getattr(self.redis, name)

    def pipeline(self, *args, **kwargs):
        raise SystemExit("crashed before XACK")


def flood(r, slug: str, clicks: int, ms: int) -> None:
    """One stream entry of clicks from one address within one minute."""
    rows = [
        orjson.dumps(
            {
                "event_time": format_ms(ms),
                "click_id": uuid7(),
                "visitor_id": uuid7(),
                "link_slug": slug,
                "campaign_id": "c",
                "ip": "10.9.9.9",
                "user_agent": "Mozilla/5.0",
            }
        )
        for _ in range(clicks)
    ]
    r.xadd(K.EVENTS_STREAM, {K.BATCH_ID_FIELD: uuid7(), "clicks": b"\n".join(rows)})


@pytest.mark.parametrize("crash", ["after_insert", "before_ack"])
def test_a_sink_crash_neither_forgets_nor_double_counts(
    redis_server, chdb_database, tmp_path, crash
):
    """10 clicks from one address are stored and acknowledged; 20 more are stored, then
    the sink dies before acknowledging them: after their insert (not journaled yet:
    counted again on restart) or after the journal line (not counted again). Then 10
    more: with 35 allowed a minute, exactly 5 are flagged (forgetting the first 10 would
    flag none, counting the 20 twice all 10)."""
    r, ch = redis_server.client(), chdb_database
    r.delete(K.EVENTS_STREAM)
    settings = config.load(
        env={
            "TRACKER_DATA_DIR": str(tmp_path),
            "TRACKER_ADMIN_TOKEN": "test-token-0123456789",
            "TRACKER_FRAUD_IP_CLICKS_PER_MINUTE": "35",
        }
    )
    slug = f"crash-{crash}"
    ms = int(time.time() * 1000) // 60_000 * 60_000 + 1  # all in one calendar minute
    pipeline = steps.build(settings, r, None)
    flood(r, slug, 10, ms)
    assert make_sink(r, ch, pipeline=pipeline).step(block=False) == 1
    for _ in range(2):
        flood(r, slug, 10, ms)
    if crash == "after_insert":
        dying = make_sink(r, CrashAfterInsert(ch), pipeline=pipeline)
    else:
        dying = make_sink(CrashBeforeAck(r), ch, pipeline=pipeline)
    with pytest.raises(SystemExit):
        dying.step(block=False)
    dying.close()
    assert r.xpending(K.EVENTS_STREAM, K.SINK_GROUP)["pending"] == 2

    restarted = make_sink(r, ch, pipeline=steps.build(settings, r, None))
    restarted.process_own_pending()
    flood(r, slug, 10, ms)
    while restarted.step(block=False):
        pass
    where = f"FROM {ch.database}.clicks WHERE link_slug = '{slug}'"
    assert ch.query(f"SELECT count() {where}")[1][0][0] == 40
    flagged = ch.query(f"SELECT count() {where} AND has(fraud_flags, 'ip_flood')")[1][0][0]
    assert flagged == 5


def counted_visitors(memory: MemoryCounter) -> set[str]:
    """Every visitor the counts hold: in an IP's hour, or in a duplicate field."""
    found: set[str] = set()
    for seen_ips in memory.hours.values():
        for known in seen_ips.values():
            found |= {known} if isinstance(known, str) else known
    return found | {f.split(" ")[0] for bucket in memory.duplicates.values() for f in bucket}


def test_the_sink_takes_an_erased_visitor_out_of_the_counts(redis_server, chdb_database, tmp_path):
    """The erasure's mark reaches the sink with its next batch: the visitor leaves the
    counts then, and stays out of them after a restart (the journal says so)."""
    r, ch = redis_server.client(), chdb_database
    r.delete(K.EVENTS_STREAM)
    settings = config.load(
        env={"TRACKER_DATA_DIR": str(tmp_path), "TRACKER_ADMIN_TOKEN": "test-token-0123456789"}
    )
    pipeline = steps.build(settings, r, None)
    (memory,) = pipeline.states
    assert isinstance(memory, MemoryCounter)
    sink = make_sink(r, ch, pipeline=pipeline, erasures=Erasures(r, ch))
    gone, kept = uuid7(), uuid7()
    rows = [
        orjson.dumps(click(visitor=v, ms=now_ms()) | {"click_id": uuid7()}) for v in (gone, kept)
    ]
    r.xadd(K.EVENTS_STREAM, {K.BATCH_ID_FIELD: uuid7(), "clicks": b"\n".join(rows)})
    assert sink.step(block=False) == 1
    assert {gone, kept} <= counted_visitors(memory)
    privacy_ops.mark_erased(r, gone, now_ms())
    flood(r, "erased", 1, now_ms())
    assert sink.step(block=False) == 1
    assert kept in counted_visitors(memory) and gone not in counted_visitors(memory)
    (restarted,) = steps.build(settings, r, None).states
    assert isinstance(restarted, MemoryCounter)
    assert kept in counted_visitors(restarted) and gone not in counted_visitors(restarted)


def test_the_compiled_replay_rebuilds_the_counts_of_the_reference():
    """Random journaled clicks (repeated addresses and visitors, anonymous clicks, the
    duplicate rule off for some, times across minutes, hours and buckets, out of order)."""
    from tests.sink.test_enrichment import compiled_memory
    from tracker.sink.enrich.fraud_memory import py_replay
    from tracker.testing import compiled_missing

    if compiled_memory is None:
        compiled_missing("the compiled fraud counting in memory")
    rng = random.Random(5)
    ips = [f"203.0.{rng.randint(0, 3)}.{rng.randint(1, 9)}" for _ in range(30)]
    visitors = [uuid7() for _ in range(40)] + [ZERO_UUID] * 4
    clicks = [
        (
            MINUTE + rng.randint(-90_000, 4_000_000),
            rng.choice(ips),
            rng.choice(visitors),
            rng.choice(["a", "b", ""]),
        )
        for _ in range(3_000)
    ]
    reference, compiled = counter(), counter()
    py_replay(reference, clicks)
    compiled_memory.replay(compiled, clicks)
    assert compiled.minutes == reference.minutes and compiled.hours == reference.hours
    assert compiled.duplicates == reference.duplicates
    assert compiled.newest_ms == reference.newest_ms
    assert any(isinstance(v, set) for seen in compiled.hours.values() for v in seen.values())
