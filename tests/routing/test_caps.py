"""Click caps: the pure decision, the shared counters of two edges against a real Redis,
and `tracker serve` with two edge processes sending a capped link's overflow."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import aiohttp
import pytest

from tracker import redis_keys as K
from tracker.edge.caps import CapCounters
from tracker.redis_connection import async_client
from tracker.routing.rules import CAP_DAILY, CAP_TOTAL, RoutingError, compile_routing, over_cap
from tracker.testing import Service
from tracker.timefmt import utc_day


def test_utc_day_matches_the_calendar():
    for text in ("1970-01-01", "2000-02-29", "2026-11-30", "2026-12-31", "2100-03-01"):
        day = datetime.fromisoformat(text).replace(tzinfo=UTC)
        ms = int(day.timestamp() * 1000)
        expected = int(text.replace("-", ""))
        assert utc_day(ms) == expected and utc_day(ms + 86_399_999) == expected


def test_over_cap_and_validation():
    caps = compile_routing({"caps": {"daily_clicks": 10, "total_clicks": 100}}, "s").caps
    assert caps is not None and caps.overflow is None
    assert over_cap(caps, 9, 99) == ""
    assert over_cap(caps, 10, 50) == CAP_DAILY
    assert over_cap(caps, 3, 100) == CAP_TOTAL
    routed = compile_routing(
        {"caps": {"total_clicks": 5, "overflow": {"link": "spare"}}, "rules": []}, "s"
    )
    assert routed.links == {"spare"}
    for bad, reason in (
        ({"caps": {}}, "needs daily_clicks or total_clicks"),
        ({"caps": {"daily_clicks": 0}}, "whole number"),
        ({"caps": {"daily_clicks": "5"}}, "whole number"),
        ({"caps": {"daily_clicks": 5, "monthly": 9}}, "unknown field"),
        ({"caps": {"daily_clicks": 5, "overflow": {"url": "ftp://x.example/"}}}, "http"),
    ):
        with pytest.raises(RoutingError, match=reason):
            compile_routing(bad, "s")


async def test_two_edges_share_the_count(redis_server):
    day = 20261130
    edges = [CapCounters(async_client(redis_server.url, 2.0)) for _ in range(2)]
    try:
        for edge in edges:
            for _ in range(7):
                edge.add("lnk", day)
        assert edges[0].counts("lnk", day) == (7, 7)  # its own, before any sync
        await edges[0].sync()
        await edges[1].sync()
        assert edges[1].counts("lnk", day) == (14, 14)  # both edges' clicks
        await edges[0].sync()  # reads the other's clicks too
        assert edges[0].counts("lnk", day) == (14, 14)
        edges[0].add("lnk", day + 1)  # a new UTC day: the daily count starts again
        assert edges[0].counts("lnk", day + 1) == (1, 15)
        await edges[0].sync()
        assert edges[0].counts("lnk", day + 1) == (1, 15)
        client = redis_server.client()
        assert int(client.get(K.cap_total_key("lnk"))) == 15
        assert int(client.get(K.cap_daily_key("lnk", day))) == 14
        assert 0 < client.ttl(K.cap_daily_key("lnk", day)) <= K.CAP_DAY_TTL
    finally:
        for edge in edges:
            await edge.redis.aclose()


async def test_caps_across_two_edge_processes(tmp_path, redis_server):
    service = Service(tmp_path / "svc", redis_server, TRACKER_WORKERS="2")
    service.serve()
    try:
        service.add_link("cap-spare", "https://spare.example/")
        for slug in ("paced", "burst"):
            service.add_link(
                slug,
                "https://main.example/",
                routing={"caps": {"total_clicks": 40, "overflow": {"link": "cap-spare"}}},
            )
        served: dict[str, list[str]] = {"paced": [], "burst": []}

        async def one(session: aiohttp.ClientSession, slug: str) -> None:
            async with session.get(
                f"{service.base_url}/c/{slug}?sub3=cap", allow_redirects=False
            ) as r:
                served[slug].append(r.headers["Location"].split("/")[2])

        def spread() -> aiohttp.ClientSession:  # a connection per click: both edges answer
            return aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True))

        # clicks a little apart: each edge has seen the other's count, the cap is exact
        # (give or take a click whose edge had not synced yet on a busy machine)
        async with spread() as session:
            for _ in range(60):
                await one(session, "paced")
                await asyncio.sleep(0.05)
        paced = served["paced"].count("main.example")
        assert 40 <= paced <= 42, paced
        # a burst: the edges admit what they answer before their next sync, then stop
        async with spread() as session:
            await asyncio.gather(*(one(session, "burst") for _ in range(150)))
        burst = served["burst"].count("main.example")
        print(f"\ncap 40: paced clicks admitted {paced}, a burst of 150 admitted {burst}")
        assert 40 <= burst < 150
        await asyncio.sleep(0.5)
        async with spread() as session:
            await asyncio.gather(*(one(session, "burst") for _ in range(20)))
        assert served["burst"][150:].count("main.example") == 0
        await asyncio.to_thread(service.wait_count, "clicks", 230, "sub3 = 'cap'")
        rows = service.sql(
            "SELECT link_slug, route_rule, count() AS n FROM tracker.clicks WHERE sub3 = 'cap' "
            "GROUP BY link_slug, route_rule ORDER BY link_slug, route_rule"
        )
        assert rows == [
            {"link_slug": "burst", "route_rule": "", "n": burst},
            {"link_slug": "burst", "route_rule": CAP_TOTAL, "n": 170 - burst},
            {"link_slug": "paced", "route_rule": "", "n": paced},
            {"link_slug": "paced", "route_rule": CAP_TOTAL, "n": 60 - paced},
        ]
        # every admitted click counted (a sync that timed out after Redis applied it is
        # sent again: counted twice, so the cap errs towards stopping early)
        client = redis_server.client()
        assert burst <= int(client.get(K.cap_total_key("burst"))) <= burst + 10
        assert paced <= int(client.get(K.cap_total_key("paced"))) <= paced + 10
        edges = {line for line in service.log_text().splitlines() if "listening" in line}
        assert len(edges) == 2
    finally:
        service.stop_all()


async def test_campaign_caps_count_every_link_of_the_campaign(tmp_path, redis_server):
    service = Service(tmp_path / "svc", redis_server, TRACKER_WORKERS="2")
    service.serve()
    try:
        service.add_link("camp-a", "https://a.example/", campaign_id="spring")
        service.add_link("camp-b", "https://b.example/", campaign_id="spring")
        service.add_link("other", "https://o.example/", campaign_id="autumn")
        for body, reason in (
            ({"daily_clicks": 0}, "whole number"),
            ({"total_clicks": 5, "overflow": {"link": "other"}}, "url"),
            ({"total_clicks": 5, "when": 1}, "unknown field"),
        ):
            status, reply = service.api("PUT", "/api/routing/campaign-caps/spring", body)
            assert status == 400 and reason in reply["reason"], reply
        caps = {"total_clicks": 10, "overflow": {"url": "https://full.example/"}}
        status, _ = service.api("PUT", "/api/routing/campaign-caps/spring", caps)
        assert status == 200
        assert service.api("GET", "/api/routing/campaign-caps")[1] == {"spring": caps}
        await asyncio.sleep(0.6)  # every edge reloads within the refresh interval (0.2 s)
        served: list[str] = []
        async with aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(force_close=True)
        ) as session:
            for n in range(30):
                slug = ("camp-a", "camp-b", "other")[n % 3]
                async with session.get(
                    f"{service.base_url}/c/{slug}?sub3=ccap", allow_redirects=False
                ) as r:
                    served.append(r.headers["Location"].split("/")[2])
                await asyncio.sleep(0.05)
        spring = [h for n, h in enumerate(served) if n % 3 != 2]
        assert 10 <= sum(h in ("a.example", "b.example") for h in spring) <= 11
        assert {"a.example", "b.example"} <= set(spring)  # both links counted together
        assert served[2::3] == ["o.example"] * 10  # another campaign: untouched
        await asyncio.to_thread(service.wait_count, "clicks", 30, "sub3 = 'ccap'")
        rows = service.sql(
            "SELECT route_rule, count() AS n FROM tracker.clicks WHERE sub3 = 'ccap' "
            "AND campaign_id = 'spring' GROUP BY route_rule ORDER BY route_rule"
        )
        full = sum(h == "full.example" for h in spring)
        assert rows == [
            {"route_rule": "", "n": 20 - full},
            {"route_rule": "cap:campaign_total_clicks", "n": full},
        ]
        assert service.api("DELETE", "/api/routing/campaign-caps/spring")[0] == 200
        assert service.api("DELETE", "/api/routing/campaign-caps/spring")[0] == 404
    finally:
        service.stop_all()
