"""The hot window's layout (tracker/hot.py): pure functions, and its writes against a real
Redis."""

from __future__ import annotations

import random
import time
import uuid

import pytest

from tracker import hot
from tracker import redis_keys as K
from tracker.ids import ZERO_UUID, is_uuid, uuid7_time_ms
from tracker.testing import click_id_at, compiled_missing

try:
    from tracker import _hot as compiled
except ImportError:  # not built: the compiled cases say so
    compiled = None  # type: ignore[assignment]

HOUR = hot.HOUR_MS
# An instant of the hour before this one, at the same place in its hour each run: the hot
# hashes written here expire `hot_hours` after their hour, so a fixed date would find them
# already expired once that date is two days old.
T = (int(time.time() * 1000) // HOUR - 1) * HOUR + 3_200_000


def test_a_record_round_trips_in_a_compact_value():
    click_id, visitor = click_id_at(T), click_id_at(T - 1)
    record = {
        "click_id": click_id,
        "visitor_id": visitor,
        "ts": T,
        "link_slug": "spring",
        "campaign_id": 'c\x1f"tab\t',
        "affiliate_id": "ü",
        "advertiser_id": "shop",
        "sub1": "a",
        "sub2": "",
        "sub3": "",
        "sub4": "",
        "sub5": "",
    }
    value = hot.encode(record)
    assert value[:16] == hot.raw_id(visitor)
    assert len(value) < 60  # no keys, no click id, no time, no trailing empty subs
    assert hot.decode(click_id, value) == record


def test_a_click_whose_id_ran_ahead_of_the_clock_keeps_its_own_time():
    click_id = click_id_at(T)
    record = {"click_id": click_id, "visitor_id": ZERO_UUID, "ts": T - 40_000}
    decoded = hot.decode(click_id, hot.encode(record))
    assert decoded["ts"] == T - 40_000 and decoded["visitor_id"] == ZERO_UUID


def test_hashes_are_addressed_by_the_click_ids_own_hour_and_expire_after_the_window():
    click_id = click_id_at(T)
    hour = T // HOUR
    assert hot.hour_of(click_id) == hour
    assert hot.click_hash(click_id) == K.hot_clicks_key(hour, hot.click_shard(click_id))
    assert hot.excluded_set(click_id).startswith(hot.click_hash(click_id))  # same slot
    assert hot.expire_at(hour, 48) == (hour + 49) * 3600 + hot.EXPIRY_SLACK_S


def test_a_shard_read_off_the_text_is_the_shard_of_the_ids_bytes():
    """The edge's compiled writer and the sink shard by the id's 16 bytes (`slot`); the
    postback and reader paths by its text: the same shard, for every last byte."""
    rng = random.Random(3)
    for last in range(256):
        value = str(uuid.UUID(bytes=rng.randbytes(15) + bytes([last])))
        assert hot.id_shard(value) == hot.shard(hot.raw_id(value)), value
        assert hot.click_shard(value) == hot.visitor_shard(value) == last % hot.HOT_SHARDS


def test_the_window_vouches_from_the_later_of_its_oldest_hour_and_the_since_mark():
    window = hot.HotWindow(48)
    now = T
    oldest = (now // HOUR - 48) * HOUR
    assert window.start(now, None) == hot.NEVER  # an emptied Redis vouches for nothing
    assert window.start(now, b"0") == oldest
    assert window.start(now, str(now - HOUR)) == now - HOUR
    assert hot.HotWindow(0).start(now, 0) == now // HOUR * HOUR  # this hour only
    hours = window.hours_between(now - 30 * 24 * HOUR, now, now)
    assert hours.start == now // HOUR - 48 and hours.stop == now // HOUR + 2


@pytest.fixture(params=["python", "compiled"])
def group(request, monkeypatch):
    """Each batch grouping (hot.py's reference, tracker/_hot.pyx), as `HotWrites.of`'s."""
    if request.param == "compiled" and compiled is None:
        compiled_missing("the compiled batch grouping")
    chosen = hot.py_group if request.param == "python" else compiled.group
    monkeypatch.setattr(hot, "group", chosen)
    return chosen


def test_a_batch_is_grouped_by_hash_with_one_expiry_each(group):
    visitor = click_id_at(T - 5)
    clicks = [click_id_at(T + n) for n in range(200)]
    writes = hot.HotWrites.of(
        48,
        [(c, hot.encode({"click_id": c, "visitor_id": visitor})) for c in clicks]
        + [(click_id_at(T), hot.encode({"click_id": click_id_at(T)}))],  # no visitor: no path
    )
    assert sum(len(f) for f in writes.clicks.values()) == 2 * 201
    assert len(writes.clicks) <= hot.HOT_SHARDS
    [path_key] = writes.paths  # one visitor, one hour: one path field, one append
    assert writes.path_pairs(path_key) == [hot.raw_id(visitor), b"".join(map(hot.raw_id, clicks))]
    assert set(writes.expiry) == set(writes.clicks) | {path_key}
    assert writes.oldest_ms == T
    keys, args = writes.script_args()
    assert len(keys) == len(writes.clicks) + 1 and args[0] == len(writes.clicks)
    assert hot.split_path(writes.path_pairs(path_key)[1]) == clicks
    assert uuid7_time_ms(clicks[-1]) == T + 199


def test_a_visitors_first_click_is_in_no_path(group):
    """A visitor made by a click has that click's id: the click is found by it, so no
    path holds it; their later clicks are appended as any returning visitor's."""
    first, later = click_id_at(T), click_id_at(T + 1)
    writes = hot.HotWrites.of(
        48,
        [(c, hot.encode({"click_id": c, "visitor_id": first})) for c in (first, later)],
    )
    assert sum(len(f) for f in writes.clicks.values()) == 4  # both records
    [path_key] = writes.paths
    assert writes.path_pairs(path_key) == [hot.raw_id(first), hot.raw_id(later)]
    assert hot.clicks_of(first, hot.split_path(hot.raw_id(later))) == [first, later]


def hostile_id(rng: random.Random) -> str:
    """A click id as the writer gets them (canonical), or one no edge makes: other case,
    no dashes, misplaced dashes, not hex, not ASCII, the wrong length."""
    canonical = click_id_at(T + rng.randrange(-3, 4) * HOUR + rng.randrange(HOUR))
    return rng.choice(
        [
            canonical,
            canonical,
            canonical,
            canonical.upper(),
            canonical.replace("-", ""),
            canonical[:7] + "-" + canonical[7:35],
            canonical[:-1] + "g",
            canonical[:-1] + "\u00e9",
            canonical[:-2],
            canonical + "00",
        ]
    )


def hostile_record(rng: random.Random, visitors: list[str]) -> bytes:
    visitor = rng.choice([*visitors, ""])
    record = hot.encode({"visitor_id": visitor, "link_slug": rng.choice(["a", "b", ""])})
    return rng.choice([record, record, record, record[:16], record[:15], b""])


def outcome(group, clicks):
    writes = hot.HotWrites(48)
    try:
        group(writes, clicks)
        error = None
    except Exception as exc:  # the same refusal, after the same clicks
        error = type(exc)
    return error, writes, writes.oldest_ms


def test_the_compiled_grouping_matches_the_reference_on_random_and_hostile_batches():
    if compiled is None:
        compiled_missing("the compiled batch grouping")
    rng = random.Random(20261130)
    for n in range(400):
        odd = 0.0 if n % 2 else 0.05  # every other batch all as edges make them
        visitors = [click_id_at(T - 10) for _ in range(rng.randrange(1, 6))]
        batch = [
            (
                hostile_id(rng) if rng.random() < odd else click_id_at(T + rng.randrange(HOUR)),
                hostile_record(rng, visitors)
                if rng.random() < odd
                else hot.encode({"visitor_id": rng.choice([*visitors, ""]), "sub1": "x"}),
            )
            for _ in range(rng.randrange(1, 120))
        ]
        for n in range(len(batch) // 3):  # new visitors' first clicks: the click's own id
            click_id = batch[n][0]
            if is_uuid(click_id):
                batch[n] = (click_id, hot.encode({"visitor_id": click_id, "sub1": "y"}))
        assert outcome(compiled.group, batch) == outcome(hot.py_group, batch), batch


def test_paths_hold_each_click_once_over_batches_replays_and_crowded_hashes(redis_server):
    """A batch's visitors are read and written per hash in a few commands: returning
    visitors get their click appended, a replayed batch appends nothing, and a hash with
    more of a batch's visitors than one command takes (1,000) misses none."""
    redis = redis_server.client()
    visitors = [click_id_at(T - 10 - n) for n in range(10_000)]  # ~1,250 per path hash
    first = {v: click_id_at(T + n) for n, v in enumerate(visitors)}
    again = {v: click_id_at(T + 20_000 + n) for n, v in enumerate(visitors[::3])}

    def store(clicks: dict[str, str]) -> None:
        pairs = [(c, hot.encode({"click_id": c, "visitor_id": v})) for v, c in clicks.items()]
        hot.store(redis, hot.HotWrites.of(48, pairs))

    store(first)
    store(again)
    store(again)  # replayed
    pipe = redis.pipeline()
    for v in visitors:
        pipe.hget(hot.path_hash(T // HOUR, v), hot.raw_id(v))
    paths = [hot.split_path(value) for value in pipe.execute()]
    assert paths == [[first[v], *([again[v]] if v in again else [])] for v in visitors]
