"""Advertiser reconciliation against a running service: conversions by status, what the
advertiser owes, and its refused postbacks by reason, through the API and the CLI."""

from __future__ import annotations

import subprocess
import sys
from datetime import UTC, datetime, timedelta

import orjson

from tests.system.test_postbacks import browser, click, postback
from tracker.testing import ROOT, wait_until

TOKEN = "rec-token-0123456789abcdef"


async def test_reconciliation(running):
    svc = running
    assert svc.api("POST", "/api/advertisers", {"id": "rec", "token": TOKEN})[0] == 201
    assert svc.api("POST", "/api/advertisers", {"id": "rec-other", "token": TOKEN})[0] == 201
    status, _ = svc.api("POST", "/api/affiliates", {"id": "rec-pub"})
    assert status == 201
    status, body = svc.api(
        "POST",
        "/api/campaigns",
        {
            "id": "rec-camp",
            "advertiser_id": "rec",
            "plan": {"events": {"sale": {"type": "percent", "percent": "10"}}},
            "revenue": {"events": {"sale": {"type": "percent", "percent": "20"}}},
            "hold_days": 0,
        },
    )
    assert status == 201, body
    svc.add_link("rec-link", campaign_id="rec-camp", affiliate_id="rec-pub", advertiser_id="rec")
    base = svc.base_url
    async with browser() as session:
        c1, c2, c3 = [await click(session, base, "rec-link") for _ in range(3)]

        async def send(**params):
            return await postback(session, base, advertiser="rec", token=TOKEN, **params)

        assert (await send(cid=c1, txid="r1", amount="100.00", status="approved", event="sale"))[
            0
        ] == 200
        assert (await send(cid=c2, txid="r2", amount="50.00", event="sale"))[0] == 200  # pending
        assert (await send(cid=c3, txid="r3", amount="30.00", status="approved", event="sale"))[
            0
        ] == 200
        assert (await send(txid="r3", status="reversed", click_id=c3))[0] == 200
        # refused: a wrong token twice, a bad amount, and an advertiser nobody knows
        for _ in range(2):
            status, _ = await postback(
                session, base, advertiser="rec", token="x" * 20, cid=c1, txid="r9"
            )
            assert status == 401
        assert (await send(cid=c1, txid="r8", amount="lots"))[0] == 400
        assert (await postback(session, base, advertiser="nobody", cid=c1, txid="r7"))[0] == 401
    svc.wait_count("conversions", 4, "advertiser_id = 'rec'")
    svc.wait_count("commissions", 1, "advertiser_id = 'rec' AND step = 'reversed' AND level = 0")

    today = datetime.now(UTC).date()
    period = f"from={today - timedelta(days=1)}&to={today + timedelta(days=1)}"

    def refused_total():
        body = svc.api("GET", f"/api/reports/reconciliation?advertiser=rec&{period}")[1]
        return body if body["refused_total"] == 3 else None

    body = wait_until(refused_total, 10, "refusal counts to reach Redis")
    assert body["conversions"] == [
        {
            "currency": "USD",
            "pending": {"conversions": 1, "amount": "50.000"},
            "approved": {"conversions": 1, "amount": "100.000"},
            "rejected": {"conversions": 0, "amount": "0.000"},
            "reversed": {"conversions": 1, "amount": "30.000"},
        }
    ]
    # owed: 20% of the approved 100.00; pending: 20% of 50.00
    assert body["owed"] == [{"currency": "USD", "owed": "20.000", "pending": "10.000"}]
    assert body["refused_postbacks"] == [
        {"reason": "bad_token", "count": 2},
        {"reason": "invalid_amount", "count": 1},
    ]

    # an advertiser's key sees its own, and only its own
    status, key = svc.api("POST", "/api/keys", {"role": "advertiser", "subject": "rec"})
    assert status == 201
    status, mine = svc.api("GET", f"/api/reports/reconciliation?{period}", token=key["key"])
    assert status == 200 and mine["advertiser"] == "rec" and mine["owed"] == body["owed"]
    status, _ = svc.api(
        "GET", f"/api/reports/reconciliation?advertiser=rec-other&{period}", token=key["key"]
    )
    assert status == 403
    status, other = svc.api("GET", f"/api/reports/reconciliation?advertiser=rec-other&{period}")
    assert status == 200 and other["conversions"] == [] and other["refused_total"] == 0

    cli = subprocess.run(
        [
            sys.executable,
            "-m",
            "tracker",
            "report",
            "reconciliation",
            "--advertiser",
            "rec",
            "--from",
            str(today - timedelta(days=1)),
            "--to",
            str(today + timedelta(days=1)),
            "--format",
            "json",
        ],
        env=svc.env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert cli.returncode == 0, cli.stderr
    assert orjson.loads(cli.stdout) == body
