"""Postbacks out and webhooks end to end: `tracker serve` (edges, sink, delivery worker),
real receivers on this machine. A conversion reaches the affiliate's postback with its own
sub id and the webhook signed; every attempt lands in ClickHouse; a receiver that hangs
holds up neither clicks nor the sink; dead letters are replayed from the CLI."""

from __future__ import annotations

import asyncio
import time

import aiohttp
import orjson
import pytest

from tests.delivery.receiver import ThreadedReceiver
from tests.system.test_postbacks import ADV_TOKEN, browser, postback
from tracker import signing
from tracker.testing import RedisServer, Service, wait_until


@pytest.fixture(scope="module")
def svc(tmp_path_factory):
    redis = RedisServer(tmp_path_factory.mktemp("redis"))
    redis.start()
    service = Service(
        tmp_path_factory.mktemp("svc"),
        redis,
        # the receivers here listen on loopback, which deliveries refuse by default
        TRACKER_DELIVERIES_ALLOWED_NETWORKS="127.0.0.0/8",
        TRACKER_DELIVERIES_BACKOFF_BASE_SECONDS="0.1",
        TRACKER_DELIVERIES_BACKOFF_MAX_SECONDS="0.4",
        TRACKER_DELIVERIES_MAX_ATTEMPTS="3",
        TRACKER_DELIVERIES_TIMEOUT_SECONDS="3",
        TRACKER_DELIVERIES_CONCURRENCY="4",
    )
    service.serve()
    status, body = service.api("POST", "/api/advertisers", {"id": "shop", "token": ADV_TOKEN})
    assert status == 201, body
    yield service
    service.stop_all()
    redis.stop()


async def click(session: aiohttp.ClientSession, base: str, slug: str, **params) -> str:
    query = "&".join(f"{k}={v}" for k, v in params.items())
    async with session.get(f"{base}/c/{slug}?{query}", allow_redirects=False) as r:
        assert r.status == 302
        return r.headers["Location"].rsplit("click_id=", 1)[1]


def target(svc: Service, **body) -> dict:
    status, reply = svc.api("POST", "/api/deliveries/targets", body)
    assert status == 201, reply
    return reply


async def test_postback_and_webhook_delivered_and_logged(svc):
    with ThreadedReceiver([200]) as partner, ThreadedReceiver([500, 200]) as crm:
        svc.add_link("dl-a", campaign_id="dl-camp", affiliate_id="dl-aff", advertiser_id="shop")
        target(
            svc,
            id="dl-pb",
            kind="postback",
            affiliate_id="dl-aff",
            url=partner.url + "/pb?their={sub1}&tx={txid}&amt={amount}&cur={currency}&st={status}",
            events=["accepted", "approved"],
        )
        hook = target(
            svc, id="dl-hook", kind="webhook", url=crm.url + "/hook", advertiser_id="shop"
        )
        async with browser() as session:
            click_id = await click(session, svc.base_url, "dl-a", sub1="AFF-CLICK-77")
            status, body = await postback(
                session, svc.base_url, cid=click_id, txid="dl-1", amount="49.90", currency="EUR"
            )
            assert status == 200 and body["status"] == "accepted", body
            status, body = await postback(
                session, svc.base_url, txid="dl-1", status="approved", click_id=click_id
            )
            assert status == 200, body
        await asyncio.to_thread(wait_until, lambda: len(partner.requests) == 2, 30, "postbacks")
        await asyncio.to_thread(wait_until, lambda: len(crm.requests) == 3, 30, "webhooks")
    assert [r["path"] for r in partner.requests] == [
        "/pb?their=AFF-CLICK-77&tx=dl-1&amt=49.90&cur=EUR&st=pending",
        "/pb?their=AFF-CLICK-77&tx=dl-1&amt=49.90&cur=EUR&st=approved",
    ]
    kinds = [orjson.loads(r["body"])["type"] for r in crm.requests]
    assert sorted(kinds) == ["conversion.accepted", "conversion.accepted", "conversion.approved"]
    for request in crm.requests:
        h = request["headers"]
        assert (
            signing.verify(
                hook["secret"],
                h[signing.SIGNATURE_HEADER],
                h[signing.TIMESTAMP_HEADER],
                "POST",
                "/hook",
                "",
                request["body"],
                now=time.time(),
                window=300,
            )
            is None
        )
    # every attempt in ClickHouse: the webhook's first call failed and was retried
    svc.wait_count("deliveries", 5, "target_id IN ('dl-pb', 'dl-hook')")
    rows = svc.sql(
        "SELECT target_id, trigger, attempt, outcome, status_code FROM tracker.deliveries "
        "WHERE target_id IN ('dl-pb', 'dl-hook') ORDER BY target_id, trigger, attempt"
    )
    assert [(r["target_id"], r["trigger"], r["attempt"], r["outcome"]) for r in rows] == [
        ("dl-hook", "accepted", 1, "http_error"),
        ("dl-hook", "accepted", 2, "delivered"),
        ("dl-hook", "approved", 1, "delivered"),
        ("dl-pb", "accepted", 1, "delivered"),
        ("dl-pb", "approved", 1, "delivered"),
    ]
    metrics = await asyncio.to_thread(lambda: svc_metrics(svc))
    assert 'tracker_deliveries_total{kind="webhook",outcome="http_error"} 1.0' in metrics


def svc_metrics(svc: Service) -> str:
    import urllib.request

    with urllib.request.urlopen(svc.base_url + "/metrics", timeout=10) as r:
        return r.read().decode()


async def test_a_hanging_receiver_holds_up_neither_clicks_nor_the_sink(svc):
    """Every one of the worker's call slots hangs on the receiver; meanwhile clicks
    redirect and are stored, and conversions are stored, before the receiver answers."""
    with ThreadedReceiver(["hang"]) as stuck:
        svc.add_link("dl-h", campaign_id="dl-hc", affiliate_id="dl-haff", advertiser_id="shop")
        target(
            svc,
            id="dl-stuck",
            kind="postback",
            affiliate_id="dl-haff",
            url=stuck.url + "/s?t={txid}",
        )
        async with browser() as session:
            for n in range(6):  # more than the worker's 4 call slots
                click_id = await click(session, svc.base_url, "dl-h")
                status, _ = await postback(session, svc.base_url, cid=click_id, txid=f"h-{n}")
                assert status == 200
        await asyncio.to_thread(wait_until, lambda: stuck.hanging >= 4, 30, "4 calls hanging")
        latencies = []
        async with browser() as session:
            for _ in range(200):
                started = time.perf_counter()
                await click(session, svc.base_url, "dl-h", sub2="during-hang")
                latencies.append(time.perf_counter() - started)
        await asyncio.to_thread(svc.wait_count, "clicks", 200, "sub2 = 'during-hang'")
        await asyncio.to_thread(svc.wait_count, "conversions", 6, "link_slug = 'dl-h'")
        assert stuck.hanging >= 4 and not stuck.release.is_set()  # no answer all along
        latencies.sort()
        print(
            f"\nclicks while every delivery slot hangs: p50 {latencies[100] * 1000:.2f} ms, "
            f"p99 {latencies[198] * 1000:.2f} ms"
        )
        stuck.release.set()
        await asyncio.to_thread(wait_until, lambda: len(stuck.requests) >= 6, 30, "the rest")


async def test_dead_letters_replayed_from_the_cli(svc):
    with ThreadedReceiver([500, 500, 500, 200]) as down:
        svc.add_link("dl-d", campaign_id="dl-dc", affiliate_id="dl-daff", advertiser_id="shop")
        target(
            svc, id="dl-down", kind="postback", affiliate_id="dl-daff", url=down.url + "/d?t={txid}"
        )
        async with browser() as session:
            click_id = await click(session, svc.base_url, "dl-d")
            assert (await postback(session, svc.base_url, cid=click_id, txid="dead-1"))[0] == 200

        def dead() -> list:
            return [
                d
                for d in svc.api("GET", "/api/deliveries")[1]["dead"]
                if d["target_id"] == "dl-down"
            ]

        await asyncio.to_thread(wait_until, lambda: len(dead()) == 1, 30, "the dead letter")
        assert len(down.requests) == 3
        listing = svc.cli("deliveries", "list", "--failed")
        assert listing.returncode == 0 and dead()[0]["id"] in listing.stdout, listing.stderr
        replay = svc.cli("deliveries", "retry", "--failed")
        assert replay.returncode == 0, replay.stderr
        await asyncio.to_thread(wait_until, lambda: len(down.requests) == 4, 30, "the replay")
        assert dead() == []
        missing = svc.cli("deliveries", "retry", "nope")
        assert missing.returncode == 1 and "no dead letter" in missing.stderr
    svc.wait_count("deliveries", 4, "target_id = 'dl-down'")


def test_targets_api_validates(svc):
    for body, reason in (
        ({"id": "x1", "kind": "postback", "url": "https://p.example/"}, "affiliate_id"),
        ({"id": "x2", "kind": "webhook", "url": "https://p.example/", "colour": 1}, "unknown"),
        ({"id": "x3", "kind": "webhook", "url": "javascript:alert(1)"}, "http"),
    ):
        status, reply = svc.api("POST", "/api/deliveries/targets", body)
        assert status == 400 and reason in reply["reason"], reply
        assert svc.api("GET", f"/api/deliveries/targets/{body['id']}")[0] == 404
    target(svc, id="x4", kind="webhook", url="https://crm.example/h")
    assert (
        svc.api(
            "POST",
            "/api/deliveries/targets",
            {"id": "x4", "kind": "webhook", "url": "https://a.example/"},
        )[0]
        == 409
    )
    status, reply = svc.api("PATCH", "/api/deliveries/targets/x4", {"enabled": False})
    assert status == 200 and reply["enabled"] is False
    assert svc.api("PATCH", "/api/deliveries/targets/x4", {"events": ["paid"]})[0] == 400
    assert svc.api("DELETE", "/api/deliveries/targets/x4")[0] == 200
    assert svc.api("GET", "/api/deliveries/targets/x4")[0] == 404
    assert svc.api("GET", "/api/deliveries/targets", token=None)[0] == 401
