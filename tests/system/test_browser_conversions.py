"""Browser conversions over HTTP (what the tag sends): origins, CORS, dedup with a later
S2S postback, and how /t.js is served. The real-browser runs are in test_browser_tag.py."""

from __future__ import annotations

import gzip
import urllib.request
from urllib.parse import urlencode

import aiohttp
import orjson
import pytest

from tests.system.test_postbacks import ADV_TOKEN, browser, click, postback
from tracker import hot
from tracker.edge.clicks import PIXEL
from tracker.edge.tag import tag
from tracker.testing import wait_until

SHOP = "https://shop.example"


@pytest.fixture(scope="module")
def svc(running):
    for adv, origins in (("shop", [SHOP]), ("open-shop", [])):
        status, body = running.api("POST", "/api/advertisers", {"id": adv, "token": ADV_TOKEN})
        assert status == 201, body
        status, body = running.api("PATCH", f"/api/advertisers/{adv}", {"allowed_origins": origins})
        assert status == 200, body
    running.add_link("bc-a", campaign_id="camp-a", affiliate_id="aff-a", advertiser_id="shop")
    return running


async def send(session, base, headers=None, method="POST", **fields):
    fields.setdefault("advertiser", "shop")
    if method == "GET":
        request = session.get(f"{base}/t/conversion?{urlencode(fields)}", headers=headers)
    else:
        request = session.post(f"{base}/t/conversion", data=fields, headers=headers)
    async with request as r:
        body = await r.read()
        return r.status, r.headers, body


async def test_allowed_origin_is_recorded_as_browser_and_answered_with_cors(svc):
    async with browser() as session:
        click_id = await click(session, svc.base_url, "bc-a")
        status, headers, body = await send(
            session,
            svc.base_url,
            {"Origin": SHOP},
            click_id=click_id,
            txid="b-1",
            amount="10.50",
            currency="EUR",
            status="approved",  # a browser may not approve: stored as pending
        )
    assert status == 200, body
    assert headers["Access-Control-Allow-Origin"] == SHOP
    assert headers["Access-Control-Allow-Credentials"] == "true"
    assert headers["Cache-Control"] == "no-store"
    svc.wait_count("conversions", 1, "txid = 'b-1'")
    row = svc.sql(
        "SELECT source, status, toString(click_id) AS c, attributed, toString(amount) AS a "
        "FROM tracker.conversions WHERE txid = 'b-1'"
    )[0]
    assert row == {
        "source": "browser",
        "status": "pending",
        "c": click_id,
        "attributed": 1,
        "a": "10.5",
    }


@pytest.mark.parametrize(
    ("headers", "reason"),
    [
        ({"Origin": "https://evil.example"}, "origin_not_allowed"),
        ({"Referer": "https://evil.example/thanks"}, "origin_not_allowed"),
        ({"Origin": "http://shop.example"}, "origin_not_allowed"),
        ({}, "origin_missing"),
    ],
)
async def test_other_origins_are_refused_without_cors(svc, headers, reason):
    async with browser() as session:
        status, answer_headers, body = await send(
            session, svc.base_url, headers, txid=f"refused-{reason}", amount="1"
        )
    assert status == 403 and reason.encode() in body
    assert "Access-Control-Allow-Origin" not in answer_headers
    label = f'tracker_postback_rejections_total{{reason="{reason}"}}'
    wait_until(lambda: label in metrics_text(svc), 10, f"{reason} to be counted")


def metrics_text(svc) -> str:
    with urllib.request.urlopen(f"{svc.base_url}/metrics", timeout=10) as r:
        return r.read().decode()


async def test_referer_stands_in_for_a_missing_origin(svc):
    async with browser() as session:
        status, _, body = await send(
            session, svc.base_url, {"Referer": f"{SHOP}/thanks?o=2"}, txid="b-ref", amount="2"
        )
    assert status == 200 and b'"accepted"' in body


async def test_without_an_allowlist_any_site_may_report(svc):
    async with browser() as session:
        status, headers, body = await send(
            session,
            svc.base_url,
            {"Origin": "http://anywhere.example"},
            advertiser="open-shop",
            txid="b-open",
        )
    assert status == 200 and b'"accepted"' in body
    assert headers["Access-Control-Allow-Origin"] == "http://anywhere.example"


async def test_image_request_gets_a_gif_either_way(svc):
    async with browser() as session:
        ok = await send(session, svc.base_url, {"Referer": f"{SHOP}/t"}, method="GET", txid="b-img")
        refused = await send(
            session, svc.base_url, {"Referer": "https://evil.example/"}, method="GET", txid="x"
        )
    assert ok[0] == refused[0] == 200 and ok[2] == refused[2] == PIXEL
    assert svc.wait_count("conversions", 1, "txid = 'b-img'") == 1
    svc.wait_behind_marker()
    assert svc.count("conversions", "txid = 'x' AND advertiser_id = 'shop'") == 0


async def test_preflight_is_answered(svc):
    async with (
        aiohttp.ClientSession() as session,
        session.options(
            f"{svc.base_url}/t/conversion",
            headers={"Origin": SHOP, "Access-Control-Request-Method": "POST"},
        ) as r,
    ):
        assert r.status == 204
        assert r.headers["Access-Control-Allow-Origin"] == SHOP
        assert "POST" in r.headers["Access-Control-Allow-Methods"]


async def test_a_later_postback_is_the_same_conversion_and_approves_it(svc):
    async with browser() as session:
        click_id = await click(session, svc.base_url, "bc-a")
        status, _, body = await send(
            session, svc.base_url, {"Origin": SHOP}, click_id=click_id, txid="b-s2s", amount="30"
        )
        assert status == 200
        conversion_id = orjson.loads(body)["conversion_id"]
        code, same = await postback(session, svc.base_url, click_id=click_id, txid="b-s2s")
        assert (code, same["status"], same["conversion_id"]) == (200, "duplicate", conversion_id)
        code, approved = await postback(
            session, svc.base_url, click_id=click_id, txid="b-s2s", status="approved"
        )
        assert (code, approved["status"], approved["conversion_id"]) == (
            200,
            "accepted",
            conversion_id,
        )
        # a browser report after it (the thank-you page opened again) changes nothing
        status, _, body = await send(
            session, svc.base_url, {"Origin": SHOP}, click_id=click_id, txid="b-s2s"
        )
        assert status == 200 and orjson.loads(body)["status"] == "duplicate"
    assert svc.wait_count("conversions", 2, "txid = 'b-s2s'") == 2
    rows = svc.sql(
        "SELECT source, status, toString(conversion_id) AS id FROM tracker.conversions "
        "WHERE txid = 'b-s2s' ORDER BY event_time"
    )
    assert rows == [
        {"source": "browser", "status": "pending", "id": conversion_id},
        {"source": "postback", "status": "approved", "id": conversion_id},
    ]


async def test_tag_is_served_versioned_cacheable_and_gzipped(svc):
    t = tag()
    async with aiohttp.ClientSession(auto_decompress=False) as session:
        async with session.get(f"{svc.base_url}/t.js?v={t.version}") as r:
            assert r.status == 200 and r.headers["Content-Encoding"] == "gzip"
            assert gzip.decompress(await r.read()) == t.body
            assert "immutable" in r.headers["Cache-Control"]
            assert r.headers["Content-Type"].startswith("application/javascript")
        async with session.get(
            f"{svc.base_url}/t.js", headers={"Accept-Encoding": "identity"}
        ) as r:
            assert await r.read() == t.body and r.headers["ETag"] == t.etag
            assert r.headers["Cache-Control"] == "public, max-age=3600"
        async with session.get(f"{svc.base_url}/t.js", headers={"If-None-Match": t.etag}) as r:
            assert r.status == 304


async def test_admin_api_gives_the_script_tags(svc):
    status, body = svc.api("GET", "/api/advertisers/shop/tag")
    assert status == 200 and body["version"] == tag().version
    assert f"/t.js?v={tag().version}" in body["every_page"]
    status, body = svc.api("PATCH", "/api/advertisers/shop", {"allowed_origins": ["nope"]})
    assert status == 400 and body["error"] == "invalid_advertiser"
    status, body = svc.api("PATCH", "/api/advertisers/nobody", {"click_param": "ref"})
    assert status == 404


async def test_without_a_stored_click_id_the_trackers_cookie_names_the_visitor(svc):
    """Where the browser sends the tracker's cookie (SameSite=None in Chrome), a conversion
    with no stored click id is credited to that visitor's clicks."""
    async with browser() as session:  # keeps the tracker's visitor cookie
        click_id = await click(session, svc.base_url, "bc-a")
        redis = svc.redis.client()
        wait_until(lambda: hot.get(redis, click_id), 10, "the click in Redis")
        status, _, body = await send(session, svc.base_url, {"Origin": SHOP}, txid="b-cookie")
    answer = orjson.loads(body)
    assert (status, answer["status"], answer["attributed"]) == (200, "accepted", True)
    svc.wait_count("conversions", 1, "txid = 'b-cookie'")
    row = svc.sql("SELECT toString(click_id) AS c FROM tracker.conversions WHERE txid = 'b-cookie'")
    assert row == [{"c": click_id}]
