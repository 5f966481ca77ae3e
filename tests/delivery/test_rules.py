"""Delivery targets, jobs, backoff and the address policy: pure logic, tested directly."""

from __future__ import annotations

import ipaddress
import random
from decimal import Decimal

import pytest

from tracker.delivery import jobs as J
from tracker.delivery import targets as T
from tracker.delivery.policy import backoff_seconds, blocked, parse_allowed
from tracker.macros import render_postback

CONV = "0190a0b0-0000-7000-8000-000000000001"
CLICK = "0190a0b0-0000-7000-8000-0000000000c1"


def conversion(**kw) -> dict:
    row = {
        "event_time": "2026-11-30 10:00:00.000",
        "conversion_id": CONV,
        "advertiser_id": "adv",
        "txid": "tx 1",
        "event": "purchase",
        "status": "pending",
        "previous_status": "",
        "amount": "12.50",
        "currency": "EUR",
        "click_id": CLICK,
        "campaign_id": "camp",
        "affiliate_id": "aff",
        "link_slug": "s",
        "source": "postback",
    }
    row.update(kw)
    return row


def postback(**kw) -> T.Target:
    return T.validate(
        {
            "id": "pb",
            "kind": "postback",
            "affiliate_id": "aff",
            **kw,
            "url": kw.get("url", "https://partner.example/pb?cid={sub1}&p={payout}"),
        }
    )


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        ({"kind": "postback", "url": "https://a.example/", "affiliate_id": "a", "x": 1}, "unknown"),
        ({"kind": "sms", "url": "https://a.example/"}, "kind"),
        ({"kind": "postback", "url": "https://a.example/"}, "affiliate_id"),
        ({"kind": "postback", "url": "ftp://a.example/", "affiliate_id": "a"}, "http"),
        ({"kind": "postback", "url": "https://{sub1}.example/", "affiliate_id": "a"}, "host"),
        (
            {
                "kind": "postback",
                "url": "https://a.example/",
                "affiliate_id": "a",
                "events": ["paid"],
            },
            "events",
        ),
        (
            {"kind": "postback", "url": "https://a.example/", "affiliate_id": "a", "events": []},
            "events",
        ),
        ({"kind": "webhook", "url": "https://a.example/", "method": "GET"}, "POST"),
        ({"kind": "webhook", "url": "https://a.example/", "secret": "short"}, "secret"),
        ({"kind": "webhook", "url": "http://0.0.0.0/"}, "address"),
        (
            {
                "kind": "postback",
                "url": "https://a.example/",
                "affiliate_id": "a",
                "enabled": "yes",
            },
            "enabled",
        ),
    ],
)
def test_invalid_targets_say_why(data, reason):
    with pytest.raises(T.TargetError, match=reason):
        T.validate({"id": "t1", **data})


def test_webhook_gets_a_secret_and_changes_keep_id_and_kind():
    hook = T.validate({"id": "h", "kind": "webhook", "url": "https://crm.example/hook"})
    assert len(hook.secret) >= 32 and hook.method == "POST"
    assert hook.public()["secret"] != hook.secret  # listed masked
    changed = T.validate({"events": ["approved"]}, current=hook)
    assert changed.secret == hook.secret and changed.events == ["approved"]
    with pytest.raises(T.TargetError, match="unchangeable"):
        T.validate({"kind": "postback"}, current=hook)


def test_triggers():
    assert J.triggers_of(conversion()) == ["accepted"]
    assert J.triggers_of(conversion(status="approved")) == ["accepted", "approved"]
    assert J.triggers_of(conversion(status="approved", previous_status="pending")) == ["approved"]
    assert J.triggers_of(conversion(status="reversed", previous_status="approved")) == ["reversed"]
    assert J.triggers_of(conversion(status="rejected", previous_status="pending")) == ["rejected"]


def test_campaign_postback_overrides_the_affiliates_general_one():
    general = postback()
    special = T.validate(
        {
            "id": "pb2",
            "kind": "postback",
            "affiliate_id": "aff",
            "campaign_id": "camp",
            "url": "https://p.example/c",
        }
    )
    other = T.validate(
        {"id": "pb3", "kind": "postback", "affiliate_id": "zzz", "url": "https://p.example/z"}
    )
    hook = T.validate(
        {"id": "h", "kind": "webhook", "url": "https://crm.example/", "events": ["approved"]}
    )
    targets = [general, special, other, hook]
    assert [t.id for t in T.matching(targets, "accepted", conversion())] == ["pb2"]
    assert [t.id for t in T.matching(targets, "accepted", conversion(campaign_id="c9"))] == ["pb"]
    assert [t.id for t in T.matching(targets, "approved", conversion(status="approved"))] == [
        "pb2",
        "h",
    ]
    special.enabled = False  # a disabled override overrides nothing
    assert [t.id for t in T.matching(targets, "accepted", conversion())] == ["pb"]


def test_jobs_render_macros_with_the_affiliates_sub_id_and_payout():
    target = postback(
        url="https://p.example/pb?cid={sub1}&tx={txid}&p={payout}&s={status}&a={amount}{currency}&e={event}"
    )
    hook = T.validate({"id": "h", "kind": "webhook", "url": "https://crm.example/h"})
    commissions = [
        {
            "conversion_id": CONV,
            "level": 1,
            "affiliate_id": "aff",
            "status": "pending",
            "step": "pending",
            "payout": "2.000",
        },
        {
            "conversion_id": CONV,
            "level": 2,
            "affiliate_id": "parent",
            "status": "pending",
            "step": "pending",
            "payout": "0.500",
        },
        {
            "conversion_id": CONV,
            "level": 0,
            "affiliate_id": "",
            "status": "pending",
            "step": "pending",
            "payout": "0",
        },
    ]
    jobs = J.jobs_for(
        [conversion()],
        [target, hook],
        clicks={CLICK: {"sub1": "their/id 7"}},
        payouts=J.payouts_of(commissions),
        ms=1,
    )
    assert [j["target_id"] for j in jobs] == ["pb", "h"]
    assert jobs[0]["url"] == (
        "https://p.example/pb?cid=their%2Fid%207&tx=tx%201&p=2.000&s=pending&a=12.50EUR&e=purchase"
    )
    assert jobs[0]["id"] == J.delivery_id(CONV, "accepted", "pb") != jobs[1]["id"]
    import orjson

    body = orjson.loads(jobs[1]["body"])
    assert body["id"] == jobs[1]["id"] and body["type"] == "conversion.accepted"
    assert body["data"]["payout"] == "2.000" and body["data"]["sub1"] == "their/id 7"
    # no commission booked: {payout} is empty, never made up
    again = J.jobs_for([conversion()], [target], clicks={}, payouts={}, ms=1)
    assert "&p=&" in again[0]["url"] and "cid=&" in again[0]["url"]


def test_render_postback_leaves_unknown_macros():
    assert render_postback("https://x.example/?a={nope}&b={click_id}", {"click_id": "1"}) == (
        "https://x.example/?a={nope}&b=1"
    )


def test_payouts_sum_a_steps_levels_per_affiliate():
    rows = [
        {
            "conversion_id": "c",
            "level": 1,
            "affiliate_id": "a",
            "status": "pending",
            "step": "approved",
            "payout": "-3",
        },
        {
            "conversion_id": "c",
            "level": 1,
            "affiliate_id": "a",
            "status": "approved",
            "step": "approved",
            "payout": "3",
        },
    ]
    assert J.payouts_of(rows) == {("c", "approved", "a"): Decimal("3")}


def test_backoff_grows_from_seconds_to_the_cap_with_jitter():
    rng = random.Random(7)
    waits = [backoff_seconds(n, 10, 21600, rng) for n in range(1, 20)]
    for n, wait in enumerate(waits, start=1):
        ceiling = min(21600, 10 * 2 ** (n - 1))
        assert ceiling / 2 <= wait <= ceiling
    assert waits[0] < 10 and waits[-1] > 3600  # seconds at first, hours at the end
    assert len({round(backoff_seconds(3, 10, 100, rng), 6) for _ in range(20)}) > 10


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1",
        "10.1.2.3",
        "172.16.0.1",
        "192.168.1.1",
        "169.254.169.254",
        "100.64.0.1",
        "100.100.100.200",
        "0.0.0.0",
        "::1",
        "fe80::1",
        "fc00::1",
        "fd00:ec2::254",
        "::ffff:127.0.0.1",
        "224.0.0.1",
    ],
)
def test_non_public_addresses_are_blocked(address):
    assert blocked(ipaddress.ip_address(address), [])


def test_public_and_allowed_addresses_pass():
    assert not blocked(ipaddress.ip_address("93.184.216.34"), [])
    assert not blocked(ipaddress.ip_address("2606:4700::1111"), [])
    allowed = parse_allowed(["127.0.0.0/8"])
    assert not blocked(ipaddress.ip_address("127.0.0.1"), allowed)
    assert blocked(ipaddress.ip_address("10.0.0.1"), allowed)
