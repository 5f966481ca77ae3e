"""The click core, pure and compiled: the same answers, rows and Redis records, byte for byte.

Every test here runs on both implementations (the `core` fixture, as aiohttp runs its
parser tests on both its parsers), and the differential tests feed random and hostile
requests (junk query parameters, percent-encoding, huge cookies, bad UTF-8, odd
X-Forwarded-For hops) to both and compare every byte they produce. A request is only
used if llhttp accepts it, since the core reads heads that llhttp has validated.
"""

from __future__ import annotations

import calendar
import ipaddress
import re
import time
from pathlib import Path
from types import SimpleNamespace

import httptools
import orjson
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from tracker import extensions, hot, ids
from tracker.clock import FixedClock
from tracker.edge import clickpath, clicks
from tracker.edge.clickpath import HAND_OVER, TOO_LARGE, PyClickPath
from tracker.edge.clicks import ClickContext, cookie_attributes
from tracker.edge.spool import Spool
from tracker.edge.writer import EventWriter
from tracker.hashcache import HashCache
from tracker.links import Link
from tracker.testing import compiled_missing

try:
    from tracker.edge._clickpath import ClickPath as CompiledClickPath
    from tracker.edge._clickpath import head_span as compiled_head_span
except ImportError:  # not built: the compiled cases say so below
    CompiledClickPath = compiled_head_span = None

IMPLEMENTATIONS = {"python": PyClickPath, "compiled": CompiledClickPath}


NOW = 1_767_225_599.987  # a millisecond before a new year, UTC
VISITOR = "01a20e46-485c-7006-9fb4-8c1fcc370001"

LINKS = [
    Link("plain", "https://shop.example/p/1?src=t", "camp", "aff", "adv"),
    Link("macros", "https://shop.example/{sub1}/x?c={click_id}&v={visitor_id}#f", "c 1", "a/b"),
    Link("frag", "https://shop.example/land?#top", "c2", advertiser_id='ad"v'),
    Link("amp", "https://shop.example/land?a=1&{sub2}", "c3"),
    Link("ids", "https://shop.example/{campaign_id}/{affiliate_id}/{sub5}", "cé", "ä&b"),
    Link("off", "https://shop.example/off", status="disabled"),
    Link("routed", "https://shop.example/r", "c4", routing={"rules": []}),
    Link("unicode", "https://shop.example/caf\u00e9?x=1", "c5"),
]


def make_ctx(tmp: Path, trusted: str = "127.0.0.0/8,10.0.0.0/8", honor: bool = True):
    links: HashCache = HashCache(None, "links", "version", Link.from_json, 1.0)  # type: ignore[arg-type]
    links.items = {link.slug: link for link in LINKS}
    writer = EventWriter(
        None,  # type: ignore[arg-type]  # never flushed here: the batch is read as it is
        Spool(tmp / "spool"),
        batch_max_events=1_000_000,
        batch_max_delay_ms=5,
        lookback_seconds=86400,
        timeout_seconds=1,
        dedup_ttl_seconds=86400,
    )
    return ClickContext(
        links=links,
        writer=writer,
        trusted=[ipaddress.ip_network(n) for n in trusted.split(",") if n],
        cookie_name="vid",
        cookie_attrs=cookie_attributes(86400, "Lax", False, ""),
        fallback_url="",
        max_query_bytes=2048,
        honor_no_track=honor,
        clock=FixedClock(NOW),
    )


@pytest.fixture(params=list(IMPLEMENTATIONS))
def core(request, tmp_path):
    cls = IMPLEMENTATIONS[request.param]
    if cls is None:
        compiled_missing("the compiled click core")
    ctx = make_ctx(tmp_path)
    return cls(ctx)


def head(target: str | bytes, *headers: str | bytes, method: bytes = b"GET") -> bytes:
    t = target.encode() if isinstance(target, str) else target
    lines = [method + b" " + t + b" HTTP/1.1", b"Host: t"]
    lines += [h.encode() if isinstance(h, str) else h for h in headers]
    return b"\r\n".join(lines)


def ask(core, raw: bytes, peer: str | None = "127.0.0.1", keep_alive: bool = True):
    buffer = bytearray(raw + b"\r\n\r\n")
    return core.handle(buffer, 0, len(raw), peer, keep_alive)


def rows(core) -> list[dict]:
    return [orjson.loads(r) for r in core.ctx.writer._batch.rows.get("clicks", [])]


def test_plain_click_redirects_and_records(core):
    answer = ask(core, head("/c/plain?sub1=a&utm_source=n", "User-Agent: UA", "Referer: r"))
    assert answer.startswith(
        b"HTTP/1.1 302 Found\r\nLocation: https://shop.example/p/1?src=t&click_id="
    )
    assert b"\r\nSet-Cookie: vid=" in answer and answer.endswith(b"Server: tracker\r\n\r\n")
    [row] = rows(core)
    assert row["event_time"] == "2025-12-31 23:59:59.987" and row["new_visitor"] == 1
    assert (row["sub1"], row["utm_source"], row["user_agent"], row["ip"]) == (
        "a",
        "n",
        "UA",
        "127.0.0.1",
    )
    assert answer.split(b"Location: ")[1].split(b"\r\n")[0].decode() == row["destination_url"]
    [(click_id, visitor_id, ms, record)] = core.ctx.writer._batch.clicks
    assert click_id == row["click_id"]  # the record: the hot window's compact form
    assert hot.decode(click_id, record)["visitor_id"] == visitor_id == row["visitor_id"]
    assert ms == 1_767_225_599_987 and core.ctx.counters.requests[("/c/{slug}", 302)] == 1


def test_the_date_header_is_the_wall_clocks_second(core):
    """The Date line follows the wall clock, not the clicks' clock (fixed here); the
    compiled core reads the clock in C and formats the line once a second."""
    for _ in range(3):
        before = time.time()
        answer = ask(core, head("/c/plain"))
        after = time.time()
        [date] = re.findall(rb"\r\nDate: ([^\r]*)\r\n", answer)
        shown = calendar.timegm(time.strptime(date.decode(), "%a, %d %b %Y %H:%M:%S GMT"))
        assert int(before) <= shown <= int(after)
        time.sleep(0.6)


def test_returning_visitor_keeps_id_and_gets_no_cookie(core):
    answer = ask(core, head("/c/macros?sub1=x%2Fy", f'Cookie: a=b; vid="{VISITOR}"'))
    assert b"Set-Cookie" not in answer
    location = answer.split(b"Location: ")[1].split(b"\r\n")[0].decode()
    assert location.startswith("https://shop.example/x%2Fy/x?c=") and f"&v={VISITOR}#f" in location
    assert rows(core)[0]["visitor_id"] == VISITOR and rows(core)[0]["new_visitor"] == 0


def test_forwarded_for_is_read_from_trusted_proxies_only(core):
    ask(core, head("/c/plain", "X-Forwarded-For: 203.0.113.9, 10.1.2.3"), peer="127.0.0.1")
    ask(core, head("/c/plain", "X-Forwarded-For: 203.0.113.9"), peer="198.51.100.1")
    ask(core, head("/c/plain", "X-Forwarded-For: junk, 10.0.0.1"), peer="127.0.0.1")
    assert [r["ip"] for r in rows(core)] == ["203.0.113.9", "198.51.100.1", "10.0.0.1"]


def test_not_for_the_core_and_too_large(core):
    assert ask(core, head("/healthz")) == HAND_OVER
    assert ask(core, head("/c/plain", method=b"POST")) == HAND_OVER
    assert ask(core, head("/c/plain", "Content-Length: 3")) == HAND_OVER
    assert ask(core, head("/p.gif?txid=1")) == HAND_OVER  # a conversion pixel: aiohttp's
    assert ask(core, head("/c/plain", "X-Big: " + "a" * 40_000)) == TOO_LARGE
    assert rows(core) == []


def test_unknown_disabled_and_head(core):
    assert ask(core, head("/c/nope")).startswith(b"HTTP/1.1 404 Not Found")
    assert ask(core, head("/c/off")).startswith(b"HTTP/1.1 404 Not Found")
    answer = ask(core, head("/c/plain", method=b"HEAD"), keep_alive=False)
    assert answer.startswith(b"HTTP/1.1 302") and answer.endswith(b"Connection: close\r\n\r\n")
    assert rows(core)[0]["method"] == "HEAD"


def test_the_switch_selects_the_pure_core_when_asked(monkeypatch):
    monkeypatch.setenv("TRACKER_NO_EXTENSIONS", "1")
    assert not extensions.wanted()
    monkeypatch.setenv("TRACKER_NO_EXTENSIONS", "0")
    assert extensions.wanted()
    assert clickpath.ClickPath is (CompiledClickPath or PyClickPath)


@pytest.mark.parametrize(
    "buffer",
    [
        b"",
        b"\r\n",
        b"\r\n\r\nGET / HTTP/1.1\r\n\r\nGET",
        b"GET / HTTP/1.1\r\nA: b\r\n\r",
        b"\r\r\n\n",
    ],
)
def test_head_span_is_the_same_in_both(buffer):
    if compiled_head_span is None:
        compiled_missing("the compiled click core")
    assert compiled_head_span(bytearray(buffer)) == clickpath.py_head_span(bytearray(buffer))
    assert compiled_head_span(buffer) == clickpath.py_head_span(buffer)


# -- differential: random and hostile requests give the same bytes from both -----------

POOL = bytes(range(256)) * 16


def run(cls, tmp: Path, raw: bytes, peer: str | None, keep_alive: bool, ahead=0, **ctx_args):
    """One request through a fresh core with the ids' state reset: the same inputs give
    the same ids, so every byte can be compared. `ahead`: the last id made was that many
    ms ahead of the clock (the clock was set back), so the click's id is too."""
    ctx = make_ctx(tmp, **ctx_args)
    core = cls(ctx)
    last = int(NOW * 1000) + ahead if ahead else 0
    ids.reset(last, 0, POOL, 0)
    buffer = bytearray(raw + b"\r\n\r\n")
    assert clickpath.py_head_span(buffer) == (compiled_head_span or clickpath.py_head_span)(buffer)
    answer = core.handle(buffer, 0, len(raw), peer, keep_alive)
    if isinstance(answer, bytes):  # the Date line is the wall clock's, the rest must match
        answer = re.sub(rb"\r\nDate: [^\r]*", b"", answer)
    batch = ctx.writer._batch
    return answer, batch.rows, batch.clicks, dict(ctx.counters.requests)


def compare(
    tmp: Path, raw: bytes, peer: str | None = "127.0.0.1", keep_alive=True, ahead=0, **ctx_args
):
    if CompiledClickPath is None:
        compiled_missing("the compiled click core")
    pure = run(PyClickPath, tmp, raw, peer, keep_alive, ahead, **ctx_args)
    compiled = run(CompiledClickPath, tmp, raw, peer, keep_alive, ahead, **ctx_args)
    assert compiled == pure
    return pure


def llhttp_accepts(raw: bytes) -> bool:
    class Done:
        ok = False

        def on_headers_complete(self):
            self.ok = True

    done = Done()
    try:
        httptools.HttpRequestParser(done).feed_data(raw + b"\r\n\r\n")
    except httptools.HttpParserError:
        return False
    return done.ok


@pytest.fixture(autouse=True)
def fixed_ids(monkeypatch):
    """uuid7() without a time reads the wall clock: pinned, so a new visitor's id repeats
    (with the Python generator, whose clock a test can pin: the compiled one makes the
    same ids, tests/test_ids.py)."""
    monkeypatch.setattr(ids, "time", SimpleNamespace(time_ns=lambda: int(NOW * 1e9)))
    for module in (ids, clicks):
        monkeypatch.setattr(module, "uuid7", ids.py_uuid7)
    monkeypatch.setattr(ids, "reset", ids.py_reset)
    saved = ids.py_state()
    yield
    ids.py_reset(*saved)


HOSTILE = [
    head("/c/plain?sub1=%ff%fe&sub2=%E2%82&sub3=a+b&sub4=%00x&sub5=%22q%5C"),
    head("/c/macros?sub1=" + "%F0%9F%98%80" * 200 + "&sub1=second"),
    head("/c/macros?=&&&sub1&sub1=x&%73ub2=encoded&no-track=0"),
    head("/c/plain?no-track=1", "User-Agent: x"),
    head("/c/plain", "DNT: 1"),
    head("/c/plain", "Sec-GPC: 1", "Sec-GPC: 0"),
    head("/c/plain", b"User-Agent: caf\xc3\xa9 \xff\xfe bot\tx", b"Referer: \x80\x81"),
    head("/c/plain", "Cookie: " + "x" * 5000 + f"; vid={VISITOR}"),
    head("/c/plain", f"Cookie: vid={VISITOR.upper()}", f"Cookie: vid={VISITOR}"),
    head("/c/plain", f'cookie:   vid ="{VISITOR}" ; other=1'),
    head("/c/plain", "X-Forwarded-For: ::1, [2001:db8::1]:443, 1.2.3.4:80"),
    head("/c/plain", "X-Forwarded-For: 01.2.3.4"),
    head("/c/plain", "X-Forwarded-For: 10.0.0.1,, 10.0.0.2"),
    head("/c/plain", "X-Forwarded-For: 256.1.1.1, 1.2.3"),
    head("/c/plain", "X-Forwarded-For: ::ffff:8.8.8.8, 10.9.9.9"),
    head("/c/plain", "X-Forwarded-For:"),
    head("/c/fr%61g?sub1=1"),
    head("/c/frag?sub9=1", "Referer: " + "r" * 5000, "Accept-Language: " + "l" * 2000),
    head("/c/amp?sub2="),
    head("/c/amp?sub2=b%26c"),
    head("/c/ids?sub5=%2F%3F%23%40"),
    head("/c/routed"),
    head("/c/unicode"),
    head("/c/off?sub1=x"),
    head("/c/plain?" + "a=b&" * 600),
    head("/c/plain?sub1=" + "z" * 700),
    head("/c/plain", "Content-Length: 0", 'X-A: "\\quoted\\"'),
    head("/p.gif?slug=plain&sub1=p"),
    head("/p.gif?campaign_id=c"),
    head(b"/c/plain", method=b"HEAD"),
]


@pytest.mark.parametrize("raw", HOSTILE)
@pytest.mark.parametrize("peer", ["127.0.0.1", "10.0.0.7", "203.0.113.5", "::1", "", None])
def test_hostile_requests_give_identical_bytes(tmp_path, raw, peer):
    assert llhttp_accepts(raw), raw
    compare(tmp_path, raw, peer)


@pytest.mark.parametrize("raw", HOSTILE[:3] + HOSTILE[16:21])
def test_an_id_ahead_of_the_clock_gives_identical_bytes(tmp_path, raw):
    _, _, recorded, _ = compare(tmp_path, raw, ahead=7)
    for click_id, _, ms, record in recorded:
        assert hot.decode(click_id, record)["ts"] == ms == int(NOW * 1000)  # the click's own
        assert ids.uuid7_time_ms(click_id) == ms + 7


@pytest.mark.parametrize("raw", HOSTILE[:12])
def test_identical_with_other_settings(tmp_path, raw):
    compare(tmp_path, raw, "127.0.0.1", keep_alive=False, honor=False)
    compare(tmp_path, raw, "127.0.0.1", trusted="")
    compare(tmp_path, raw, "127.0.0.1", trusted="::/0,127.0.0.1/32")


# Bytes the compiled core tests eight at a time (JSON escapes, bytes that are not
# printable ASCII) at every place in a word, so none slips through a word's test (llhttp
# refuses DEL and the other controls in a header).
WORD_PROBES = [b'"', b"\\", b"\x80", b"\xff", b"\t"]


@pytest.mark.parametrize("probe", WORD_PROBES)
def test_a_byte_at_any_place_of_a_word_gives_identical_bytes(tmp_path, probe):
    for offset in range(17):
        value = b"a" * offset + probe + b"b" * (16 - offset)
        raw = head("/c/plain?sub1=" + "q" * offset, b"User-Agent: " + value, b"Referer: " + value)
        assert llhttp_accepts(raw)
        compare(tmp_path / str(offset), raw)


TEXT = st.one_of(
    st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=40),
    st.sampled_from(["%", "%2", "%zz", "%ff", "+", "%E2%82%AC", "a=b", "&", "#", '"', "\\"]),
    st.binary(max_size=12).map(lambda b: "".join(f"%{x:02X}" for x in b)),
)
KEYS = st.sampled_from(
    ["sub1", "sub2", "sub3", "sub4", "sub5", "utm_source", "utm_term", "gclid", "msclkid"]
    + ["no-track", "sub%31", "sub+1", "", "x", "SUB1"]
)
HOP = st.one_of(
    st.ip_addresses(v=4).map(str),
    st.ip_addresses(v=6).map(str),
    st.sampled_from(["10.0.0.9", "127.0.0.1", "1.2.3.4:8080", "[::1]:80", "01.1.1.1", " ", "x"]),
)
HEADER_VALUES = st.one_of(
    st.binary(max_size=60).map(lambda b: bytes(c for c in b if c >= 0x20 and c != 0x7F)),
    st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=60).map(
        str.encode
    ),
)


ASCII_VALUE = st.text(
    alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=60
).map(str.encode)
PLAIN_KEYS = st.sampled_from(["sub1", "sub2", "sub5", "utm_source", "gclid", "x", ""])


@st.composite
def requests(draw, common: bool = False):
    """A tracking request; `common`: the kind the compiled core serves itself (ASCII, no
    no-track, plain links), with junk still in every field."""
    slugs = ["plain", "macros", "frag", "amp", "ids"] if common else [link.slug for link in LINKS]
    slug = draw(st.sampled_from(slugs + ([] if common else ["nope", "pl%61in"])))
    HEADER_VALUE = ASCII_VALUE if common else HEADER_VALUES
    params = draw(st.lists(st.tuples(PLAIN_KEYS if common else KEYS, TEXT), max_size=8))
    query = "&".join(f"{k}={v}" if draw(st.booleans()) else k for k, v in params)
    target = f"/c/{slug}" + (f"?{query}" if query or draw(st.booleans()) else "")
    if not common and draw(st.integers(0, 9)) == 0:
        target = "/p.gif?slug=" + slug + "&" + query
    headers: list[bytes] = []
    if draw(st.booleans()):
        headers.append(b"User-Agent: " + draw(HEADER_VALUE))
    if draw(st.booleans()):
        headers.append(b"X-Forwarded-For: " + ", ".join(draw(st.lists(HOP, max_size=4))).encode())
    cookie = draw(
        st.sampled_from(
            ["", f"vid={VISITOR}", f'vid="{VISITOR}"', "vid=junk", f"a=1;vid={VISITOR}; vid=x"]
        )
    )
    if cookie:
        headers.append(b"Cookie: " + cookie.encode() + b"; p=" + b"c" * draw(st.integers(0, 5000)))
    others = ["Referer", "Accept-Language"] + ([] if common else ["DNT", "sec-gpc"])
    for name in draw(st.lists(st.sampled_from(others))):
        headers.append(name.encode() + b": " + draw(HEADER_VALUE))
    method = draw(st.sampled_from([b"GET", b"HEAD"]))
    raw = head(target, *headers, method=method)
    peers = ["127.0.0.1", "10.0.0.7", "203.0.113.5"] + ([] if common else ["::1", None])
    peer = draw(st.sampled_from(peers))
    return raw, peer, draw(st.booleans())


@settings(
    max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(case=requests())
def test_random_requests_give_identical_bytes(tmp_path, case):
    raw, peer, keep_alive = case
    assume(llhttp_accepts(raw))
    compare(tmp_path, raw, peer, keep_alive)


@settings(
    max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(case=requests(common=True))
def test_random_common_requests_give_identical_bytes(tmp_path, case):
    raw, peer, keep_alive = case
    assume(llhttp_accepts(raw))
    compare(tmp_path, raw, peer, keep_alive)
