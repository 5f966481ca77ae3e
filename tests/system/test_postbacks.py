"""Conversions end to end: postbacks and pixels, dedup, lifecycle, signing, credits."""

from __future__ import annotations

import asyncio
import time
from decimal import Decimal
from urllib.parse import urlencode

import aiohttp
import orjson
import pytest

from tracker import hot
from tracker.signing import SIGNATURE_HEADER, TIMESTAMP_HEADER, sign
from tracker.testing import BROWSER_UA, Service, wait_until

MODELS = ["first_click", "last_click", "linear", "time_decay", "position_based"]
ADV_TOKEN = "adv-token-0123456789abcdef"


@pytest.fixture(scope="module")
def svc(running):
    status, body = running.api("POST", "/api/advertisers", {"id": "shop", "token": ADV_TOKEN})
    assert status == 201 and body["token"] == ADV_TOKEN
    running.add_link("conv-a", campaign_id="camp-a", affiliate_id="aff-a", advertiser_id="shop")
    running.add_link("conv-b", campaign_id="camp-b", affiliate_id="aff-b")
    running.add_link("conv-c", campaign_id="camp-c", affiliate_id="aff-c")
    return running


def browser() -> aiohttp.ClientSession:
    """A client that keeps the visitor cookie (aiohttp refuses cookies of IP hosts unless
    told otherwise)."""
    return aiohttp.ClientSession(
        cookie_jar=aiohttp.CookieJar(unsafe=True), headers={"User-Agent": BROWSER_UA}
    )


async def click(session: aiohttp.ClientSession, base: str, slug: str) -> str:
    async with session.get(f"{base}/c/{slug}", allow_redirects=False) as r:
        assert r.status == 302
        return r.headers["Location"].rsplit("click_id=", 1)[1]


async def postback(session, base: str, method: str = "GET", headers=None, **params):
    params.setdefault("advertiser", "shop")
    params.setdefault("token", ADV_TOKEN)
    if method == "GET":
        request = session.get(f"{base}/postback?{urlencode(params)}", headers=headers)
    else:
        request = session.post(f"{base}/postback", data=params, headers=headers)
    async with request as r:
        return r.status, await r.json()


def credits(svc: Service, conversion_id: str) -> list[dict]:
    return svc.sql(
        "SELECT model, toString(click_id) AS click_id, campaign_id, position, path_length, "
        "weight, toString(credited_amount) AS credited "
        f"FROM tracker.attribution_credits WHERE conversion_id = '{conversion_id}' "
        "ORDER BY model, position"
    )


async def test_postback_attributes_a_three_click_journey(svc):
    async with browser() as session:
        ids = [
            await click(session, svc.base_url, slug) for slug in ("conv-b", "conv-c", "conv-a")
        ]  # one visitor (cookie jar)
        status, body = await postback(
            session,
            svc.base_url,
            click_id=ids[-1],
            txid="order-1",
            amount="100.00",
            currency="EUR",
            event="sale",
        )
    assert status == 200, body
    assert body["status"] == "accepted" and body["reason"] is None and body["attributed"]
    conversion_id = body["conversion_id"]

    svc.wait_count("conversions", 1, f"conversion_id = '{conversion_id}'")
    row = svc.sql(
        "SELECT advertiser_id, txid, event, status, toString(amount) AS amount, "
        "currency, toString(click_id) AS click_id, campaign_id, affiliate_id, "
        "attributed, source FROM tracker.conversions "
        f"WHERE conversion_id = '{conversion_id}'"
    )[0]
    assert row == {
        "advertiser_id": "shop",
        "txid": "order-1",
        "event": "sale",
        "status": "pending",
        "amount": "100",
        "currency": "EUR",
        "click_id": ids[-1],
        "campaign_id": "camp-a",
        "affiliate_id": "aff-a",
        "attributed": 1,
        "source": "postback",
    }

    svc.wait_count("attribution_credits", 3 + 1 + 1 + 3 + 3, f"conversion_id = '{conversion_id}'")
    rows = credits(svc, conversion_id)
    by_model = {m: [r for r in rows if r["model"] == m] for m in MODELS}
    for model, model_rows in by_model.items():
        assert sum(r["weight"] for r in model_rows) == pytest.approx(1.0, abs=1e-12), model
        assert sum(Decimal(r["credited"]) for r in model_rows) == Decimal("100"), model
    assert [r["campaign_id"] for r in by_model["first_click"]] == ["camp-b"]
    assert [r["campaign_id"] for r in by_model["last_click"]] == ["camp-a"]
    assert [r["credited"] for r in by_model["linear"]] == ["33.34", "33.33", "33.33"]
    assert [r["credited"] for r in by_model["position_based"]] == ["40", "20", "40"]
    assert [r["click_id"] for r in by_model["linear"]] == ids


async def test_named_click_in_the_middle_ends_the_path(svc):
    async with browser() as session:
        ids = [await click(session, svc.base_url, slug) for slug in ("conv-b", "conv-c", "conv-b")]
        status, body = await postback(
            session, svc.base_url, cid=ids[1], order_id="order-mid", revenue="9.99"
        )  # aliases
    assert status == 200 and body["status"] == "accepted"
    svc.wait_count(
        "attribution_credits", 2 + 1 + 1 + 2 + 2, f"conversion_id = '{body['conversion_id']}'"
    )
    rows = credits(svc, body["conversion_id"])
    assert {r["click_id"] for r in rows} == set(ids[:2])  # the later click is not credited
    assert {r["path_length"] for r in rows} == {2}


async def test_fifty_concurrent_identical_postbacks_accept_one(svc):
    async with browser() as session:
        click_id = await click(session, svc.base_url, "conv-a")

        async def until_answered():
            """As an advertiser's server does: a 503 (Redis slow to answer, on a loaded
            machine) is sent again; whether the first try was stored or not, exactly
            one of all the tries may be accepted."""
            for _ in range(50):
                code, body = await postback(
                    session, svc.base_url, click_id=click_id, txid="dup-1", amount="5"
                )
                if code != 503:
                    return code, body
                await asyncio.sleep(0.2)
            raise AssertionError("the postback kept answering 503")

        results = await asyncio.gather(*(until_answered() for _ in range(50)))
    assert all(code == 200 for code, _ in results), results
    statuses = [body["status"] for _, body in results]
    assert statuses.count("accepted") == 1 and statuses.count("duplicate") == 49
    assert len({body["conversion_id"] for _, body in results}) == 1
    assert svc.wait_count("conversions", 1, "txid = 'dup-1'") == 1


async def test_status_lifecycle(svc):
    async with browser() as session:
        click_id = await click(session, svc.base_url, "conv-a")

        async def report(status, **extra):
            return await postback(
                session,
                svc.base_url,
                click_id=click_id,
                txid="life-1",
                amount="20",
                status=status,
                **extra,
            )

        code, first = await report("pending")
        assert (code, first["status"]) == (200, "accepted")
        assert (await report("approved"))[1]["status"] == "accepted"
        assert (await report("approved"))[1]["status"] == "duplicate"
        code, body = await report("pending")
        assert (code, body["status"], body["reason"]) == (409, "rejected", "illegal_transition")
        code, body = await report("rejected")
        assert (code, body["reason"]) == (409, "illegal_transition")
        code, body = await report("reversed")
        assert (code, body["status"]) == (200, "accepted")
        assert body["conversion_id"] == first["conversion_id"]
        code, body = await postback(
            session, svc.base_url, click_id=click_id, txid="life-new", status="reversed"
        )
        assert (code, body["reason"]) == (409, "unknown_transaction")

    assert svc.wait_count("conversions", 3, "txid = 'life-1'") == 3
    rows = svc.sql(
        "SELECT status, previous_status FROM tracker.conversions "
        "WHERE txid = 'life-1' ORDER BY event_time"
    )
    assert rows == [
        {"status": "pending", "previous_status": ""},
        {"status": "approved", "previous_status": "pending"},
        {"status": "reversed", "previous_status": "approved"},
    ]
    svc.wait_behind_marker()
    # credits are written once, for the first report
    assert svc.count("attribution_credits", f"conversion_id = '{first['conversion_id']}'") == 5


async def test_approved_and_rejected_racing_one_wins_the_other_is_a_409(svc):
    """Two different status changes for one pending conversion at the same moment, on
    separate connections (so often on both edge processes): exactly one is accepted."""
    async with browser() as session:
        click_id = await click(session, svc.base_url, "conv-a")
        for n in range(15):
            code, _ = await postback(
                session, svc.base_url, click_id=click_id, txid=f"race-{n}", amount="8"
            )
            assert code == 200

    async def change(n: int, status: str):
        async with aiohttp.ClientSession(headers={"User-Agent": BROWSER_UA}) as own:
            return status, *await postback(
                own, svc.base_url, click_id=click_id, txid=f"race-{n}", status=status
            )

    winners = {}
    for n in range(15):
        results = await asyncio.gather(change(n, "approved"), change(n, "rejected"))
        won = [status for status, code, body in results if code == 200]
        lost = [(code, body["reason"]) for _, code, body in results if code != 200]
        assert len(won) == 1 and len(lost) == 1, results
        assert lost[0] in ((409, "illegal_transition"), (409, "concurrent_update")), results
        winners[f"race-{n}"] = won[0]
    assert svc.wait_count("conversions", 30, "txid LIKE 'race-%'") == 30
    svc.wait_behind_marker()
    rows = svc.sql(
        "SELECT txid, groupArray(status) AS statuses FROM (SELECT txid, status FROM "
        "tracker.conversions WHERE txid LIKE 'race-%' ORDER BY event_time) GROUP BY txid"
    )
    assert {r["txid"]: r["statuses"] for r in rows} == {
        txid: ["pending", won] for txid, won in winners.items()
    }


async def test_unknown_click_is_recorded_unattributed(svc):
    async with browser() as session:
        status, body = await postback(
            session,
            svc.base_url,
            txid="lost-1",
            amount="3",
            click_id="01900000-0000-7000-8000-000000000000",
        )
    assert status == 200 and body["status"] == "accepted"
    assert body["reason"] == "unknown_or_expired_click" and body["attributed"] is False
    svc.wait_count("conversions", 1, "txid = 'lost-1'")
    assert svc.sql(
        "SELECT attributed, unattributed_reason FROM tracker.conversions WHERE txid = 'lost-1'"
    ) == [{"attributed": 0, "unattributed_reason": "unknown_or_expired_click"}]
    svc.wait_behind_marker()
    assert svc.count("attribution_credits", f"conversion_id = '{body['conversion_id']}'") == 0


async def test_conversion_pixel_uses_the_visitor_cookie(svc):
    async with browser() as session:
        await click(session, svc.base_url, "conv-b")
        last = await click(session, svc.base_url, "conv-c")
        # a visitor takes longer to buy than the edge to flush the click to Redis (5 ms)
        redis = svc.redis.client()
        await asyncio.to_thread(wait_until, lambda: hot.get(redis, last), 10, "the click in Redis")
        query = urlencode(
            {
                "event": "sale",
                "txid": "pix-1",
                "amount": "12.50",
                "currency": "USD",
                "advertiser": "shop",
            }
        )
        async with session.get(f"{svc.base_url}/p.gif?{query}") as r:
            assert r.status == 200 and (await r.read()).startswith(b"GIF89a")
    svc.wait_count("conversions", 1, "txid = 'pix-1'")
    row = svc.sql(
        "SELECT toString(click_id) AS click_id, source, attributed, "
        "conversion_id FROM tracker.conversions WHERE txid = 'pix-1'"
    )[0]
    assert (row["click_id"], row["source"], row["attributed"]) == (last, "pixel", 1)
    svc.wait_count(
        "attribution_credits", 2 + 1 + 1 + 2 + 2, f"conversion_id = '{row['conversion_id']}'"
    )


async def test_signed_postbacks(svc):
    async with browser() as session:
        click_id = await click(session, svc.base_url, "conv-a")

        async def signed(txid, ts=None, key=ADV_TOKEN, tamper=False):
            params = {"advertiser": "shop", "click_id": click_id, "txid": txid, "amount": "7"}
            query = urlencode(params)
            body = b""
            ts = str(int(time.time()) if ts is None else ts)
            signature = sign(key, ts, "POST", "/postback", query, body)
            if tamper:
                query = query.replace("amount=7", "amount=700")
            async with session.post(
                f"{svc.base_url}/postback?{query}",
                data=body,
                headers={
                    TIMESTAMP_HEADER: ts,
                    SIGNATURE_HEADER: signature,
                },
            ) as r:
                return r.status, await r.json()

        assert (await signed("sig-1"))[1]["status"] == "accepted"
        assert await signed("sig-2", key="not-the-token-000000") == (
            401,
            {"status": "rejected", "reason": "bad_signature", "conversion_id": None},
        )
        assert (await signed("sig-3", tamper=True))[1]["reason"] == "bad_signature"
        assert (await signed("sig-4", ts=int(time.time()) - 3600))[1]["reason"] == (
            "stale_signature"
        )
        # from the future: refused as well (the exact edges: tests/edge/test_postback.py)
        assert (await signed("sig-8", ts=int(time.time()) + 400))[1]["reason"] == (
            "stale_signature"
        )
        code, body = await postback(
            session, svc.base_url, click_id=click_id, txid="sig-5", token="wrong-token-00000000"
        )
        assert (code, body["reason"]) == (401, "bad_token")
        code, body = await postback(
            session, svc.base_url, click_id=click_id, txid="sig-6", token=""
        )
        assert (code, body["reason"]) == (401, "missing_credentials")
        code, body = await postback(
            session, svc.base_url, click_id=click_id, txid="sig-7", advertiser="nobody"
        )
        assert (code, body["reason"]) == (401, "unknown_advertiser")
    svc.wait_behind_marker()
    assert svc.count("conversions", "txid LIKE 'sig-%'") == 1


# "CLICK" stands for a real click id of the visitor
BAD = [
    ({"txid": "b1"}, 400, "missing_click_id"),
    ({"click_id": "CLICK"}, 400, "missing_txid"),
    ({"click_id": "not-a-uuid", "txid": "b2"}, 400, "invalid_click_id"),
    ({"click_id": "CLICK", "txid": "b3", "amount": "-5"}, 400, "negative_amount"),
    ({"click_id": "CLICK", "txid": "b4", "amount": "NaN"}, 400, "invalid_amount"),
    ({"click_id": "CLICK", "txid": "b5", "amount": "Infinity"}, 400, "invalid_amount"),
    ({"click_id": "CLICK", "txid": "b6", "amount": "12,50"}, 400, "invalid_amount"),
    (
        {"click_id": "CLICK", "txid": "b7", "amount": "1000000000000000000000000000000"},
        400,
        "amount_too_large",
    ),
    (
        {"click_id": "CLICK", "txid": "b8", "amount": "1.005", "currency": "USD"},
        400,
        "too_many_decimals",
    ),
    (
        {"click_id": "CLICK", "txid": "b9", "amount": "10", "currency": "XYZ"},
        400,
        "unknown_currency",
    ),
    ({"click_id": "CLICK", "txid": "b10", "status": "paid"}, 400, "unknown_status"),
    ({"click_id": "CLICK", "txid": "b11", "event": "bad event!"}, 400, "invalid_event"),
]


@pytest.mark.parametrize(("params", "status", "reason"), BAD)
async def test_bad_postbacks_are_refused_with_a_reason(svc, params, status, reason):
    async with browser() as session:
        click_id = await click(session, svc.base_url, "conv-a")
        params = {k: (click_id if v == "CLICK" else v) for k, v in params.items()}
        code, body = await postback(session, svc.base_url, **params)
    assert (code, body) == (status, {"status": "rejected", "reason": reason, "conversion_id": None})
    svc.wait_behind_marker()
    assert svc.count("conversions", "txid LIKE 'b%' AND length(txid) <= 3") == 0


async def test_bad_bodies_are_refused(svc):
    async with browser() as session:
        click_id = await click(session, svc.base_url, "conv-a")
        base = f"{svc.base_url}/postback?advertiser=shop&token={ADV_TOKEN}&click_id={click_id}"
        cases = [
            (
                {"Content-Type": "application/json"},
                b'{"txid": "j1", "amount": ',
                400,
                "invalid_json",
            ),
            ({"Content-Type": "application/json"}, b'["txid"]', 400, "invalid_json"),
            (
                {"Content-Type": "application/json"},
                b'{"txid": {"a": 1}}',
                400,
                "invalid_field",
            ),
            (
                {"Content-Type": "application/x-www-form-urlencoded"},
                b"txid=big&pad=" + b"x" * (1024 * 1024),
                413,
                "body_too_large",
            ),
            ({"Content-Type": "text/xml"}, b"<txid>x</txid>", 415, "unsupported_content_type"),
        ]
        for headers, body, status, reason in cases:
            async with session.post(base, data=body, headers=headers) as r:
                assert (r.status, (await r.json())["reason"]) == (status, reason), reason
        # JSON body with numbers kept exact
        async with session.post(
            base,
            data=b'{"txid": "j-ok", "amount": 19.99, "currency": "usd"}',
            headers={"Content-Type": "application/json"},
        ) as r:
            assert (await r.json())["status"] == "accepted"
    svc.wait_count("conversions", 1, "txid = 'j-ok'")
    assert svc.sql(
        "SELECT toString(amount) AS a, currency FROM tracker.conversions WHERE txid = 'j-ok'"
    ) == [{"a": "19.99", "currency": "USD"}]
    svc.wait_behind_marker()
    assert svc.count("conversions", "txid IN ('j1', 'big', 'x')") == 0


async def test_conversion_in_the_same_sink_batch_as_its_clicks(service: Service):
    service.start_edges(1)
    service.start_sink()
    assert service.api("POST", "/api/advertisers", {"id": "shop", "token": ADV_TOKEN})[0] == 201
    service.add_link("same-a", campaign_id="ca")
    service.add_link("same-b", campaign_id="cb")
    service.stop("sink")  # the clicks and the conversion wait in the stream together
    async with browser() as session:
        ids = [await click(session, service.base_url, s) for s in ("same-a", "same-b")]
        code, body = await postback(
            session, service.base_url, click_id=ids[1], txid="same-1", amount="10"
        )
    assert code == 200 and body["attributed"]
    service.start_sink()
    service.wait_count(
        "attribution_credits", 2 + 1 + 1 + 2 + 2, f"conversion_id = '{body['conversion_id']}'"
    )
    rows = credits(service, body["conversion_id"])
    assert {r["campaign_id"] for r in rows if r["model"] == "first_click"} == {"ca"}


async def test_batch_reattribution_matches_online_credits(svc):
    """`tracker report attribution` (SQL over clicks and conversions) agrees with the
    credits the sink wrote online, per campaign and model."""
    import subprocess
    import sys

    from tracker.testing import ROOT

    # journeys of its own: two visitors, three campaigns, two currencies
    svc.add_link("re-a", campaign_id="re-a", affiliate_id="re-aff")
    svc.add_link("re-b", campaign_id="re-b", affiliate_id="re-aff")
    svc.add_link("re-c", campaign_id="re-c", affiliate_id="re-aff-2")
    for n, (slugs, amount, currency) in enumerate(
        [(("re-a", "re-b", "re-c"), "90.00", "EUR"), (("re-c", "re-a"), "12.34", "USD")]
    ):
        async with browser() as session:
            ids = [await click(session, svc.base_url, slug) for slug in slugs]
            code, body = await postback(
                session,
                svc.base_url,
                click_id=ids[-1],
                txid=f"re-{n}",
                amount=amount,
                currency=currency,
            )
        assert code == 200 and body["attributed"], body
        svc.wait_count(
            "attribution_credits",
            len(slugs) * 3 + 2,
            f"conversion_id = '{body['conversion_id']}'",
        )
    svc.wait_behind_marker()  # and whatever other tests of the module sent is stored too
    online = {
        (r["campaign_id"], r["currency"], r["model"]): (r["n"], Decimal(r["revenue"]))
        for r in svc.sql(
            "SELECT campaign_id, currency, model, sum(weight) AS n, "
            "toString(sum(credited_amount)) AS revenue FROM tracker.attribution_credits "
            # credits stay as history: a conversion counts by its latest status
            "WHERE conversion_id IN (SELECT conversion_id FROM tracker.conversions "
            "GROUP BY conversion_id HAVING argMax(status, event_time) IN ('pending', 'approved')) "
            "GROUP BY campaign_id, currency, model"
        )
    }
    assert {("re-a", "EUR"), ("re-b", "EUR"), ("re-c", "EUR"), ("re-a", "USD")} <= {
        (campaign, currency) for campaign, currency, _ in online
    }
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "tracker",
            "report",
            "attribution",
            "--by",
            "campaign",
            "--include-pending",
            "--format",
            "json",
        ],
        env=svc.env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    batch = orjson.loads(result.stdout)
    assert {"re-a", "re-b", "re-c"} <= {row["campaign_id"] for row in batch}
    # the data-driven (Markov) column shares out each currency's conversions
    for currency in {row["currency"] for row in batch}:
        mine = [row for row in batch if row["currency"] == currency]
        assert sum(r["data_driven_conversions"] for r in mine) == pytest.approx(
            sum(r["last_click_conversions"] for r in mine)
        )
    for row in batch:
        for model in MODELS:
            n, revenue = online.pop((row["campaign_id"], row["currency"], model), (0, 0))
            assert row[f"{model}_conversions"] == pytest.approx(n, abs=1e-9)
            assert Decimal(str(row[f"{model}_revenue"])) == pytest.approx(
                revenue, abs=Decimal("0.01")
            )
    assert all(n == 0 for n, _ in online.values())

    single = subprocess.run(
        [
            sys.executable,
            "-m",
            "tracker",
            "attribute",
            "--model",
            "linear",
            "--by",
            "affiliate",
            "--from",
            "2020-01-01",
            "--include-pending",
            "--format",
            "csv",
        ],
        env=svc.env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert single.returncode == 0, single.stderr
    assert single.stdout.splitlines()[0] == (
        "affiliate_id,currency,linear_conversions,linear_revenue"
    )
    bad = subprocess.run(
        [sys.executable, "-m", "tracker", "attribute", "--model", "nope"],
        env=svc.env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert bad.returncode == 1 and "unknown attribution model" in bad.stderr
