"""The compiled fraud counting (tracker/sink/enrich/_fraud_counts.pyx) against its reference
in fraud_counts.py, on random and hostile chunks: the same grouping, places and arguments
for Redis, the same error after the same clicks, the same counts from the same answer.
(Both against real Redis: tests/sink/test_enrichment.py, under the `counting` fixture.)"""

from __future__ import annotations

import random

import msgpack

from tracker.ids import ZERO_UUID, uuid7
from tracker.sink.enrich import fraud_counts
from tracker.sink.enrich.fraud_counts import Chunk
from tracker.testing import compiled_missing
from tracker.timefmt import format_ms

try:
    from tracker.sink.enrich import _fraud_counts as compiled
except ImportError:  # not built in this work tree
    compiled = None

T = 1_700_002_770_000  # 30 s before an hour ends


def event_time(rng: random.Random, odd: bool) -> object:
    """As edges write it, or a text no edge writes: ISO with a 'T' and an offset, odd
    milliseconds (signed, spaced, non-ASCII digits), a bad month, another layout, none."""
    text = format_ms(T + rng.randrange(-90_000, 90_000))
    if not odd:
        return text
    return rng.choice(
        [
            text,
            text.replace(" ", "T") + "+00:00",
            text[:20] + "-42",
            text[:20] + " 42",
            text[:20] + "\u0665\u0667\u0667",
            text[:20] + "4x2",
            text[:5] + "13" + text[7:],
            text[:4] + "/" + text[5:],
            "\u0662" + text[1:],
            text[:19],
            None,
            17,
        ]
    )


def hostile_event(rng: random.Random, visitors: list[str], odd: float) -> dict:
    is_odd = rng.random() < odd
    event: dict = {
        "event_time": event_time(rng, is_odd),
        "ip": rng.choice(["203.0.113.1", "203.0.113.2", "198.51.100.9", "2001:db8::1"]),
        "visitor_id": rng.choice(visitors),
        "link_slug": rng.choice(["a", "b", "c"]),
        "campaign_id": rng.choice(["strict", "lax", "off"]),
    }
    if rng.random() < 0.2:
        event["ip_key"] = rng.choice(["k1", "k2", ""])  # "" falls back to the address
    if is_odd:
        spoil = rng.choice(["ip", "visitor_id", "link_slug", "campaign_id", "none"])
        if spoil != "none":
            if rng.random() < 0.5:
                del event[spoil]
            else:
                event[spoil] = rng.choice([None, 7, "", "x" * 40])
    return event


WINDOWS = {"strict": 60_000, "lax": 1_500, "off": 0}


def aggregated(aggregate, place, events: list[dict], sharded: bool) -> tuple:
    chunk = Chunk(60)
    try:
        aggregate(chunk, events, lambda campaign: WINDOWS.get(campaign, 30_000), sharded)
        error = None
    except Exception as exc:  # the same refusal, after the same clicks
        error = type(exc)
    if error is None:
        place(chunk)
    state = (chunk.groups, chunk.minutes, chunk.duplicates, chunk.clicks, chunk.size)
    return error, state, chunk


REFERENCE = (fraud_counts.py_aggregate, fraud_counts.py_place)


def test_the_compiled_grouping_places_and_arguments_match_the_reference():
    if compiled is None:
        compiled_missing("the compiled fraud counting")
    rng = random.Random(20261201)
    errors = 0
    for n in range(400):
        odd = 0.0 if n % 2 else 0.05  # every other chunk all as edges write it
        visitors = [uuid7() for _ in range(rng.randrange(1, 8))] + [ZERO_UUID]
        events = [hostile_event(rng, visitors, odd) for _ in range(rng.randrange(1, 150))]
        sharded = n % 3 == 0
        error, state, chunk = aggregated(compiled.aggregate, compiled.place, events, sharded)
        expected_error, expected_state, expected = aggregated(*REFERENCE, events, sharded)
        assert (error, state) == (expected_error, expected_state), events
        errors += error is not None
        if error is None:
            assert compiled.arg_lists(chunk) == fraud_counts.py_arg_lists(expected)
            assert chunk.args() == expected.args()  # the one value the script gets
            # written straight from the chunk: the bytes msgpack makes of the lists
            for ttl, duplicate_ttl in [(7200, 120), (0, 2**40), (-5, -(2**33))]:
                assert compiled.pack_args(chunk, ttl, duplicate_ttl) == msgpack.packb(
                    [ttl, duplicate_ttl, *fraud_counts.py_arg_lists(expected)]
                )
    assert 20 < errors < 200  # the hostile chunks did reach the refusals, not all of them


def test_the_compiled_arguments_take_every_messagepack_width():
    """Ints and texts of every size MessagePack sizes differently, arrays of 16 and
    65,536 entries, and a value the packer leaves to msgpack (a float)."""
    if compiled is None:
        compiled_missing("the compiled fraud counting")
    ints = [0, 127, 128, 255, 256, 65_535, 65_536, 2**32 - 1, 2**32, 2**63 - 1]
    ints += [-1, -32, -33, -128, -129, -32_768, -32_769, -(2**31), -(2**31) - 1, -(2**63)]
    texts = ["", "a" * 31, "a" * 32, "ü" * 127, "b" * 256, "c" * 65_536, "✓𝄞"]
    chunk = Chunk(60)
    chunk.groups[("p", "c")] = {
        text: ([0], {f"{text} v{i}": [0] for i in range(17)}) for text in texts
    }
    chunk.minutes["m"] = {f"ip{i}": [value, 0] for i, value in enumerate(ints)}
    chunk.duplicates[(1, 0)] = {f"f{i}": [i, 0, 0] for i in range(65_536)}
    for ttl in ints:
        assert compiled.pack_args(chunk, ttl, 60) == fraud_counts.py_pack_args(chunk, ttl, 60)
    chunk.minutes["m"]["odd"] = [1.5, 0]
    assert compiled.pack_args(chunk, 1, 2) == fraud_counts.py_pack_args(chunk, 1, 2)


def test_the_compiled_rebuild_matches_the_reference_on_random_answers():
    if compiled is None:
        compiled_missing("the compiled fraud counting")
    rng = random.Random(20261202)
    for n in range(300):
        visitors = [uuid7() for _ in range(rng.randrange(1, 8))] + [ZERO_UUID]
        events = [hostile_event(rng, visitors, 0.0) for _ in range(rng.randrange(1, 150))]
        _, _, chunk = aggregated(*REFERENCE, events, n % 2 == 0)
        # Redis's answer: small counts and known flags, duplicate times near the clicks',
        # and on a window's edge (a click's time less its window: not within it)
        times = [ms for *_, ms, _ in chunk.clicks]
        edges = [ms - window for *_, ms, window in chunk.clicks if window]
        answer = [
            rng.choice([0, 0, 1, 2, 5, 40, rng.choice(times), rng.choice(edges or times)])
            for _ in range(chunk.size)
        ]
        assert compiled.rebuild(chunk, answer) == fraud_counts.py_rebuild(chunk, answer)
