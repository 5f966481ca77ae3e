"""The first-party tag in a real browser (headless Chromium), across two sites.

The tracker runs on 127.0.0.1 and the merchant's landing and thank-you pages on
localhost: two different sites to the browser, so the tracker's own cookie is a
third-party cookie on the merchant's pages, as in production.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from urllib.parse import parse_qs, urlsplit

import pytest
from aiohttp import web

from tests.browser import screenshot, site
from tracker import redis_keys as K
from tracker.edge.tag import tag
from tracker.testing import Service

MODELS = {"first_click", "last_click", "linear", "time_decay", "position_based"}
_numbers = itertools.count()


def merchant_routes(tracker: str, advertiser: str) -> dict:
    """The merchant's two pages, each with the tag (the thank-you page also reports)."""
    src = f"{tracker}/t.js?v={tag().version}"

    async def landing(request: web.Request) -> web.Response:
        return web.Response(
            content_type="text/html",
            text=f"""<!doctype html><title>Shop</title><h1>Welcome to the shop</h1>
<script async src="{src}" data-advertiser="{advertiser}"></script>""",
        )

    async def thanks(request: web.Request) -> web.Response:
        q = request.query
        if "auto" in q:  # data attributes only (beside the site-wide tag): no JavaScript
            return web.Response(
                content_type="text/html",
                text=f"""<!doctype html><title>Thanks</title><h1>Thank you</h1>
<script async src="{src}" data-advertiser="{advertiser}"></script>
<script async src="{src}" data-advertiser="{advertiser}" data-txid="{q["txid"]}"
 data-amount="{q["amount"]}" data-currency="EUR" data-event="sale"></script>""",
            )
        return web.Response(
            content_type="text/html",
            text=f"""<!doctype html><title>Thanks</title><h1>Thank you for your order</h1>
<script>window.tracker = {{q: [], conversion: function (c) {{ this.q.push(c); }}}};</script>
<script src="{src}" data-advertiser="{advertiser}"></script>
<script>
window.answer = tracker.conversion({{txid: "{q["txid"]}", amount: "{q["amount"]}",
                                     currency: "EUR", event: "sale"}});
</script>""",
        )

    return {"/landing": landing, "/thanks": thanks}


@asynccontextmanager
async def merchant_site(svc, allowed: list[str] | None = None) -> AsyncIterator[tuple[str, str]]:
    """A merchant's site on localhost and its advertiser, which allows browser conversions
    from that site only (or from `allowed`): yields (site URL, advertiser id)."""
    advertiser = f"merchant-{next(_numbers)}"
    async with site(merchant_routes(svc.base_url, advertiser)) as merchant:
        status, body = svc.api("POST", "/api/advertisers", {"id": advertiser})
        assert status == 201, body
        origins = [merchant] if allowed is None else allowed
        status, body = svc.api(
            "PATCH", f"/api/advertisers/{advertiser}", {"allowed_origins": origins}
        )
        assert status == 200 and body["allowed_origins"] == origins, body
        time.sleep(0.6)  # every edge process reloads advertisers within 0.2 s
        yield merchant, advertiser


def new_link(svc, merchant: str, advertiser: str, affiliate: str) -> str:
    slug = f"tag-{next(_numbers)}"
    svc.add_link(
        slug,
        destination=f"{merchant}/landing",
        advertiser_id=advertiser,
        campaign_id="camp-tag",
        affiliate_id=affiliate,
    )
    return slug


async def land(page, tracker: str, slug: str) -> str:
    """Click the tracking link; the landing page's tag keeps the click id. Returns it."""
    await page.goto(f"{tracker}/c/{slug}")
    assert page.url.split("?")[0].endswith("/landing")
    click_id = parse_qs(urlsplit(page.url).query)["click_id"][0]
    await page.wait_for_function("window.tracker && window.tracker.clickId()")
    assert await page.evaluate("tracker.clickId()") == click_id
    await page.goto("about:blank")  # the visitor leaves, and comes back later
    return click_id


def tracker_cookie_sent(page) -> asyncio.Future:
    """Resolves, once a conversion has been sent, to whether each carried the tracker's
    visitor cookie."""
    sent: list[bool] = []
    done: asyncio.Future = asyncio.get_running_loop().create_future()

    async def seen(request) -> None:
        if "/t/conversion" in request.url:
            headers = await request.all_headers()
            sent.append("vid=" in headers.get("cookie", ""))
            if not done.done():
                done.set_result(sent)

    page.on("request", seen)
    return done


async def convert(page, merchant: str, txid: str, amount: str = "42.50") -> dict:
    await page.goto(f"{merchant}/thanks?txid={txid}&amount={amount}")
    return await page.evaluate("window.answer")


def assert_attributed(svc, txid: str, click_id: str, affiliate: str) -> None:
    svc.wait_count("conversions", 1, f"txid = '{txid}'")
    row = svc.sql(
        "SELECT toString(conversion_id) AS id, toString(click_id) AS click_id, affiliate_id, "
        "attributed, source, status, toString(amount) AS amount FROM tracker.conversions "
        f"WHERE txid = '{txid}'"
    )[0]
    assert (row["click_id"], row["affiliate_id"], row["attributed"]) == (click_id, affiliate, 1)
    assert (row["source"], row["status"]) == ("browser", "pending")
    svc.wait_count("attribution_credits", len(MODELS), f"conversion_id = '{row['id']}'")
    credits = svc.sql(
        "SELECT model, toString(click_id) AS click_id, weight FROM tracker.attribution_credits "
        f"WHERE conversion_id = '{row['id']}'"
    )
    assert {c["model"] for c in credits} == MODELS
    assert {(c["click_id"], c["weight"]) for c in credits} == {(click_id, 1.0)}


@pytest.mark.parametrize("mode", ["default", "third_party_cookies_blocked", "local_storage_only"])
async def test_click_then_conversion_on_another_site_is_attributed(running, chromium, mode):
    tracker = running.base_url
    async with merchant_site(running) as (merchant, advertiser):
        slug = new_link(running, merchant, advertiser, f"aff-{mode}")
        profile = await chromium.profile(block_third_party_cookies=mode != "default")
        page = await profile.new_page()
        if mode == "local_storage_only":  # the merchant's site may not set cookies
            cdp = await profile.new_cdp_session(page)
            await cdp.send("Emulation.setDocumentCookieDisabled", {"disabled": True})
        click_id = await land(page, tracker, slug)
        cookies = tracker_cookie_sent(page)

        answer = await convert(page, merchant, f"order-{mode}")
        await screenshot(page, f"tag-thanks-{mode}")
        assert answer["status"] == "accepted" and answer["attributed"], answer
        site_cookies = {c["name"] for c in await profile.cookies(merchant)}
        if mode == "local_storage_only":
            assert await page.evaluate("document.cookie") == ""
            assert "_tk_click" not in site_cookies
            assert click_id in await page.evaluate("localStorage.getItem('_tk_click')")
        else:
            assert "_tk_click" in site_cookies
        # The tracker's own cookie (SameSite=Lax by default) never reached it: the tag's
        # first-party click id did the work.
        assert await cookies == [False]
        assert_attributed(running, f"order-{mode}", click_id, f"aff-{mode}")


async def test_two_visitors_in_two_profiles_are_never_mixed_up(running, chromium):
    tracker = running.base_url
    async with merchant_site(running) as (merchant, advertiser):
        slugs = [new_link(running, merchant, advertiser, aff) for aff in ("aff-ann", "aff-bob")]
        ann = await (await chromium.profile()).new_page()
        bob = await (await chromium.profile()).new_page()
        ann_click = await land(ann, tracker, slugs[0])
        bob_click = await land(bob, tracker, slugs[1])
        # Bob buys first, then Ann: each conversion carries its own browser's click.
        assert (await convert(bob, merchant, "order-bob"))["status"] == "accepted"
        assert (await convert(ann, merchant, "order-ann"))["status"] == "accepted"
        assert ann_click != bob_click
        assert_attributed(running, "order-bob", bob_click, "aff-bob")
        assert_attributed(running, "order-ann", ann_click, "aff-ann")


async def test_conversion_from_a_disallowed_origin_is_refused(running, chromium):
    tracker = running.base_url
    allowed = ["https://shop.example"]
    async with merchant_site(running, allowed=allowed) as (merchant, adv):
        slug = new_link(running, merchant, adv, "aff-refused")
        page = await (await chromium.profile()).new_page()
        await land(page, tracker, slug)
        answer = await convert(page, merchant, "order-refused")
        # The server refused it and sent no CORS header: the page cannot read the reply.
        assert answer == {"status": "unknown", "reason": "network_or_origin"}
        assert not running.redis.client().exists(K.conversion_key(adv, "order-refused"))
        running.wait_behind_marker()  # the sink would have stored it by now
        assert running.count("conversions", "txid = 'order-refused'") == 0


TRANSPORTS = {
    # what the browser lacks -> what the tag falls back to (Playwright's resource type)
    "fetch": ("", "fetch"),
    "beacon": ("window.fetch = undefined;", "ping"),
    "image": ("window.fetch = undefined; delete Navigator.prototype.sendBeacon;", "image"),
}


@pytest.mark.parametrize("transport", sorted(TRANSPORTS))
async def test_each_transport_and_the_data_attributes(running, chromium, transport):
    """The thank-you page with data attributes only, in browsers without fetch and without
    sendBeacon: the tag falls back to sendBeacon, then to an image."""
    tracker = running.base_url
    disable, resource_type = TRANSPORTS[transport]
    async with merchant_site(running) as (merchant, advertiser):
        slug = new_link(running, merchant, advertiser, f"aff-{transport}")
        profile = await chromium.profile()
        if disable:
            await profile.add_init_script(disable)
        page = await profile.new_page()
        click_id = await land(page, tracker, slug)
        sent = []
        page.on(
            "request",
            lambda r: sent.append((r.method, r.resource_type)) if "/t/conversion" in r.url else 0,
        )
        txid = f"order-auto-{transport}"
        await page.goto(f"{merchant}/thanks?auto=1&txid={txid}&amount=7.25")
        assert_attributed(running, txid, click_id, f"aff-{transport}")
        method = "GET" if transport == "image" else "POST"
        assert sent == [(method, resource_type)]


async def test_tracker_cookie_cross_site_with_samesite_none(tmp_path, redis_server, chromium):
    """With `cookie.samesite = None` and `secure = true`, Chromium sends the tracker's own
    cookie with the conversion from the merchant's page, unless third-party cookies are
    blocked; the tag attributes the conversion either way."""
    svc = Service(
        tmp_path / "svc", redis_server, TRACKER_COOKIE_SAMESITE="None", TRACKER_COOKIE_SECURE="1"
    )
    try:
        svc.serve()
        async with merchant_site(svc) as (merchant, advertiser):
            for blocked in (False, True):
                affiliate = f"aff-none-{blocked}"
                slug = new_link(svc, merchant, advertiser, affiliate)
                page = await (await chromium.profile(block_third_party_cookies=blocked)).new_page()
                click_id = await land(page, svc.base_url, slug)
                cookies = tracker_cookie_sent(page)
                answer = await convert(page, merchant, f"order-none-{blocked}")
                assert answer["status"] == "accepted" and answer["attributed"], answer
                assert await cookies == [not blocked]
                assert_attributed(svc, f"order-none-{blocked}", click_id, affiliate)
    finally:
        svc.stop_all()
