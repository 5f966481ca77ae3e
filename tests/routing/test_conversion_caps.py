"""A campaign's conversion cap: the pure decision, the counters the postback script keeps
(duplicates and status changes do not count), the edges' read-back across a UTC day, and
real edge processes sending the campaign's clicks to its overflow once it is reached."""

from __future__ import annotations

import subprocess
import time
import urllib.parse
from datetime import UTC, datetime

import orjson
import pytest

from tracker import redis_keys as K
from tracker.clock import FixedClock
from tracker.edge.caps import ConversionCounts
from tracker.hashcache import HashCache
from tracker.redis_connection import async_client
from tracker.routing import campaign_caps
from tracker.routing.rules import (
    CAP_CONVERSIONS_DAILY,
    CAP_CONVERSIONS_TOTAL,
    CAP_RULES,
    RoutingError,
    over_cap,
    over_conversion_cap,
)
from tracker.testing import Service, get_status_location, wait_until
from tracker.timefmt import utc_day

ADV_TOKEN = "adv-token-0123456789abcdef"


def test_over_conversion_cap_decides_by_the_counts():
    caps = campaign_caps.parse("spring", {"daily_conversions": 5, "total_conversions": 20})
    assert caps.counts_conversions and not caps.counts_clicks
    assert over_conversion_cap(caps, 4, 19) == ""
    assert over_conversion_cap(caps, 5, 5) == CAP_CONVERSIONS_DAILY  # reached at the cap
    assert over_conversion_cap(caps, 0, 20) == CAP_CONVERSIONS_TOTAL  # total wins
    assert over_cap(caps, 10**9, 10**9) == ""  # no click cap: clicks never stop it
    daily_only = campaign_caps.parse("spring", {"daily_conversions": 1})
    assert over_conversion_cap(daily_only, 0, 10**9) == ""
    both = campaign_caps.parse("spring", {"total_clicks": 9, "daily_conversions": 2})
    assert both.counts_clicks and both.counts_conversions
    assert {CAP_CONVERSIONS_DAILY, CAP_CONVERSIONS_TOTAL} <= set(CAP_RULES)


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        ({"daily_conversions": 0}, "caps.daily_conversions must be a whole number"),
        ({"total_conversions": -3}, "caps.total_conversions must be a whole number"),
        ({"total_conversions": 2.5}, "whole number"),
        ({"total_conversions": "10"}, "whole number"),
        ({"total_conversions": True}, "whole number"),
        ({"daily_conversions": 10**13}, "whole number"),
        ({"monthly_conversions": 10}, "unknown field 'monthly_conversions'"),
        ({"overflow": {"url": "https://x.example/"}}, "needs daily_clicks or total_clicks or"),
    ],
)
def test_campaign_conversion_caps_are_validated(body, reason):
    with pytest.raises(RoutingError, match=reason):
        campaign_caps.parse("spring", body)


def test_a_links_caps_take_no_conversion_cap():
    from tracker.routing.rules import compile_routing

    with pytest.raises(RoutingError, match="unknown field 'daily_conversions'"):
        compile_routing({"caps": {"daily_conversions": 5}}, "s")


def _ms(text: str) -> int:
    return int(datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp() * 1000)


async def test_edges_read_the_counts_of_the_day_the_clock_says(redis_server):
    """The read-back: today's counter by the injected clock; a click on the next UTC day,
    before the next read, counts that day from zero; after it, the new day's counter."""
    clock = FixedClock(_ms("2026-11-30T23:59:58") / 1000)
    redis = async_client(redis_server.url, 2.0)
    cache: HashCache = HashCache(redis, "", "", campaign_caps.from_json, 1.0)
    cache.items = {
        "spring": campaign_caps.parse("spring", {"daily_conversions": 2}),
        "clicks-only": campaign_caps.parse("clicks-only", {"daily_clicks": 2}),
    }
    counts = ConversionCounts(redis, cache, 0.2, clock)
    client = redis_server.client()
    client.set(K.conversion_cap_daily_key("spring", 20261130), 2)
    client.set(K.conversion_cap_daily_key("spring", 20261201), 1)
    client.set(K.conversion_cap_total_key("spring"), 7)
    try:
        assert counts.counts("spring", 20261130) == (0, 0)  # nothing read yet
        await counts.refresh()
        assert set(counts.seen) == {"spring"}  # only campaigns with a conversion cap
        today = utc_day(_ms("2026-11-30T23:59:58"))
        assert counts.counts("spring", today) == (2, 7)
        assert counts.counts("spring", today + 1) == (0, 7)  # the next day, not read yet
        clock.advance(4)  # 2026-12-01 00:00:02
        await counts.refresh()
        assert counts.counts("spring", 20261201) == (1, 7)
        cache.items = {}  # the cap removed: nothing left to read
        await counts.refresh()
        assert counts.seen == {}
    finally:
        await redis.aclose()


# -- real processes -------------------------------------------------------------------------


def _click(service: Service, slug: str, tag: str) -> tuple[str, str]:
    """One click on a new connection (so either edge may answer): (host, click id)."""
    status, location = get_status_location(f"{service.base_url}/c/{slug}?sub3={tag}")
    assert status == 302, status
    parts = urllib.parse.urlsplit(location)
    return parts.hostname or "", urllib.parse.parse_qs(parts.query).get("c", [""])[0]


def _postback(service: Service, click_id: str, txid: str, status: str = "pending") -> str:
    query = urllib.parse.urlencode(
        {
            "advertiser": "shop",
            "token": ADV_TOKEN,
            "click_id": click_id,
            "txid": txid,
            "status": status,
        }
    )
    code, body = service.api("GET", f"/postback?{query}", token=None)
    assert code == 200, body
    return body["status"]


def _wait_overflow(service: Service, slug: str) -> None:
    """Until 10 clicks in a row, each on a new connection (so on both edges), went to the
    overflow: each edge reads the counts every refresh interval (0.2 s here)."""
    wait_until(
        lambda: all(_click(service, slug, "wait")[0] == "full.example" for _ in range(10)),
        15,
        "every edge to send the campaign's clicks to the overflow",
        interval=0.1,
    )


def _cli(service: Service, *args: str) -> subprocess.CompletedProcess:
    return service.cli("campaign-caps", *args)


def _prepare(service: Service, caps: dict, via_cli: bool = False) -> None:
    """An advertiser, two links of campaign spring and one of autumn, and spring's caps
    (set through the API or the CLI, after bad values are refused with the reason)."""
    status, body = service.api("POST", "/api/advertisers", {"id": "shop", "token": ADV_TOKEN})
    assert status == 201, body
    service.add_link("cc-a", "https://a.example/?c={click_id}", campaign_id="spring")
    service.add_link("cc-b", "https://b.example/?c={click_id}", campaign_id="spring")
    service.add_link("cc-other", "https://o.example/?c={click_id}", campaign_id="autumn")
    for bad in ({"daily_conversions": 0}, {"total_conversions": "3"}, {"conversions": 3}):
        if via_cli:
            done = _cli(service, "spring", "--json", orjson.dumps(bad).decode())
            assert done.returncode == 1 and "caps refused" in done.stderr, done
        else:
            status, reply = service.api("PUT", "/api/routing/campaign-caps/spring", bad)
            assert status == 400 and reply["reason"], reply
    if via_cli:
        done = _cli(service, "spring", "--json", orjson.dumps(caps).decode())
        assert done.returncode == 0, done
        assert orjson.loads(_cli(service, "spring").stdout.split("\t")[1]) == caps
    else:
        status, _ = service.api("PUT", "/api/routing/campaign-caps/spring", caps)
        assert status == 200
    assert service.api("GET", "/api/routing/campaign-caps")[1] == {"spring": caps}
    time.sleep(0.8)  # every edge reloads the caps and reads the counts (0.2 s each)


def test_conversion_cap_across_two_edge_processes(tmp_path, redis_server):
    """Conversions accepted by either edge count together; once the total is reached
    (duplicates and status changes not counted), both edges send the campaign's clicks to
    its overflow, recorded as cap:campaign_total_conversions; other campaigns untouched."""
    service = Service(tmp_path / "svc", redis_server, TRACKER_WORKERS="2")
    service.serve()
    try:
        caps = {"total_conversions": 3, "overflow": {"url": "https://full.example/?c={click_id}"}}
        _prepare(service, caps)
        clicks = [_click(service, ("cc-a", "cc-b")[n % 2], "cv") for n in range(4)]
        assert [host for host, _ in clicks] == ["a.example", "b.example"] * 2
        client = redis_server.client()
        total_key = K.conversion_cap_total_key("spring")
        assert _postback(service, clicks[0][1], "t1") == "accepted"
        assert _postback(service, clicks[0][1], "t1") == "duplicate"
        assert _postback(service, clicks[0][1], "t1", "approved") == "accepted"  # a change
        assert _postback(service, clicks[1][1], "t2", "approved") == "accepted"
        assert int(client.get(total_key)) == 2  # the duplicate and the change not counted
        time.sleep(0.8)
        # under the cap: still the campaign's own destinations
        assert _click(service, "cc-a", "cv")[0] == "a.example"
        assert _postback(service, clicks[2][1], "t3") == "accepted"
        for _ in range(5):  # duplicates on new connections, so on both edges
            assert _postback(service, clicks[2][1], "t3") == "duplicate"
        assert _postback(service, clicks[1][1], "t2", "reversed") == "accepted"
        assert int(client.get(total_key)) == 3  # a reversal does not give one back
        _wait_overflow(service, "cc-b")
        after = [
            _click(service, ("cc-a", "cc-b", "cc-other")[n % 3], "cv-after") for n in range(30)
        ]
        spring = [host for n, (host, _) in enumerate(after) if n % 3 != 2]
        assert spring == ["full.example"] * 20  # on whichever edge answered
        assert [host for host, _ in after[2::3]] == ["o.example"] * 10
        # a conversion of a click made before the cap is still accepted (and counted)
        assert _postback(service, clicks[3][1], "t4") == "accepted"
        assert int(client.get(total_key)) == 4
        service.wait_count("clicks", 30, "sub3 = 'cv-after'")
        rows = service.sql(
            "SELECT campaign_id, route_rule, count() AS n FROM tracker.clicks "
            "WHERE sub3 = 'cv-after' GROUP BY campaign_id, route_rule ORDER BY campaign_id"
        )
        assert rows == [
            {"campaign_id": "autumn", "route_rule": "", "n": 10},
            {"campaign_id": "spring", "route_rule": CAP_CONVERSIONS_TOTAL, "n": 20},
        ]
        edges = {line for line in service.log_text().splitlines() if "listening" in line}
        assert len(edges) == 2
    finally:
        service.stop_all()


def test_daily_conversion_cap_resets_on_the_next_utc_day(tmp_path, redis_server):
    """Edges pinned a few seconds before midnight UTC: the day's cap reached, clicks go to
    the overflow; the same edges restarted just after midnight send them home again, and
    the new day counts from zero."""
    evening = _ms("2026-11-30T23:59:50") / 1000
    service = Service(tmp_path / "svc", redis_server, TRACKER_WORKERS="2")
    service.start_edges(2, clock_at=evening)
    try:
        caps = {"daily_conversions": 2, "overflow": {"url": "https://full.example/?c={click_id}"}}
        _prepare(service, caps, via_cli=True)
        clicks = [_click(service, "cc-a", "day") for _ in range(4)]
        assert _postback(service, clicks[0][1], "d1") == "accepted"
        assert _postback(service, clicks[0][1], "d1") == "duplicate"
        assert _postback(service, clicks[1][1], "d2") == "accepted"
        client = redis_server.client()
        assert int(client.get(K.conversion_cap_daily_key("spring", 20261130))) == 2
        assert 0 < client.ttl(K.conversion_cap_daily_key("spring", 20261130)) <= K.CAP_DAY_TTL
        _wait_overflow(service, "cc-a")
        assert {_click(service, "cc-b", "day")[0] for _ in range(10)} == {"full.example"}

        for name in ("edge-0", "edge-1"):
            service.stop(name)
        service.start_edges(2, clock_at=evening + 20)  # 2026-12-01 00:00:10 UTC
        time.sleep(0.6)
        assert {_click(service, "cc-b", "day")[0] for _ in range(10)} == {"b.example"}
        assert _postback(service, clicks[2][1], "d3") == "accepted"
        assert _postback(service, clicks[3][1], "d4") == "accepted"
        assert int(client.get(K.conversion_cap_daily_key("spring", 20261201))) == 2
        assert int(client.get(K.conversion_cap_total_key("spring"))) == 4
        _wait_overflow(service, "cc-a")
    finally:
        service.stop_all()
