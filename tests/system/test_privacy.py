"""`privacy.anonymize_ip`: no full client address reaches Redis (and its AOF), the spool or
ClickHouse, and the per-IP fraud rules still tell addresses apart."""

from __future__ import annotations

from pathlib import Path

from tracker.testing import Service, hit_many

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
