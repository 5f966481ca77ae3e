"""The dashboard in headless Chromium (screenshots in tests/artifacts/; the README's copies
in docs/ are taken from them) against a running service with known clicks: what a
person sees equals the API, the chart has a point per day, a click drills down, and an
affiliate's login shows nothing of another affiliate."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest

from tests.browser import screenshot
from tracker.testing import TOKEN, hit_many


@pytest.fixture(scope="module")
def seeded(running):
    running.add_link("dash-c1", campaign_id="dash-camp-1", affiliate_id="dash-aff-1")
    running.add_link("dash-c2", campaign_id="dash-camp-2", affiliate_id="dash-aff-2")
    running.add_link("dash-c3", campaign_id="dash-camp-1", affiliate_id="dash-aff-2")

    async def clicks():
        for slug, n in (("dash-c1", 3), ("dash-c2", 2), ("dash-c3", 1)):
            assert set(await hit_many(f"{running.base_url}/c/{slug}", n, concurrency=n)) == {302}

    asyncio.run(clicks())
    running.wait_count("clicks", 6, "link_slug LIKE 'dash-%'", timeout=20)
    status, key = running.api("POST", "/api/keys", {"role": "affiliate", "subject": "dash-aff-1"})
    assert status == 201
    today = datetime.now(UTC).date()
    return running, key["key"], today


async def sign_in(chromium, service, token, today):
    page = await (await chromium.profile()).new_page()
    await page.set_viewport_size({"width": 1400, "height": 1000})
    await page.goto(f"{service.base_url}/dashboard/?tz=UTC&to={today}")
    await page.fill("#key", token)
    await page.click("#login-form button")
    await page.wait_for_function("document.body.dataset.ready === '1'", timeout=30000)
    assert await page.is_hidden("#login") and await page.is_visible("#app")
    return page


async def table(page, name):
    return await page.eval_on_selector_all(
        f"#top-{name} tr.drill",
        "rows => rows.map(r => [...r.children].map(c => c.textContent))",
    )


async def test_dashboard_shows_what_the_api_says(chromium, seeded):
    service, _, today = seeded
    page = await sign_in(chromium, service, TOKEN, today)
    assert await page.text_content("#who") == "admin"
    frm = today - timedelta(days=6)
    status, api = service.api(
        "GET",
        f"/api/reports?metrics=clicks,unique_clicks,conversions&from={frm}"
        f"&to={today + timedelta(days=1)}&tz=UTC",
    )
    assert status == 200
    for name in ("clicks", "unique_clicks", "conversions"):
        raw = await page.get_attribute(f'.tile[data-metric="{name}"] .kpi-value', "data-raw")
        assert int(raw) == api["totals"][name]
    assert await page.text_content('.tile[data-metric="clicks"] .kpi-value') == "6"

    # one point per day of the 7-day period, today's the 6 clicks
    days, points = await page.evaluate(
        "() => { const o = window.trackerDashboard.charts.series.getOption();"
        " return [o.xAxis[0].data, o.series[0].data]; }"
    )
    assert days == [str(frm + timedelta(days=i)) for i in range(7)]
    assert points == [0, 0, 0, 0, 0, 0, 6]

    assert await table(page, "affiliate") == [
        ["dash-aff-1", "3", "0", "0.00%", "0.00"],
        ["dash-aff-2", "3", "0", "0.00%", "0.00"],
    ]
    await screenshot(page, "dashboard-admin")

    # drill down: a click on a campaign filters every panel
    await page.click('#top-campaign tr.drill[data-value="dash-camp-1"]')
    await page.wait_for_function("document.body.dataset.ready === '2'", timeout=30000)
    assert await page.text_content('#filters .chip[data-field="campaign"]') is not None
    assert await table(page, "affiliate") == [
        ["dash-aff-1", "3", "0", "0.00%", "0.00"],
        ["dash-aff-2", "1", "0", "0.00%", "0.00"],
    ]
    assert [r[0] for r in await table(page, "link")] == ["dash-c1", "dash-c3"]
    assert await page.text_content('.tile[data-metric="clicks"] .kpi-value') == "4"
    await screenshot(page, "dashboard-drilldown")


async def test_an_affiliate_sees_only_its_own(chromium, seeded):
    service, key, today = seeded
    page = await sign_in(chromium, service, key, today)
    assert await page.text_content("#who") == "affiliate dash-aff-1"
    assert await page.text_content('.tile[data-metric="clicks"] .kpi-value') == "3"
    assert await page.is_hidden("#live")
    assert [r[0] for r in await table(page, "affiliate")] == ["dash-aff-1"]
    assert [r[0] for r in await table(page, "link")] == ["dash-c1"]
    text = await page.inner_text("body")
    assert "dash-aff-2" not in text and "dash-camp-2" not in text and "dash-c3" not in text
    assert "Revenue" not in text  # affiliates see their payout, not what the advertiser pays
    await screenshot(page, "dashboard-affiliate")


def test_live_click_counter(seeded):
    service, key, _ = seeded
    status, body = service.api("GET", "/api/live")
    assert status == 200 and body["clicks_total"] >= 6 and body["at_ms"] > 0
    assert service.api("GET", "/api/live", token=key)[0] == 403  # the programme's volume


async def test_a_wrong_key_stays_at_the_login(chromium, seeded):
    service, _, today = seeded
    page = await (await chromium.profile()).new_page()
    await page.goto(f"{service.base_url}/dashboard")
    await page.fill("#key", "trk_0123456789abcdef_" + "x" * 43)
    await page.click("#login-form button")
    await page.wait_for_function("document.getElementById('login-error').textContent !== ''")
    assert await page.is_hidden("#app")
