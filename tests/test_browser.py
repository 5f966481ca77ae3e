"""The headless Chromium fixture itself: profiles are separate, and blocking third-party
cookies takes effect (other browser tests rely on both)."""

from __future__ import annotations

from aiohttp import web

from tests.browser import screenshot, site

PAGE = "<!doctype html><title>{title}</title><h1>{title}</h1>"


async def set_cookie(request: web.Request) -> web.Response:
    response = web.Response(text=PAGE.format(title="tracker"), content_type="text/html")
    # SameSite=None needs Secure; browsers accept Secure cookies on loopback over http.
    response.headers["Set-Cookie"] = "seen=1; Path=/; SameSite=None; Secure; Max-Age=600"
    return response


async def echo_cookie(request: web.Request) -> web.Response:
    return web.json_response(
        {"cookie": request.headers.get("Cookie", "")},
        headers={
            "Access-Control-Allow-Origin": request.headers.get("Origin", "*"),
            "Access-Control-Allow-Credentials": "true",
        },
    )


async def merchant_page(request: web.Request) -> web.Response:
    return web.Response(text=PAGE.format(title="merchant"), content_type="text/html")


async def cross_site_cookie(context, tracker: str, merchant: str) -> str:
    """What the tracker's cookie looks like from a fetch on the merchant's page."""
    page = await context.new_page()
    await page.goto(f"{tracker}/set")
    await page.goto(f"{merchant}/page")
    answer = await page.evaluate(
        "url => fetch(url, {credentials: 'include'}).then(r => r.json())", f"{tracker}/echo"
    )
    await screenshot(page, "fixture-merchant")
    return answer["cookie"]


async def test_third_party_cookies_flow_unless_blocked(chromium):
    async with (
        site({"/set": set_cookie, "/echo": echo_cookie}, host="127.0.0.1") as tracker,
        site({"/page": merchant_page}) as merchant,
    ):
        allowed = await chromium.profile()
        blocked = await chromium.profile(block_third_party_cookies=True)
        assert await cross_site_cookie(allowed, tracker, merchant) == "seen=1"
        assert await cross_site_cookie(blocked, tracker, merchant) == ""


async def test_profiles_share_no_cookies(chromium):
    async with site({"/set": set_cookie, "/echo": echo_cookie}, host="127.0.0.1") as tracker:
        first, second = await chromium.profile(), await chromium.profile()
        page = await first.new_page()
        await page.goto(f"{tracker}/set")
        assert [c["name"] for c in await first.cookies()] == ["seen"]
        assert await second.cookies() == []
