"""Routing end to end: `tracker serve` with a geo database; a link's rules send clicks by
country, device, parameter and a sticky A/B split; ClickHouse records `route_rule` and
`variant`; the admin API refuses bad rules and cycles; a change reaches every edge; the
A/B report reads the result."""

from __future__ import annotations

import asyncio
import subprocess
import sys

import aiohttp
import orjson
import pytest

from tests.geo.test_reader import CITY_ROWS, write_mmdb
from tests.system.test_postbacks import ADV_TOKEN, postback
from tracker.testing import BROWSER_UA, ROOT, RedisServer, Service

IPAD = (
    "Mozilla/5.0 (iPad; CPU OS 17_4 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) "
    "Version/17.4 Mobile/15E148 Safari/604.1"
)
LONDON_IP = "81.2.69.5"
US_IP = "8.8.8.8"
RULES = {
    "rules": [
        {
            "id": "uk",
            "when": {"country": ["GB"]},
            "to": {"url": "https://uk.example/?c={click_id}"},
        },
        {"id": "tablets", "when": {"device_type": ["tablet"]}, "to": {"link": "rt-tablet"}},
        {"id": "fb", "when": {"param_equals": {"src": "fb"}}, "to": {"url": "https://fb.example/"}},
        {
            "id": "ab",
            "to": {
                "split": [
                    {"variant": "a", "weight": 1, "url": "https://a.example/"},
                    {"variant": "b", "weight": 1, "url": "https://b.example/"},
                ]
            },
        },
    ]
}


@pytest.fixture(scope="module")
def svc(tmp_path_factory):
    folder = tmp_path_factory.mktemp("geo")
    city = write_mmdb(folder / "GeoLite2-City.mmdb", CITY_ROWS, "GeoLite2-City")
    redis = RedisServer(tmp_path_factory.mktemp("redis"))
    redis.start()
    service = Service(
        tmp_path_factory.mktemp("svc"),
        redis,
        TRACKER_GEO_DATABASES=str(city),
        TRACKER_TRUSTED_PROXIES="127.0.0.1/32",  # the tests say who the client is
    )
    service.serve()
    assert service.api("POST", "/api/advertisers", {"id": "shop", "token": ADV_TOKEN})[0] == 201
    service.add_link("rt-tablet", "https://tablet.example/", campaign_id="rt-c")
    service.add_link(
        "rt", "https://own.example/", campaign_id="rt-c", advertiser_id="shop", routing=RULES
    )
    yield service
    service.stop_all()
    redis.stop()


async def go(session, svc, slug="rt", ip=US_IP, ua=BROWSER_UA, query="", cookie=None):
    headers = {"X-Forwarded-For": ip, "User-Agent": ua}
    if cookie:
        headers["Cookie"] = f"vid={cookie}"
    async with session.get(
        f"{svc.base_url}/c/{slug}?{query}", headers=headers, allow_redirects=False
    ) as r:
        assert r.status == 302
        vid = r.cookies["vid"].value if "vid" in r.cookies else cookie
        return r.headers["Location"], vid


async def test_rules_decide_and_clicks_record_why(svc):
    async with aiohttp.ClientSession() as session:
        uk, _ = await go(session, svc, ip=LONDON_IP, query="sub2=rt1&sub1=1")
        tablet, _ = await go(session, svc, ua=IPAD, query="sub2=rt1&sub1=2")
        fb, _ = await go(session, svc, query="src=fb&sub2=rt1&sub1=3")
        # first match: a London tablet from facebook goes to the UK page
        first, _ = await go(session, svc, ip=LONDON_IP, ua=IPAD, query="src=fb&sub2=rt1&sub1=4")
        plain, _ = await go(session, svc, "rt-tablet", query="sub2=rt1&sub1=5")
    assert uk.startswith("https://uk.example/?c=")
    assert tablet.startswith("https://tablet.example/?click_id=")
    assert fb.startswith("https://fb.example/?click_id=")
    assert first.startswith("https://uk.example/")
    assert plain.startswith("https://tablet.example/")
    svc.wait_count("clicks", 5, "sub2 = 'rt1'")
    rows = svc.sql(
        "SELECT link_slug, route_rule, variant, destination_url, country FROM tracker.clicks "
        "WHERE sub2 = 'rt1' ORDER BY sub1"
    )
    assert [(r["link_slug"], r["route_rule"], r["variant"]) for r in rows] == [
        ("rt", "uk", ""),
        ("rt", "tablets", ""),
        ("rt", "fb", ""),
        ("rt", "uk", ""),
        ("rt-tablet", "", ""),
    ]
    assert rows[0]["country"] == "GB" and rows[0]["destination_url"] == uk


async def test_split_is_sticky_per_visitor_and_reported(svc):
    variants: dict[str, str] = {}
    async with aiohttp.ClientSession() as session:
        for n in range(60):
            location, vid = await go(session, svc, query=f"sub2=ab{n}")
            variants[vid] = location
        for vid, location in variants.items():  # each returns: the same variant
            again, _ = await go(session, svc, query="sub2=ab-return", cookie=vid)
            assert again.split("?")[0] == location.split("?")[0]
    seen = {location.split("/")[2] for location in variants.values()}
    assert seen == {"a.example", "b.example"}
    svc.wait_count("clicks", 120, "link_slug = 'rt' AND route_rule = 'ab'")
    rows = svc.sql(
        "SELECT visitor_id, uniqExact(variant) AS n FROM tracker.clicks "
        "WHERE route_rule = 'ab' GROUP BY visitor_id"
    )
    assert len(rows) == 60 and all(r["n"] == 1 for r in rows)
    # conversions of some "b" clicks, then the report
    b_clicks = svc.sql(
        "SELECT toString(click_id) AS c FROM tracker.clicks WHERE route_rule = 'ab' "
        "AND variant = 'b' AND sub2 != 'ab-return' LIMIT 5"
    )
    async with aiohttp.ClientSession() as session:
        for n, row in enumerate(b_clicks):
            status, body = await postback(session, svc.base_url, cid=row["c"], txid=f"ab-{n}")
            assert status == 200, body
    svc.wait_count("conversions", len(b_clicks), "txid LIKE 'ab-%'")
    report = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "tracker", "report", "ab", "--link", "rt", "--format", "json"],
        env=svc.env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert report.returncode == 0, report.stderr
    by = {r["variant"]: r for r in orjson.loads(report.stdout)}
    assert by["a"]["clicks"] + by["b"]["clicks"] == 120
    assert by["b"]["conversions"] == len(b_clicks) and by["a"]["conversions"] == 0
    assert float(by["b"]["p_best"]) > float(by["a"]["p_best"])


def test_bad_rules_are_refused_with_the_reason(svc):
    cases = [
        (
            {"rules": [{"id": "x", "to": {"url": "https://a.example/"}, "weight": 1}]},
            "unknown field",
        ),
        (
            {
                "rules": [
                    {
                        "id": "x",
                        "to": {
                            "split": [
                                {"variant": "a", "weight": -1, "url": "https://a.example/"},
                                {"variant": "b", "weight": 1, "url": "https://b.example/"},
                            ]
                        },
                    }
                ]
            },
            "weight",
        ),
        ({"rules": [{"id": "x", "to": {"link": "no-such-link"}}]}, "does not exist"),
    ]
    for n, (routing, reason) in enumerate(cases):
        body = {"slug": f"rt-bad{n}", "destination": "https://x.example/", "routing": routing}
        status, reply = svc.api("POST", "/api/links", body)
        assert status == 400 and reason in reply["reason"], reply
        assert svc.api("GET", f"/api/links/rt-bad{n}")[0] == 404
    # a cycle: p -> q, then q -> p
    svc.add_link("rt-q", "https://q.example/")
    svc.add_link(
        "rt-p", "https://p.example/", routing={"rules": [{"id": "r", "to": {"link": "rt-q"}}]}
    )
    status, reply = svc.api(
        "PATCH", "/api/links/rt-q", {"routing": {"rules": [{"id": "r", "to": {"link": "rt-p"}}]}}
    )
    assert status == 400 and "cycle" in reply["reason"] and "rt-p" in reply["reason"], reply
    assert svc.api("GET", "/api/links/rt-q")[1]["routing"] is None  # nothing stored


async def test_a_change_reaches_every_edge(svc):
    """Both edge processes route by the new rules within the link refresh interval."""
    svc.add_link(
        "rt-live",
        "https://own.example/",
        routing={"rules": [{"id": "v1", "to": {"url": "https://v1.example/"}}]},
    )
    status, _ = svc.api(
        "PATCH",
        "/api/links/rt-live",
        {"routing": {"rules": [{"id": "v2", "to": {"url": "https://v2.example/"}}]}},
    )
    assert status == 200

    async def all_go_to(prefix: str) -> bool:
        # a connection per click (a pooled session would keep asking the same edge), so
        # the clicks spread over both edges
        connector = aiohttp.TCPConnector(force_close=True)
        async with aiohttp.ClientSession(connector=connector) as session:
            locations = [(await go(session, svc, "rt-live"))[0] for _ in range(40)]
        return all(loc.startswith(prefix) for loc in locations)

    async def eventually(prefix: str) -> None:
        for _ in range(100):  # the refresh interval is 0.2 s; a loaded machine is slower
            if await all_go_to(prefix):
                return
            await asyncio.sleep(0.1)
        raise AssertionError(f"an edge kept the old rules (wanted {prefix})")

    await eventually("https://v2.example/")
    assert await all_go_to("https://v2.example/")  # and it stays so
    status, _ = svc.api("PATCH", "/api/links/rt-live", {"routing": None})
    assert status == 200
    await eventually("https://own.example/")


def test_cli_sets_shows_and_clears_rules(svc, tmp_path):
    def tracker(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "tracker", "links", "route", *args],
            env=svc.env,
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
        )

    svc.add_link("rt-cli", "https://own.example/")
    rules = {
        "rules": [{"id": "fb", "when": {"param_present": ["fbclid"]}, "to": {"link": "rt-tablet"}}]
    }
    path = tmp_path / "rules.json"
    path.write_bytes(orjson.dumps(rules))
    done = tracker("rt-cli", "--file", str(path))
    assert done.returncode == 0 and "1 rule" in done.stdout, done.stderr
    assert svc.api("GET", "/api/links/rt-cli")[1]["routing"] == rules
    assert orjson.loads(tracker("rt-cli").stdout) == rules
    bad = tracker("rt-cli", "--json", '{"rules": [{"id": "x", "to": {"link": "rt-cli"}}]}')
    assert bad.returncode == 1 and "itself" in bad.stderr
    cycle = tracker("rt-tablet", "--json", '{"rules": [{"id": "x", "to": {"link": "rt-cli"}}]}')
    assert cycle.returncode == 1 and "cycle" in cycle.stderr
    assert tracker("rt-cli", "--clear").returncode == 0
    assert svc.api("GET", "/api/links/rt-cli")[1]["routing"] is None
