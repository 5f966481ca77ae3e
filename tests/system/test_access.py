"""Roles against a running service: each key sees its own and nothing else, through
every route, filter and group-by; writes land in the audit log, which no key can edit."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import orjson
import pytest

from tracker.testing import hit_many


@pytest.fixture(scope="module")
def world(running):
    """Two advertisers, two affiliates, their links and clicks, and a key per role."""
    running.add_link("acc-offer-a", campaign_id="acc-camp-a", advertiser_id="acc-adv-a")
    running.add_link(
        "acc-a1", campaign_id="acc-camp-a", affiliate_id="acc-aff-1", advertiser_id="acc-adv-a"
    )
    running.add_link(
        "acc-a2", campaign_id="acc-camp-a", affiliate_id="acc-aff-2", advertiser_id="acc-adv-a"
    )
    running.add_link(
        "acc-b2", campaign_id="acc-camp-b", affiliate_id="acc-aff-2", advertiser_id="acc-adv-b"
    )
    keys = {}
    for name, body in {
        "analyst": {"role": "analyst"},
        "adv_a": {"role": "advertiser", "subject": "acc-adv-a"},
        "aff_1": {"role": "affiliate", "subject": "acc-aff-1", "campaigns": ["acc-camp-a"]},
        "aff_2": {"role": "affiliate", "subject": "acc-aff-2"},
    }.items():
        status, created = running.api("POST", "/api/keys", {**body, "name": name})
        assert status == 201, created
        assert created["key"].startswith("trk_") and "secret_sha256" not in created
        keys[name] = created
    import asyncio

    async def clicks():
        for slug, n in (("acc-a1", 3), ("acc-a2", 2), ("acc-b2", 4)):
            assert set(await hit_many(f"{running.base_url}/c/{slug}", n, concurrency=n)) == {302}

    asyncio.run(clicks())
    running.wait_count("clicks", 9, "link_slug LIKE 'acc-%'", timeout=20)
    today = datetime.now(UTC).date()
    period = f"from={today - timedelta(days=1)}&to={today + timedelta(days=1)}"
    return running, keys, period


def report(service, token, query):
    return service.api("GET", f"/api/reports?{query}", token=token)


def test_each_role_sees_only_its_own_reports(world):
    service, keys, period = world
    q = f"metrics=clicks&group_by=affiliate&{period}&filter[campaign]=acc-camp-a,acc-camp-b"
    status, everyone = report(service, keys["analyst"]["key"], q)
    assert status == 200
    assert {r["affiliate"]: r["clicks"] for r in everyone["rows"]} == {
        "acc-aff-1": 3,
        "acc-aff-2": 6,
    }

    aff1 = keys["aff_1"]["key"]
    status, mine = report(service, aff1, q)
    assert status == 200 and mine["rows"] == [{"affiliate": "acc-aff-1", "clicks": 3}]
    assert mine["totals"] == {"clicks": 3}
    # asking for another affiliate by filter or by group-by yields nothing of theirs
    status, other = report(service, aff1, f"metrics=clicks&{period}&filter[affiliate]=acc-aff-2")
    assert status == 200 and other["totals"] == {"clicks": 0}
    status, by_link = report(service, aff1, f"metrics=clicks&group_by=link,advertiser&{period}")
    assert [r["link"] for r in by_link["rows"]] == ["acc-a1"]
    for hidden in ("revenue", "profit", "roi"):  # what the advertiser pays is not theirs
        status, refused = report(service, aff1, f"metrics=clicks,{hidden}&{period}")
        assert status == 403 and hidden in refused["reason"]
    status, earned = report(service, aff1, f"metrics=payout,epc&{period}")
    assert status == 200 and earned["totals"] == {"payout": "0.000", "epc": "0.000"}
    status, raw = report(service, aff1, f"metrics=clicks&group_by=sub1&{period}")
    assert status == 200 and raw["sources"] == {"clicks": "raw"} and raw["totals"]["clicks"] == 3

    adv = keys["adv_a"]["key"]
    status, theirs = report(service, adv, f"metrics=clicks&group_by=advertiser,affiliate&{period}")
    assert status == 200
    assert {(r["advertiser"], r["affiliate"]): r["clicks"] for r in theirs["rows"]} == {
        ("acc-adv-a", "acc-aff-1"): 3,
        ("acc-adv-a", "acc-aff-2"): 2,
    }
    status, other = report(service, adv, f"metrics=clicks&{period}&filter[advertiser]=acc-adv-b")
    assert other["totals"] == {"clicks": 0}
    # impressions carry no advertiser: refused rather than shown unscoped
    status, refused = report(service, adv, f"metrics=impressions&{period}")
    assert status == 400 and "advertiser" in refused["reason"]
    assert service.api("GET", "/api/me", token=adv)[1]["subject"] == "acc-adv-a"


def test_links_by_role(world):
    service, keys, _ = world
    aff1, aff2, adv = keys["aff_1"]["key"], keys["aff_2"]["key"], keys["adv_a"]["key"]

    def slugs(token):
        links = service.api("GET", "/api/links", token=token)[1]["links"]
        fixed = {"acc-offer-a", "acc-a1", "acc-a2", "acc-b2"}  # not links other tests add
        return [link["slug"] for link in links if link["slug"] in fixed]

    assert slugs(aff1) == ["acc-a1"]
    assert slugs(aff2) == ["acc-a2", "acc-b2"]
    assert slugs(adv) == ["acc-a1", "acc-a2", "acc-offer-a"]
    assert service.api("GET", "/api/links/acc-b2", token=aff1)[0] == 404
    assert service.api("GET", "/api/links/acc-a1", token=aff1)[0] == 200
    assert service.api("PATCH", "/api/links/acc-a1", {"status": "disabled"}, token=aff1)[0] == 403
    assert service.api("DELETE", "/api/links/acc-a1", token=adv)[0] == 403

    # an affiliate's own tracking link, for a campaign it may promote, with sub ids
    status, made = service.api(
        "POST", "/api/links", {"campaign_id": "acc-camp-a", "sub1": "newsletter"}, token=aff1
    )
    assert status == 201, made
    assert made["affiliate_id"] == "acc-aff-1" and made["advertiser_id"] == "acc-adv-a"
    assert made["url"].endswith(f"/c/{made['slug']}?sub1=newsletter")
    assert service.api("POST", "/api/links", {"campaign_id": "acc-camp-b"}, token=aff1)[0] == 403
    assert service.api("POST", "/api/links", {"campaign_id": "acc-camp-a"}, token=aff2)[0] == 403
    status, body = service.api(
        "POST",
        "/api/links",
        {"campaign_id": "acc-camp-a", "destination": "https://evil.example/"},
        token=aff1,
    )
    assert status == 400 and "destination" in body["reason"]


def test_what_only_the_admin_may_do(world):
    service, keys, _ = world
    for name in ("analyst", "adv_a", "aff_1"):
        token = keys[name]["key"]
        for method, path in [
            ("GET", "/api/keys"),
            ("POST", "/api/keys"),
            ("GET", "/api/audit"),
            ("GET", "/api/advertisers"),
            ("POST", "/api/advertisers"),
            ("DELETE", "/api/keys/x"),
        ]:
            assert service.api(method, path, {}, token=token)[0] == 403, (name, method, path)
    assert (
        service.api(
            "POST",
            "/api/links",
            {"slug": "acc-x", "destination": "https://a.example/"},
            token=keys["analyst"]["key"],
        )[0]
        == 403
    )
    assert service.api("GET", "/api/reports", token="trk_0123456789abcdef_" + "x" * 43)[0] == 401


def test_revoked_keys_stop_working(world):
    service, _, _ = world
    # a key of its own: the module's keys stay valid for the other tests, in any order
    status, key = service.api(
        "POST", "/api/keys", {"role": "affiliate", "subject": "acc-aff-2", "name": "revoked"}
    )
    assert status == 201, key
    token = key["key"]
    assert service.api("GET", "/api/me", token=token)[0] == 200
    status, revoked = service.api("DELETE", f"/api/keys/{key['id']}")
    assert status == 200 and revoked["revoked_at"]
    assert service.api("GET", "/api/me", token=token)[0] == 401
    listed = service.api("GET", "/api/keys")[1]["keys"]
    assert all("secret_sha256" not in k for k in listed)


def test_writes_are_audited_and_the_log_cannot_be_edited(world):
    service, keys, _ = world
    status, made = service.api(
        "POST", "/api/links", {"campaign_id": "acc-camp-a"}, token=keys["aff_1"]["key"]
    )
    assert status == 201, made  # a write of its own, whichever test ran before
    status, body = service.api("GET", "/api/audit?limit=1000")
    assert status == 200
    entries = body["entries"]
    created = [e for e in entries if e["action"] == "POST /api/keys"]
    assert len(created) >= 4 and created[-1]["actor"] == "admin-token"
    assert all("secret_sha256" not in (e["after"] or {}) for e in created)
    made = [
        e for e in entries if e["action"] == "POST /api/links" and e["actor"] == keys["aff_1"]["id"]
    ]
    assert made and made[0]["role"] == "affiliate" and made[0]["before"] is None
    assert made[0]["after"]["affiliate_id"] == "acc-aff-1"
    links = [e for e in entries if e["target"] == "acc-offer-a"]
    assert links and links[0]["after"]["campaign_id"] == "acc-camp-a"
    # nothing read-only is logged, nothing refused is logged
    assert not [e for e in entries if e["action"].startswith("GET ")]
    assert not [e for e in entries if e["action"] == "PATCH /api/links/{slug}"]
    for method in ("POST", "PUT", "PATCH", "DELETE"):
        assert service.api(method, "/api/audit", {})[0] == 405

    cli = service.cli("keys", "create", "--role", "analyst", "--name", "cli")
    assert cli.returncode == 0, cli.stderr
    key_id = cli.stdout.split()[1]
    out = service.cli("audit", "--action", "keys create", "--format", "json")
    assert out.returncode == 0, out.stderr
    logged = orjson.loads(out.stdout)
    assert logged[0]["target"] == key_id and logged[0]["actor"].startswith("cli:")
    assert logged[0]["after"]["role"] == "analyst"


def test_an_affiliate_reads_its_own_balance_only(world):
    service, keys, _ = world
    for affiliate in ("acc-aff-1", "acc-aff-2"):
        status, body = service.api("POST", "/api/affiliates", {"id": affiliate})
        assert status == 201, body
    aff1 = keys["aff_1"]["key"]
    status, body = service.api("GET", "/api/affiliates/acc-aff-1/balance", token=aff1)
    assert status == 200, body
    for path in (
        "/api/affiliates/acc-aff-2/balance",
        "/api/affiliates/acc-aff-2/payouts",
        "/api/affiliates/acc-aff-2",
        "/api/affiliates",
        "/api/payouts",
        "/api/campaigns",
    ):
        assert service.api("GET", path, token=aff1)[0] == 403, path
    assert service.api("PATCH", "/api/affiliates/acc-aff-1", {"name": "x"}, token=aff1)[0] == 403
    assert service.api("GET", "/api/affiliates", token=keys["analyst"]["key"])[0] == 200
