"""`privacy.anonymize_ip`: no full client address reaches Redis (and its AOF), the spool or
ClickHouse, and the per-IP fraud rules still tell addresses apart."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import aiohttp
import orjson

from tracker.testing import BROWSER_UA, ROOT, Service, hit_many

FULL = ["203.0.113.77", "203.0.113.78", "2001:db8:1:2:3:4:5:6"]


def files_containing(folder: Path, needle: bytes) -> list[Path]:
    return [p for p in folder.rglob("*") if p.is_file() and needle in p.read_bytes()]


async def test_anonymized_addresses_never_reach_a_disk(service: Service):
    service.env.update(
        TRACKER_PRIVACY_ANONYMIZE_IP="1",
        TRACKER_TRUSTED_PROXIES="127.0.0.1/32",
        TRACKER_FRAUD_IP_CLICKS_PER_MINUTE="5",
    )
    service.serve()
    service.add_link("anon", campaign_id="anon")
    url = f"{service.base_url}/c/anon"
    # four clicks from each of two addresses in one /24: under the per-IP limit each,
    # over it together (what counting by the truncated address would see)
    for ip in FULL:
        statuses = await hit_many(url, 4, concurrency=1, headers={"X-Forwarded-For": ip})
        assert statuses == [302] * 4
    assert service.wait_count("clicks", 12, "link_slug = 'anon'") == 12

    stored = service.sql(
        "SELECT toString(ip) AS ip, count() AS n, countIf(has(fraud_flags, 'ip_flood')) AS"
        " flooded FROM tracker.clicks WHERE link_slug = 'anon' GROUP BY ip ORDER BY ip"
    )
    assert stored == [
        {"ip": "2001:db8:1::", "n": 4, "flooded": 0},
        {"ip": "::ffff:203.0.113.0", "n": 8, "flooded": 0},
    ]
    service.redis.client().execute_command("BGREWRITEAOF")
    for ip in FULL:
        for folder in (service.redis.folder, service.folder / "data"):
            assert files_containing(folder, ip.encode()) == [], ip


async def test_privacy_export_and_erase_through_cli_and_api(service: Service):
    service.serve()
    service.add_link("gdpr", campaign_id="gdpr")
    async with aiohttp.ClientSession(
        cookie_jar=aiohttp.CookieJar(unsafe=True), headers={"User-Agent": BROWSER_UA}
    ) as browser:
        for _ in range(2):
            async with browser.get(f"{service.base_url}/c/gdpr", allow_redirects=False) as r:
                assert r.status == 302
        visitor = next(c.value for c in browser.cookie_jar if c.key == "vid")
    assert service.wait_count("clicks", 2, "link_slug = 'gdpr'") == 2

    out = service.folder / "export.json"
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "tracker",
            "privacy",
            "export",
            "--visitor",
            visitor,
            "--out",
            str(out),
        ],
        env=service.env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 0, run.stderr
    exported = orjson.loads(out.read_bytes())
    assert [c["visitor_id"] for c in exported["clickhouse"]["clicks"]] == [visitor] * 2
    assert len(exported["redis"]["path"]) == 2

    assert service.api("POST", "/api/privacy/erase", {"visitor_id": "nope"})[0] == 400
    status, body = service.api("POST", "/api/privacy/erase", {"visitor_id": visitor})
    assert status == 200 and body["erased"]["clicks"] == 2, body
    assert service.count("clicks", f"visitor_id = '{visitor}'") == 0
    status, body = service.api("GET", f"/api/privacy/export?visitor_id={visitor}")
    assert status == 200 and body["clickhouse"]["clicks"] == [] and body["redis"]["path"] == []
    status, audit = service.api("GET", "/api/audit")
    assert any(
        e["action"] == "POST /api/privacy/erase" and e["target"] == visitor
        for e in audit["entries"]
    ), audit
