"""Events of erased visitors still on their way (tracker/sink/erasures.py): dropped or
blanked when the sink reads them, and erased after the insert when the mark came while
the batch was being stored, or the batch was stored once before; against real Redis and
real chDB."""

from __future__ import annotations

import orjson
import pytest

from tests.sink.test_consumer import make_sink
from tracker import hot, privacy_ops
from tracker import redis_keys as K
from tracker.ids import ZERO_UUID, uuid7
from tracker.sink.erasures import Erasures
from tracker.timefmt import format_ms, now_ms

GONE, KEPT = "0190a0a0-0000-7000-8000-0000000000aa", "0190a0a0-0000-7000-8000-0000000000bb"


def click(visitor: str, ms: int, **extra) -> bytes:
    return orjson.dumps(
        {
            "event_time": format_ms(ms),
            "click_id": uuid7(),
            "visitor_id": visitor,
            "link_slug": "s",
            "campaign_id": "c",
            "ip": "203.0.113.7",
            **extra,
        }
    )


def conversion(visitor: str, ms: int) -> bytes:
    return orjson.dumps(
        {
            "event_time": format_ms(ms),
            "conversion_id": uuid7(),
            "advertiser_id": "shop",
            "txid": uuid7(),
            "visitor_id": visitor,
            "click_id": ZERO_UUID,
            "amount": "10",
            "currency": "USD",
            "ip": "203.0.113.7",
            "user_agent": "UA",
            "country": "NL",
        }
    )


def rows(payload: list[bytes]) -> list[dict]:
    return [orjson.loads(line) for part in payload for line in part.split(b"\n") if line]


@pytest.mark.parametrize("others", [0, 40], ids=["few-marks", "many-marks"])
def test_rows_from_before_the_mark_are_dropped_and_conversions_blanked(others):
    t = now_ms()
    marks = {GONE: t} | {uuid7(): t for _ in range(others)}
    untouched = click(KEPT, t - 1)
    payloads = {
        "clicks": [
            b"\n".join([click(GONE, t - 5), click(KEPT, t - 5), click(GONE, t + 5)]),
            untouched,
        ],
        "impressions": [click(GONE, t - 1, impression_id=uuid7())],
        "conversions": [conversion(GONE, t - 1) + b"\n" + conversion(KEPT, t - 1)],
    }
    found = Erasures(None, None).drop(payloads, marks)  # type: ignore[arg-type]
    assert found == {GONE: {"clicks", "impressions", "conversions"}}
    kept = rows(payloads["clicks"])
    assert [(r["visitor_id"], r["event_time"] > format_ms(t)) for r in kept] == [
        (KEPT, False),
        (GONE, True),  # after the mark: a visit since the erasure
        (KEPT, False),
    ]
    assert payloads["clicks"][1] is untouched  # a part without them is left as it is
    assert payloads["impressions"] == []
    blanked, other = rows(payloads["conversions"])
    assert {k: blanked[k] for k in privacy_ops.CONVERSION_BLANKS} == privacy_ops.CONVERSION_BLANKS
    assert blanked["amount"] == "10" and other["visitor_id"] == KEPT


def test_nothing_is_touched_without_marks():
    payloads = {"clicks": [click(GONE, now_ms())]}
    before = list(payloads["clicks"])
    assert Erasures(None, None).drop(payloads, {}) == {}  # type: ignore[arg-type]
    assert payloads["clicks"] == before


def test_the_blanks_name_the_columns_erase_blanks():
    assert privacy_ops.CONVERSION_BLANKS.keys() == privacy_ops.CONVERSION_IDENTITY.keys()


def stored(ch, table: str, visitor: str) -> int:
    where = f"visitor_id = toUUID('{visitor}')"
    return ch.query(f"SELECT count() FROM {ch.database}.{table} WHERE {where}")[1][0][0]


def add(r, *lines: bytes, table: str = "clicks") -> None:
    r.xadd(K.EVENTS_STREAM, {K.BATCH_ID_FIELD: uuid7(), table: b"\n".join(lines)})


def test_a_visitor_erased_while_their_clicks_wait_in_the_stream(chdb_database, redis_server):
    ch, r = chdb_database, redis_server.client()
    t = now_ms()
    gone, kept = click(GONE, t - 2), click(KEPT, t - 2)
    add(r, gone, kept)
    add(r, conversion(GONE, t - 1), table="conversions")
    privacy_ops.erase(ch, r, GONE)  # nothing stored yet: only the mark does anything
    # what the edges' batch script writes with the stream entry, so after the erasure
    hot.put(r, [orjson.loads(line) for line in (gone, kept)])
    sink = make_sink(r, ch, erasures=Erasures(r, ch))
    while sink.step(block=False):
        pass
    assert (stored(ch, "clicks", GONE), stored(ch, "clicks", KEPT)) == (0, 1)
    assert stored(ch, "conversions", GONE) == 0
    assert stored(ch, "conversions", ZERO_UUID) == 1  # the conversion and its money stay
    assert privacy_ops.hot_path(r, GONE, 48) == []  # its Redis records went again
    assert [ids for _, ids in privacy_ops.hot_path(r, KEPT, 48)] == [
        [orjson.loads(kept)["click_id"]]
    ]


class MarkedMeanwhile(Erasures):
    """The erasure lands after the sink read the marks, before it inserts."""

    def __init__(self, redis, ch) -> None:
        super().__init__(redis, ch)
        self.reads = 0

    def marks(self) -> dict[str, int]:
        self.reads += 1
        marks = super().marks()
        if self.reads == 1:
            privacy_ops.mark_erased(self.redis, GONE, now_ms())
        return marks


def test_a_mark_set_while_the_batch_is_stored_is_caught_after_the_insert(
    chdb_database, redis_server
):
    ch, r = chdb_database, redis_server.client()
    add(r, click(GONE, now_ms() - 2), click(KEPT, now_ms() - 2))
    erasures = MarkedMeanwhile(r, ch)
    sink = make_sink(r, ch, erasures=erasures)
    assert sink.step(block=False) == 1
    assert erasures.reads == 2  # before the batch, and after its insert
    assert (stored(ch, "clicks", GONE), stored(ch, "clicks", KEPT)) == (0, 1)


def test_a_batch_read_again_after_a_crash_is_erased_where_its_first_insert_stood(
    chdb_database, redis_server
):
    """Stored once before the mark, then read again (not acknowledged): ClickHouse skips
    the second insert as a duplicate, so what the first stored must be erased."""
    ch, r = chdb_database, redis_server.client()
    t = now_ms()
    add(r, click(GONE, t - 2), click(KEPT, t - 2))
    first = make_sink(r, ch, consumer="crashed")
    entries = r.xreadgroup(K.SINK_GROUP, "crashed", {K.EVENTS_STREAM: ">"}, count=10)[0][1]
    eid = entries[0][0].decode()
    first._insert("clicks", [entries[0][1][b"clicks"]], f"{eid}/{eid}/1/clicks", 2)
    assert stored(ch, "clicks", GONE) == 1  # stored, never acknowledged
    privacy_ops.mark_erased(r, GONE, t)
    sink = make_sink(r, ch, consumer="crashed", erasures=Erasures(r, ch))
    sink.process_own_pending()
    assert (stored(ch, "clicks", GONE), stored(ch, "clicks", KEPT)) == (0, 1)


def test_old_marks_go_when_a_new_one_is_set(redis_server):
    r = redis_server.client()
    t = now_ms()
    privacy_ops.mark_erased(r, GONE, t - privacy_ops.ERASED_KEEP_MS - 1)
    privacy_ops.mark_erased(r, KEPT, t)
    assert privacy_ops.erased_marks(r) == {KEPT: t}
