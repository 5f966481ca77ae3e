"""Commissions end to end: the admin API sets up a programme, a click and postbacks flow
through the edge and the sink, the ledger and ClickHouse's `commissions` hold each step
once, and a payout run pays the exact amounts."""

from __future__ import annotations

import asyncio
import signal

import pytest

from tests.system.test_postbacks import ADV_TOKEN, browser, click, postback
from tracker.testing import Service, wait_until

PLAN = {
    "events": {"sale": {"type": "percent", "percent": "10"}},
    "levels": [{"percent": "10", "of": "commission"}],
}


@pytest.fixture(scope="module")
def svc(running: Service) -> Service:
    api = running.api
    assert api("POST", "/api/advertisers", {"id": "shop", "token": ADV_TOKEN})[0] == 201
    for body in (
        {"id": "ref", "name": "Referrer", "min_payout": "0.01"},
        {"id": "pub", "name": "Publisher", "parent_id": "ref", "min_payout": "1.00"},
    ):
        status, reply = api("POST", "/api/affiliates", body)
        assert status == 201, reply
    status, reply = api(
        "POST",
        "/api/campaigns",
        {
            "id": "spring",
            "advertiser_id": "shop",
            "plan": PLAN,
            "revenue": {"events": {"sale": {"type": "percent", "percent": "15"}}},
            "hold_days": 0,
        },
    )
    assert status == 201, reply
    running.add_link("spring-pub", campaign_id="spring", affiliate_id="pub", advertiser_id="shop")
    return running


def commission_rows(svc: Service, conversion_id: str) -> list[dict]:
    return svc.sql(
        "SELECT level, affiliate_id, status, step, toString(payout) AS payout, "
        "toString(revenue) AS revenue, reason FROM tracker.commissions "
        f"WHERE conversion_id = '{conversion_id}' ORDER BY step, level, status"
    )


async def test_postback_to_payout(svc):
    async with browser() as session:
        click_id = await click(session, svc.base_url, "spring-pub")
        status, body = await postback(
            session, svc.base_url, cid=click_id, txid="o-1", amount="120.00", event="sale"
        )
        assert status == 200 and body["status"] == "accepted", body
        conversion_id = body["conversion_id"]
        svc.wait_count("commissions", 3, f"conversion_id = '{conversion_id}'")
        assert svc.api("GET", "/api/affiliates/pub/balance")[1]["balances"][0]["pending"] == "12.00"

        status, body = await postback(
            session, svc.base_url, txid="o-1", status="approved", click_id=click_id
        )
        assert body["status"] == "accepted", body
        svc.wait_count("commissions", 3 + 6, f"conversion_id = '{conversion_id}'")
    rows = commission_rows(svc, conversion_id)
    approved = {
        (r["level"], r["status"]): (r["payout"], r["revenue"])
        for r in rows
        if r["step"] == "approved"
    }
    assert approved == {
        (0, "pending"): ("0", "-18"),
        (0, "approved"): ("0", "18"),
        (1, "pending"): ("-12", "0"),
        (1, "approved"): ("12", "0"),
        (2, "pending"): ("-1.2", "0"),
        (2, "approved"): ("1.2", "0"),
    }
    status, run = svc.api("POST", "/api/payouts/runs", {})
    assert status == 201, run
    paid = {p["affiliate_id"]: p["amount"] for p in run["payouts"]}
    assert paid == {"pub": "12.00", "ref": "1.20"}
    assert run["csv"].count("\n") == 3
    pub = next(p for p in run["payouts"] if p["affiliate_id"] == "pub")
    status, body = svc.api("PATCH", f"/api/payouts/{pub['payout_id']}", {"status": "paid"})
    assert status == 200 and body["status"] == "paid"
    balance = svc.api("GET", "/api/affiliates/pub/balance")[1]["balances"][0]
    assert (balance["paid"], balance["available"]) == ("12.00", "0.00")
    status, body = svc.api("POST", "/api/payouts/runs", {})
    assert status == 201 and body["count"] == 0  # nothing left: a re-run pays nothing
    status, body = svc.api("GET", "/api/payouts?status=settled")
    assert status == 400 and body["error"] == "invalid" and "pending" in body["reason"]
    status, body = svc.api("GET", "/api/payouts?status=paid")
    assert status == 200 and [p["affiliate_id"] for p in body["payouts"]] == ["pub"]
    # a commission's history, newest first
    items = svc.api("GET", "/api/affiliates/pub/commissions")[1]["commissions"]
    assert [(c["status"], c["amount"]) for c in items] == [("paid", "12.00")]


def test_bad_input_is_refused_with_a_reason(svc):
    cases = [
        ("POST", "/api/affiliates", {"id": "x y"}, 400),
        ("POST", "/api/affiliates", {"id": "pub"}, 409),
        ("POST", "/api/affiliates", {"id": "z", "parent_id": "nobody"}, 409),
        ("PATCH", "/api/affiliates/ref", {"parent_id": "pub"}, 409),  # a cycle
        ("GET", "/api/affiliates/nobody/balance", None, 404),
        (
            "POST",
            "/api/campaigns",
            {
                "id": "c",
                "advertiser_id": "shop",
                "plan": {"events": {"sale": {"type": "percent", "percent": 10.5}}},
            },
            400,
        ),
        ("PATCH", "/api/campaigns/spring", {"hold_days": -1}, 400),
        ("POST", "/api/payouts/runs", {"cutoff": "yesterday"}, 400),
        ("PATCH", "/api/payouts/nope", {"status": "paid"}, 404),
    ]
    for method, path, body, expected in cases:
        status, reply = svc.api(method, path, body)
        assert status == expected, (path, reply)
        assert reply["reason"]
    assert svc.api("GET", "/api/affiliates")[1]["count"] == 2  # nothing stored half-way


async def test_sink_killed_mid_batch_books_each_step_once(service: Service):
    """A backlog of conversion steps, the sink SIGKILLed three times while it books them:
    every step is in the ledger once and mirrored into ClickHouse once."""
    from sqlalchemy import func, select

    from tracker.ledger import accounts
    from tracker.ledger import schema as T
    from tracker.ledger.store import Store

    service.env["TRACKER_SINK_READ_ENTRIES"] = "5"  # many small batches: kills land inside
    service.start_edges(1)
    service.start_sink()
    api = service.api
    assert api("POST", "/api/advertisers", {"id": "shop", "token": ADV_TOKEN})[0] == 201
    assert api("POST", "/api/affiliates", {"id": "pub"})[0] == 201
    campaign = {"id": "crash", "advertiser_id": "shop", "plan": PLAN, "hold_days": 30}
    assert api("POST", "/api/campaigns", campaign)[0] == 201
    service.add_link("crash-pub", campaign_id="crash", affiliate_id="pub", advertiser_id="shop")
    service.stop("sink")  # the conversions wait in the stream

    count = 150
    async with browser() as session:
        clicks = await asyncio.gather(
            *(click(session, service.base_url, "crash-pub") for _ in range(count))
        )
        for status in ("pending", "approved"):
            replies = []
            for start in range(0, count, 25):  # a few at a time: a loaded CI machine
                replies += await asyncio.gather(
                    *(
                        postback(
                            session,
                            service.base_url,
                            cid=cid,
                            txid=f"k-{i}",
                            amount="10.00",
                            event="sale",
                            status=status,
                        )
                        for i, cid in enumerate(clicks)
                        if start <= i < start + 25
                    )
                )
            refused = [body for _, body in replies if body["status"] != "accepted"]
            assert not refused, refused[:3]

    for _ in range(3):
        service.spawn("sink", "sink")
        wait_until(
            lambda: service._query_up() and service.count("commissions") > 0,
            60,
            "the sink to book commissions",
        )
        service.signal("sink", signal.SIGKILL)
        service.procs["sink"].wait(10)
    service.start_sink()
    # pending: level 1 and the conversion's row; approved: each moved out and in
    assert service.wait_count("commissions", count * 2 + count * 4) == count * 6
    store = Store(f"sqlite:///{service.folder / 'data' / 'ledger.sqlite3'}", migrate=False)
    try:
        with store.read() as conn:
            steps = conn.execute(select(func.count()).select_from(T.conversion_steps)).scalar_one()
            entries = conn.execute(select(func.count()).select_from(T.entries)).scalar_one()
            balance = accounts.balance(conn, "pub", store.now_ms())
    finally:
        store.close()
    assert (steps, entries) == (count * 2, count * 3)  # accrue; unpend + approve
    assert balance[0]["on_hold"] == f"{count}.00" and balance[0]["pending"] == "0.00"
    assert service.sql(
        "SELECT toString(sum(payout)) AS p FROM tracker.commissions "
        "WHERE status = 'approved' AND level = 1"
    ) == [{"p": f"{count}"}]


async def test_auto_approval_after_n_days_goes_through_the_stream(service: Service):
    """A campaign that approves by itself (here after 0 days): the sink approves the
    pending conversion as its advertiser would, once; reports and commissions follow, and
    the advertiser's late rejection is refused."""
    service.env["TRACKER_COMMISSIONS_AUTO_APPROVE_INTERVAL_SECONDS"] = "0.3"
    service.serve()
    api = service.api
    assert api("POST", "/api/advertisers", {"id": "shop", "token": ADV_TOKEN})[0] == 201
    assert api("POST", "/api/affiliates", {"id": "pub"})[0] == 201
    campaign = {"id": "auto", "advertiser_id": "shop", "plan": PLAN, "auto_approve_days": 0}
    assert api("POST", "/api/campaigns", campaign)[0] == 201
    service.add_link("auto-pub", campaign_id="auto", affiliate_id="pub", advertiser_id="shop")
    async with browser() as session:
        cid = await click(session, service.base_url, "auto-pub")
        _, body = await postback(
            session, service.base_url, cid=cid, txid="a-1", amount="50.00", event="sale"
        )
        conversion_id = body["conversion_id"]
        where = f"conversion_id = '{conversion_id}'"
        assert service.wait_count("conversions", 2, where) == 2
        rows = service.sql(
            f"SELECT status, source FROM tracker.conversions WHERE {where} ORDER BY event_time"
        )
        assert rows == [
            {"status": "pending", "source": "postback"},
            {"status": "approved", "source": "auto_approval"},
        ]
        assert service.wait_count("commissions", 2 + 4, where) == 6
        code, late = await postback(
            session, service.base_url, cid=cid, txid="a-1", status="rejected"
        )
        assert code == 409 and late["reason"] == "illegal_transition", late
    balance = api("GET", "/api/affiliates/pub/balance")[1]["balances"][0]
    assert (balance["pending"], balance["on_hold"]) == ("0.00", "5.00")
