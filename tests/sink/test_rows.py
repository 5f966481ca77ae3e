"""Click rows read and written where they lie (tracker/sink/enrich/rows.py and its compiled
_rows.pyx): on edge-written, random and hostile rows both read the fields orjson reads
or refuse the row, write back exactly what changed, and give the same bytes as each
other; and the enrichment steps give the same rows this way as decoding and encoding
each row whole."""

from __future__ import annotations

import json
import random

import orjson
import pytest

from geo import open_geo
from tests.geo.test_reader import write_mmdb
from tracker import config
from tracker.ids import uuid7
from tracker.links import Link
from tracker.records import RequestMeta, click_row
from tracker.sink.enrich import rows, steps
from tracker.testing import BROWSER_UA, compiled_missing
from tracker.timefmt import format_ms, now_ms

try:
    from tracker.sink.enrich import _rows as compiled
except ImportError:  # not built in this work tree
    compiled = None

FIELDS = steps.CLICK_FIELDS
AGENTS = [
    BROWSER_UA,
    "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)",
    "curl/8.5.0",
    'odd "quoted" agent \\ with a backslash',
    "Агент/1.0 ✓ 𝄞",
    "tab\there\nnewline\x01control",
    "",
]


def edge_row(rng: random.Random, ms: int) -> dict:
    """A click row as an edge writes it."""
    meta = RequestMeta(
        ip=rng.choice(["203.0.113.7", "198.51.100.20", "3.5.140.9", "2001:db8::1"]),
        user_agent=rng.choice(AGENTS),
        referer=rng.choice(["", 'https://news.example/a?x="1"', "https://пример.рф/"]),
        accept_language="en",
        url="/c/l1?sub1=x",
        method=rng.choice(["GET", "HEAD"]),
        ip_key=rng.choice(["", "k" + str(rng.randrange(9))]),
    )
    link = Link(f"l{rng.randrange(5)}", "https://x.example/", f"c{rng.randrange(3)}", "a1")
    return dict(
        click_row(
            ms=ms + rng.randrange(-5_000, 5_000),
            click_id=uuid7(),
            visitor_id=rng.choice([uuid7(), "00000000-0000-0000-0000-000000000000"]),
            new_visitor=rng.random() < 0.5,
            link=link,
            params={"sub1": rng.choice(["", "x", "a\\b", '"q"', "ü"])},
            meta=meta,
            destination="https://x.example/?c=1",
        )
    )


def with_enrichment(rng: random.Random, row: dict) -> dict:
    """A row that already carries some of the fields the steps write (replayed, or
    written by another tool): they must be replaced, never written twice."""
    for name, value in [
        ("is_bot", 0),
        ("bot_reason", "old"),
        ("fraud_flags", ["ip_flood"]),
        ("asn", 7),
        ("country", "ZZ"),
    ]:
        if rng.random() < 0.3:
            row[name] = value
    return row


def hostile(rng: random.Random, line: bytes) -> bytes:
    """The row's bytes spoiled: cut, padded, nested, re-keyed, broken."""
    k = rng.randrange(13)
    if k == 0:
        return line[: rng.randrange(len(line))]
    if k == 1:
        return line.replace(b'":', b'": ', 1)  # whitespace
    if k == 2:
        return line[:-1] + b',"nested":{"a":1}}'
    if k == 3:
        return line[:-1] + b',"ip":"9.9.9.9"}'  # a field twice
    if k == 4:
        return line.replace(b'"ip"', b'"\\u0069p"', 1)  # an escaped key
    if k == 5:
        return line.replace(b"Mozilla", b"Moz\xffilla")  # not UTF-8
    if k == 6:
        return b"[" + line + b"]"
    if k == 7:
        return line[:-1] + b',"list":[1,[2]]}'
    if k == 8:
        return line[:-1] + b',"n":-1.5e3,"t":true,"z":null,"e":[]}'
    if k == 9:
        return b"{}"
    if k == 10:
        return line.replace(b'"event_time":"', b'"event_time":', 1)
    if k == 11:
        return line.replace(b"curl", b"cu\x01rl")  # a raw control character: not JSON
    return line + b" "


@pytest.fixture(params=["python", "compiled"])
def impl(request):
    """Each implementation: rows.py's reference and tracker/sink/enrich/_rows.pyx."""
    if request.param == "compiled":
        if compiled is None:
            compiled_missing("the compiled click rows")
        return compiled.Fields, compiled.scan, compiled.splice, compiled.split_lines
    return rows.PyFields, rows.py_scan, rows.py_splice, rows.py_split_lines


def spans_of(spans) -> dict:
    return spans if isinstance(spans, dict) else spans.as_dict()


def lines(seed: int, n: int, odd: float) -> list[bytes]:
    rng = random.Random(seed)
    ms = now_ms()
    out = []
    for _ in range(n):
        line = orjson.dumps(with_enrichment(rng, edge_row(rng, ms)))
        out.append(hostile(rng, line) if rng.random() < odd else line)
    return out


def test_edge_rows_are_read_as_orjson_reads_them(impl):
    Fields, scan, _, _ = impl
    fields = Fields(FIELDS)
    for line in lines(1, 2_000, odd=0.0):
        got = scan(line, fields)
        assert got is not None, line  # every row an edge writes is read in place
        event, spans = got
        whole = orjson.loads(line)
        assert event == {name: whole[name] for name in whole if name in FIELDS}
        assert list(event) == [name for name in whole if name in FIELDS]  # in row order
        for name, (start, end, value) in spans_of(spans).items():
            assert orjson.loads(line[start:end]) == value == event[name]


def test_hostile_rows_are_read_right_or_refused(impl):
    Fields, scan, _, _ = impl
    fields = Fields(FIELDS)
    refused = 0
    for line in lines(2, 3_000, odd=0.7):
        got = scan(line, fields)
        if got is None:
            refused += 1
            continue
        whole = orjson.loads(line)  # read: it is valid JSON, and the same fields
        assert got[0] == {name: whole[name] for name in whole if name in FIELDS}, line
    assert 500 < refused < 2_500  # both kinds were seen


def test_an_escape_or_control_character_at_any_place_of_a_value_is_seen(impl):
    """The compiled reader looks at a value 8 bytes at a time: a backslash (an escape)
    or a raw control character (not JSON) in any of the places of a word, or in the
    bytes after the last whole word, is found."""
    Fields, scan, _, _ = impl
    fields = Fields(FIELDS)
    for length in range(1, 26):
        for at in range(length):
            for odd, readable in [(b"\\n", True), (b"\x01", False), (b"\x1f", False)]:
                value = b"a" * at + odd + b"b" * (length - at - 1)
                line = b'{"user_agent":"' + value + b'","sub1":"x"}'
                got = scan(line, fields)
                if readable:
                    assert got is not None
                    assert got[0] == {"user_agent": orjson.loads(line)["user_agent"]}
                else:
                    assert got is None, line


def test_both_implementations_read_and_write_the_same_bytes():
    if compiled is None:
        compiled_missing("the compiled click rows")
    py_fields, c_fields = rows.PyFields(FIELDS), compiled.Fields(FIELDS)
    rng = random.Random(3)
    for line in lines(3, 3_000, odd=0.5):
        py, c = rows.py_scan(line, py_fields), compiled.scan(line, c_fields)
        assert (py is None) == (c is None), line
        if py is None or c is None:
            continue
        assert py[0] == c[0] and list(py[0]) == list(c[0])
        assert py[1] == c[1].as_dict()
        changes = changed(rng)
        py[0].update(changes)
        c[0].update(changes)
        assert rows.py_splice(line, *py) == compiled.splice(line, *c)


def changed(rng: random.Random) -> dict:
    """What steps might set: read fields replaced, new fields, odd values."""
    options = {
        "ip": rng.choice(["203.0.113.0", "::", "1.2.3.4"]),
        "is_bot": rng.choice([0, 1]),
        "bot_reason": rng.choice(["", "crawler", 'a "quoted" reason']),
        "device_type": "mobile",
        "os": "Android",
        "browser": "Chrome Mobile ✓",
        "country": "DE",
        "asn": rng.choice([0, 16509, 2**40]),
        "fraud_flags": rng.choice([[], ["ip_flood", "duplicate_click"]]),
        "note\\key": "odd key",
    }
    return {name: value for name, value in options.items() if rng.random() < 0.5}


def test_splice_writes_back_exactly_what_changed(impl):
    Fields, scan, splice, _ = impl
    fields = Fields(FIELDS)
    rng = random.Random(4)
    unchanged = 0
    for line in lines(4, 2_000, odd=0.3):
        got = scan(line, fields)
        if got is None:
            continue
        event, spans = got
        changes = changed(rng) if rng.random() < 0.9 else {}
        if not changes:
            unchanged += 1
        event.update(changes)
        out = splice(line, event, spans)
        assert orjson.loads(out) == {**orjson.loads(line), **changes}, (line, changes)
        pairs = json.loads(out, object_pairs_hook=lambda pairs: pairs)
        assert len({name for name, _ in pairs}) == len(pairs)  # no field written twice
        if not changes:
            assert out is line or out == line
    assert unchanged > 50


def test_a_field_set_to_its_own_value_is_left_as_it_lies(impl):
    Fields, scan, splice, _ = impl
    line = b'{"ip":"1.2.3.4","is_bot":0,"sub1":"x"}'
    event, spans = scan(line, Fields(FIELDS))
    event["is_bot"] = event["is_bot"]
    assert splice(line, event, spans) == line
    event["ip"] = "1.2.3.0"
    assert splice(line, event, spans) == b'{"ip":"1.2.3.0","is_bot":0,"sub1":"x"}'


def test_a_list_changed_in_place_is_written_again(impl):
    Fields, scan, splice, _ = impl
    line = b'{"fraud_flags":["ip_flood"],"ip":"1.2.3.4"}'
    event, spans = scan(line, Fields(FIELDS))
    event["fraud_flags"].append("datacenter_asn")  # as pipeline.flag does
    assert orjson.loads(splice(line, event, spans))["fraud_flags"] == [
        "ip_flood",
        "datacenter_asn",
    ]


def test_a_step_that_removes_a_field_is_refused(impl):
    Fields, scan, splice, _ = impl
    line = b'{"ip":"1.2.3.4","user_agent":"x"}'
    event, spans = scan(line, Fields(FIELDS))
    del event["ip"]
    with pytest.raises(ValueError, match="removed a field"):
        splice(line, event, spans)


def test_a_field_removed_and_set_again_is_refused(impl):
    """Set again, it would come after fields that lie after it in the row."""
    Fields, scan, splice, _ = impl
    line = b'{"ip":"1.2.3.4","is_bot":0,"user_agent":"x"}'
    event, spans = scan(line, Fields(FIELDS))
    event["is_bot"] = 1
    event["ip"] = event.pop("ip")
    with pytest.raises(ValueError, match="removed a field"):
        splice(line, event, spans)


def test_an_empty_row_gets_the_new_fields_alone(impl):
    Fields, scan, splice, _ = impl
    event, spans = scan(b"{}", Fields(FIELDS))
    event["is_bot"] = 1
    assert splice(b"{}", event, spans) == b'{"is_bot":1}'


def test_lines_are_split_as_bytes_split_does(impl):
    *_, split_lines = impl
    rng = random.Random(5)
    for _ in range(500):
        parts = [
            b"".join(rng.choice([b"\n", b"a", b"{}", b"\n\n", b"xyz"]) for _ in range(8))
            for _ in range(rng.randrange(4))
        ]
        assert split_lines(parts) == [line for part in parts for line in part.split(b"\n") if line]


@pytest.mark.parametrize("anonymize", [False, True])
def test_the_steps_give_the_same_rows_in_place_as_decoded_whole(redis_server, tmp_path, anonymize):
    """The whole click pipeline (bots, device, geo, fraud counts in Redis, marks,
    anonymisation) over the same rows twice from the same empty Redis: rows read and
    written in place (the compiled path) against rows decoded and encoded whole."""
    if compiled is None:
        compiled_missing("the compiled click rows")
    geo = write_mmdb(
        tmp_path / "asn.mmdb",
        {
            "3.5.140.0/24": {
                "autonomous_system_number": 16509,
                "autonomous_system_organization": "C",
            }
        },
        "GeoLite2-ASN",
    )
    settings = config.load(
        env={
            "TRACKER_DATA_DIR": str(tmp_path / "data"),
            "TRACKER_ADMIN_TOKEN": "test-token-0123456789",
            "TRACKER_PRIVACY_ANONYMIZE_IP": "1" if anonymize else "0",
            "TRACKER_FRAUD_IP_CLICKS_PER_MINUTE": "3",
        }
    )
    redis = redis_server.client()
    batch = lines(6, 1_500, odd=0.1)
    batch += [orjson.dumps(edge_row(random.Random(7), now_ms())) for _ in range(10)]

    redis.flushall()
    pipeline = steps.build(settings, redis, open_geo([str(geo)]))
    whole = [orjson.loads(line) for line in batch if valid(line)]
    whole = pipeline.process("clicks", whole)

    redis.flushall()
    pipeline = steps.build(settings, redis, open_geo([str(geo)]))
    fields = compiled.Fields(pipeline.fields["clicks"])
    part = rows.enrich_lines(
        [line for line in batch if valid(line)], fields, lambda e: pipeline.process("clicks", e)
    )
    in_place = [orjson.loads(line) for line in part.split(b"\n")]
    assert in_place == orjson.loads(orjson.dumps(whole))
    assert any(row.get("fraud_flags") for row in in_place)  # the counts were used
    assert any(row["is_bot"] for row in in_place) and any(row["asn"] for row in in_place)
    assert all(row["ip"].endswith(".0") or ":" in row["ip"] for row in in_place) == anonymize


def valid(line: bytes) -> bool:
    """A click row the steps take: a JSON object with a click's identity."""
    try:
        row = orjson.loads(line)
    except orjson.JSONDecodeError:
        return False
    needed = ("event_time", "click_id", "visitor_id", "campaign_id", "link_slug", "ip")
    return isinstance(row, dict) and all(isinstance(row.get(name), str) for name in needed)


def test_a_step_that_returns_another_row_is_refused():
    fields = rows.Fields(FIELDS)
    line = orjson.dumps({"ip": "1.2.3.4", "sub1": "x", "event_time": format_ms(now_ms())})
    with pytest.raises(RuntimeError, match="not given"):
        rows.enrich_lines([line], fields, lambda events: [dict(e) for e in events])
