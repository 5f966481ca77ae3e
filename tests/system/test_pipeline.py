"""The click pipeline end to end: edge -> Redis -> sink -> chDB, through real processes."""

from __future__ import annotations

import urllib.error
import urllib.parse
import urllib.request

import aiohttp
import orjson

from tracker import hot, migrations
from tracker.ids import is_uuid, uuid7, uuid7_time_ms
from tracker.privacy_ops import hot_clicks, hot_path
from tracker.testing import get_status_location, hit_many, wait_until
from tracker.timefmt import parse_ms


async def test_one_click_lands_with_all_fields(tracking):
    tracking.add_link(
        "one",
        "https://shop.example/p?aff={affiliate_id}&s={sub1}",
        campaign_id="camp-1",
        affiliate_id="aff-1",
        advertiser_id="adv-1",
    )
    url = (
        f"{tracking.base_url}/c/one?sub1=a%20b&sub2=x&sub3=3&sub4=4&sub5=5&utm_source=news"
        "&utm_medium=email&utm_campaign=winter&utm_term=t&utm_content=c"
        "&gclid=G1&fbclid=F1&msclkid=M1"
    )
    headers = {
        "User-Agent": "Mozilla/5.0 (X11; Linux x86_64) TestBrowser/1.0",
        "Referer": "https://news.example/article",
        "Accept-Language": "fr-FR,fr;q=0.9",
        "X-Forwarded-For": "203.0.113.9",  # peer is not a trusted proxy: ignored
    }
    async with (
        aiohttp.ClientSession() as session,
        session.get(url, headers=headers, allow_redirects=False) as r,
    ):
        assert r.status == 302
        location = r.headers["Location"]
        assert r.headers["Cache-Control"] == "no-store"
        cookie = r.cookies["vid"]
        assert cookie["httponly"] and cookie["max-age"] == str(30 * 86400)
    assert location.startswith("https://shop.example/p?aff=aff-1&s=a%20b&click_id=")
    click_id = location.rsplit("click_id=", 1)[1]
    assert is_uuid(click_id)

    tracking.wait_count("clicks", 1, "link_slug = 'one'", timeout=10)
    row = tracking.sql(
        "SELECT *, toString(ip) AS ip_text FROM tracker.clicks WHERE link_slug = 'one'"
    )[0]
    assert row["click_id"] == click_id
    assert row["visitor_id"] == cookie.value
    assert row["new_visitor"] == 1
    assert (row["campaign_id"], row["affiliate_id"], row["advertiser_id"]) == (
        "camp-1",
        "aff-1",
        "adv-1",
    )
    assert [row[f"sub{i}"] for i in range(1, 6)] == ["a b", "x", "3", "4", "5"]
    assert (
        row["utm_source"],
        row["utm_medium"],
        row["utm_campaign"],
        row["utm_term"],
        row["utm_content"],
    ) == ("news", "email", "winter", "t", "c")
    assert (row["gclid"], row["fbclid"], row["msclkid"]) == ("G1", "F1", "M1")
    assert row["ip_text"] == "::ffff:127.0.0.1"
    assert row["user_agent"] == headers["User-Agent"]
    assert row["referer"] == headers["Referer"]
    assert row["accept_language"] == headers["Accept-Language"]
    assert row["request_url"].startswith("/c/one?sub1=a%20b")
    assert row["destination_url"] == location
    assert row["method"] == "GET"
    # event time: UTC with milliseconds, and it is the time inside the click id
    assert parse_ms(row["event_time"]) == uuid7_time_ms(click_id)

    # The click record for conversions is in Redis's hot window (its hour's hash expires
    # with the hour, 48 hours on), and the visitor's path holds it.
    r = tracking.redis.client()
    record = hot.get(r, click_id)
    assert record is not None
    assert record["campaign_id"] == "camp-1" and record["visitor_id"] == cookie.value
    assert record["sub1"] == "a b" and record["ts"] == uuid7_time_ms(click_id)
    expiry = hot.expire_at(hot.hour_of(click_id), 48)
    assert 0 < r.ttl(hot.click_hash(click_id)) <= expiry - uuid7_time_ms(click_id) // 1000
    # A new visitor's id is their first click's: that click is found by it, in no path.
    assert cookie.value == click_id
    assert hot_path(r, cookie.value, 48) == []
    assert [c["click_id"] for c in hot_clicks(r, cookie.value, 48)] == [click_id]


async def test_returning_visitor_keeps_id(tracking):
    tracking.add_link("again", campaign_id="c")
    visitor = uuid7()
    async with aiohttp.ClientSession(cookies={"vid": visitor}) as session:
        for _ in range(3):
            async with session.get(f"{tracking.base_url}/c/again", allow_redirects=False) as r:
                assert r.status == 302
                assert "Set-Cookie" not in r.headers
    tracking.wait_count("clicks", 3, "link_slug = 'again'")
    rows = tracking.sql(
        "SELECT DISTINCT visitor_id, new_visitor FROM tracker.clicks WHERE link_slug = 'again'"
    )
    assert rows == [{"visitor_id": visitor, "new_visitor": 0}]
    members = [c for _, ids in hot_path(tracking.redis.client(), visitor, 48) for c in ids]
    assert len(members) == 3


async def test_ten_thousand_concurrent_clicks_exactly_once(tracking):
    tracking.add_link("bulk", campaign_id="bulk")
    statuses = await hit_many(f"{tracking.base_url}/c/bulk?sub1=load", 10_000, concurrency=100)
    assert statuses.count(302) == 10_000
    assert tracking.wait_count("clicks", 10_000, "link_slug = 'bulk'", timeout=60) == 10_000
    distinct = tracking.sql(
        "SELECT uniqExact(click_id) AS n FROM tracker.clicks WHERE link_slug = 'bulk'"
    )
    assert distinct[0]["n"] == 10_000


async def test_pixel_records_impressions(tracking):
    tracking.add_link("pix", campaign_id="pc", affiliate_id="pa")
    async with aiohttp.ClientSession() as session:
        for query in ("slug=pix&sub1=s", "campaign_id=only-campaign", "slug=missing", ""):
            async with session.get(f"{tracking.base_url}/p.gif?{query}") as r:
                assert r.status == 200
                assert r.headers["Content-Type"] == "image/gif"
                assert (await r.read()).startswith(b"GIF89a")
        async with session.head(f"{tracking.base_url}/p.gif?slug=pix") as r:
            assert r.status == 200
    tracking.wait_count("impressions", 2, "campaign_id = 'pc'")
    rows = tracking.sql(
        "SELECT method, sub1, affiliate_id FROM tracker.impressions "
        "WHERE campaign_id = 'pc' ORDER BY method"
    )
    assert rows == [
        {"method": "GET", "sub1": "s", "affiliate_id": "pa"},
        {"method": "HEAD", "sub1": "", "affiliate_id": "pa"},
    ]
    tracking.wait_count("impressions", 1, "campaign_id = 'only-campaign'")
    reasons = tracking.sql(
        "SELECT reason FROM tracker.orphan_visits WHERE route = 'pixel' ORDER BY reason"
    )
    assert [r["reason"] for r in reasons] == ["no_link_or_campaign", "unknown_link"]


def test_admin_api_links_lifecycle(running):
    assert running.api("GET", "/api/links", token=None)[0] == 401
    assert running.api("GET", "/api/links", token="wrong")[0] == 401
    status, body = running.api(
        "POST",
        "/api/links",
        {"slug": "life", "destination": "https://a.example/", "campaign_id": "lc"},
    )
    assert status == 201 and body["status"] == "active"
    assert (
        running.api("POST", "/api/links", {"slug": "life", "destination": "https://a.example/"})[0]
        == 409
    )
    status, body = running.api("GET", "/api/links/life")
    assert status == 200 and body["campaign_id"] == "lc"
    assert "life" in [link["slug"] for link in running.api("GET", "/api/links")[1]["links"]]

    status, body = running.api("PATCH", "/api/links/life", {"destination": "https://b.example/"})
    assert status == 200 and body["destination"] == "https://b.example/"

    def location():
        return get_status_location(running.base_url + "/c/life")

    # Every edge process sees the change within its refresh interval.
    wait_until(
        lambda: all(location()[1].startswith("https://b.example/") for _ in range(8)),
        5,
        "the new destination on every edge",
    )
    assert running.api("PATCH", "/api/links/life", {"status": "disabled"})[0] == 200
    wait_until(lambda: all(location()[0] == 404 for _ in range(8)), 5, "the link disabled")
    status, body = running.api("DELETE", "/api/links/life")
    assert status == 200
    assert running.api("GET", "/api/links/life")[0] == 404

    # The mirror in ClickHouse shows the latest state of the link.
    wait_until(
        lambda: (
            running.sql("SELECT status FROM tracker.links FINAL WHERE slug = 'life'")
            == [{"status": "deleted"}]
        ),
        10,
        "links mirror to show the deletion",
    )
    row = running.sql(
        "SELECT destination, campaign_id FROM tracker.links FINAL WHERE slug = 'life'"
    )
    assert row == [{"destination": "https://b.example/", "campaign_id": "lc"}]


def test_cli_links_and_sql(running):
    tracker = running.cli

    added = tracker(
        "links", "add", "cli-link", "https://c.example/?c={click_id}", "--campaign", "cli"
    )
    assert added.returncode == 0, added.stderr
    assert tracker("links", "add", "cli-link", "https://c.example/").returncode == 1
    bad = tracker("links", "add", "bad slug!", "https://c.example/")
    assert bad.returncode == 1 and "slug" in bad.stderr
    listed = tracker("links", "list", "--format", "json")
    assert {
        "slug": "cli-link",
        "status": "active",
        "campaign_id": "cli",
        "affiliate_id": "",
        "advertiser_id": "",
        "destination": "https://c.example/?c={click_id}",
    } in (orjson.loads(listed.stdout))
    assert tracker("links", "disable", "cli-link").returncode == 0
    assert running.api("GET", "/api/links/cli-link")[1]["status"] == "disabled"

    # `tracker sql` works while the sink holds chDB, in three formats
    query = "SELECT slug, status, campaign_id FROM tracker.links FINAL WHERE slug = 'cli-link'"
    wait_until(
        lambda: (
            running.sql(query) == [{"slug": "cli-link", "status": "disabled", "campaign_id": "cli"}]
        ),
        10,
        "the mirror",
    )
    as_json = tracker("sql", query, "--format", "json")
    assert orjson.loads(as_json.stdout) == [
        {"slug": "cli-link", "status": "disabled", "campaign_id": "cli"}
    ]
    as_csv = tracker("sql", query, "--format", "csv")
    assert as_csv.stdout.splitlines() == ["slug,status,campaign_id", "cli-link,disabled,cli"]
    table = tracker("sql", query)
    assert "| cli-link | disabled | cli         |" in table.stdout, table.stdout
    assert "(1 row)" in table.stdout
    # read-only: a write through `tracker sql` is refused with the reason
    refused = tracker("sql", "DROP TABLE tracker.clicks")
    assert refused.returncode == 1 and "readonly" in refused.stderr.lower()
    assert running.sql(
        "SELECT count() AS n FROM system.tables WHERE database = 'tracker' AND name = 'clicks'"
    ) == [{"n": 1}]  # still there
    # migrations are idempotent and go through the running sink
    migrated = tracker("migrate")
    assert migrated.returncode == 0 and "up to date" in migrated.stdout
    versions = running.sql("SELECT version FROM tracker.schema_migrations ORDER BY version")
    assert [v["version"] for v in versions] == [n for n, _, _ in migrations.migration_files()]


def test_health_and_readiness(running):
    with urllib.request.urlopen(f"{running.base_url}/healthz") as r:
        assert orjson.loads(r.read()) == {"status": "ok"}

    def readiness() -> dict:
        with urllib.request.urlopen(f"{running.base_url}/readyz") as r:
            return orjson.loads(r.read())

    # the sink creates its consumer group just after its SQL endpoint answers
    body = wait_until(lambda: (b := readiness())["sink_lag"] is not None and b, 30, "sink lag")
    assert body["status"] == "ready" and isinstance(body["sink_lag"], int)


async def test_no_track_redirects_without_identifying_anyone(tracking):
    tracking.add_link("private", "https://shop.example/?v={visitor_id}", campaign_id="priv")
    async with aiohttp.ClientSession() as session:
        for url, headers in [
            (f"{tracking.base_url}/c/private?no-track=1&sub1=a", {}),
            (f"{tracking.base_url}/c/private?sub1=b", {"DNT": "1"}),
            (f"{tracking.base_url}/c/private?sub1=c", {"Sec-GPC": "1"}),
        ]:
            async with session.get(
                url,
                allow_redirects=False,
                headers={
                    **headers,
                    "Referer": "https://secret.example/",
                    "User-Agent": "Agent/1",
                },
            ) as r:
                assert r.status == 302 and "Set-Cookie" not in r.headers
                assert r.headers["Location"].startswith(
                    "https://shop.example/?v=00000000-0000-0000-0000-000000000000&click_id="
                )
    tracking.wait_count("clicks", 3, "link_slug = 'private'")
    rows = tracking.sql(
        "SELECT DISTINCT toString(visitor_id) AS v, toString(ip) AS ip, "
        "referer, user_agent FROM tracker.clicks WHERE link_slug = 'private'"
    )
    assert rows == [
        {
            "v": "00000000-0000-0000-0000-000000000000",
            "ip": "::",
            "referer": "",
            "user_agent": "Agent/1",
        }
    ]
