"""GET /api/reports and `tracker report stats` against a running service: the same table."""

from __future__ import annotations

import subprocess
import sys
import urllib.request
from datetime import UTC, datetime, timedelta

import orjson

from tracker.testing import ROOT, TOKEN, hit_many


def get_text(service, path: str, token: str = TOKEN) -> tuple[int, str, str]:
    request = urllib.request.Request(
        service.base_url + path, headers={"Authorization": f"Bearer {token}"}
    )
    with urllib.request.urlopen(request, timeout=30) as r:
        return r.status, r.headers["Content-Type"], r.read().decode()


async def test_report_api_and_cli_agree(running):
    running.add_link("rep-a", campaign_id="rep-camp", affiliate_id="rep-aff")
    running.add_link("rep-b", campaign_id="rep-camp2", affiliate_id="rep-aff")
    assert set(await hit_many(f"{running.base_url}/c/rep-a", 5, concurrency=5)) == {302}
    assert set(await hit_many(f"{running.base_url}/c/rep-b", 2, concurrency=2)) == {302}
    running.wait_count("clicks", 7, "affiliate_id = 'rep-aff'", timeout=20)
    today = datetime.now(UTC).date()
    period = f"from={today - timedelta(days=2)}&to={today + timedelta(days=1)}"
    path = (
        f"/api/reports?metrics=clicks,unique_clicks,conversions,cvr&group_by=day,campaign"
        f"&{period}&filter[affiliate]=rep-aff"
    )
    status, body = running.api("GET", path)
    assert status == 200, body
    assert body["sources"] == {"clicks": "clicks_daily_geo", "conversions": "conversions_daily_geo"}
    assert body["rows"] == [
        {
            "day": str(today),
            "campaign": "rep-camp",
            "clicks": 5,
            "unique_clicks": 5,
            "conversions": 0,
            "cvr": 0.0,
        },
        {
            "day": str(today),
            "campaign": "rep-camp2",
            "clicks": 2,
            "unique_clicks": 2,
            "conversions": 0,
            "cvr": 0.0,
        },
    ]
    assert body["totals"]["clicks"] == 7

    status, kind, text = get_text(running, path + "&format=csv")
    assert status == 200 and kind.startswith("text/csv")
    assert text.splitlines() == [
        "day,campaign,clicks,unique_clicks,conversions,cvr",
        f"{today},rep-camp,5,5,0,0.0",
        f"{today},rep-camp2,2,2,0,0.0",
    ]

    cli = subprocess.run(
        [
            sys.executable,
            "-m",
            "tracker",
            "report",
            "stats",
            "--metrics",
            "clicks,unique_clicks,conversions,cvr",
            "--group-by",
            "day,campaign",
            "--from",
            str(today - timedelta(days=2)),
            "--to",
            str(today + timedelta(days=1)),
            "--filter",
            "affiliate=rep-aff",
            "--format",
            "json",
        ],
        env=running.env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert cli.returncode == 0, cli.stderr
    assert orjson.loads(cli.stdout)["rows"] == body["rows"]


def test_report_api_refuses_bad_requests(running):
    for path, reason in [
        ("/api/reports?metrics=bogus", "unknown metric"),
        ("/api/reports?group_by=model", "cannot be grouped by model"),
        ("/api/reports?filter=x", "filter[field]"),
        ("/api/reports?format=xml", "format"),
    ]:
        status, body = running.api("GET", path)
        assert status == 400 and reason in body["reason"], (path, body)
    assert running.api("GET", "/api/reports", token="wrong-token-000000")[0] == 401
    status, body = running.api("GET", "/api/reports/metrics")
    assert status == 200 and "cvr" in [m["name"] for m in body["metrics"]]
