"""A Redis restarted with empty memory loses no attribution: conversions find their clicks
in ClickHouse (the edge defers them to the sink) until `tracker rebuild-hot` refills the
hot window, after which they are attributed at once again. Real processes, a real
redis-server restart."""

from __future__ import annotations

import asyncio
import shutil

from tests.system.test_postbacks import ADV_TOKEN, browser, click, postback
from tracker import hot
from tracker import redis_keys as K
from tracker.ids import uuid7_time_ms
from tracker.testing import Service, wait_until


def credited(svc: Service, conversion_id: str) -> list[tuple[str, str]]:
    rows = svc.sql(
        "SELECT campaign_id, toString(click_id) AS click FROM tracker.attribution_credits "
        f"WHERE conversion_id = '{conversion_id}' AND model = 'linear' ORDER BY click_time"
    )
    return [(r["campaign_id"], r["click"]) for r in rows]


def empty_restart(svc: Service) -> None:
    """Stop redis-server, drop its files, start it again on the same port."""
    server = svc.redis
    server.stop()
    for path in server.folder.iterdir():
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink()
    server.start()
    assert server.client().dbsize() == 0


async def test_an_emptied_redis_loses_no_attribution_and_rebuild_hot_refills_it(service):
    svc = service
    svc.start_sink()
    svc.start_edges(1)
    assert svc.api("POST", "/api/advertisers", {"id": "shop", "token": ADV_TOKEN})[0] == 201
    svc.add_link("hw-a", campaign_id="ca", advertiser_id="shop")
    svc.add_link("hw-b", campaign_id="cb", advertiser_id="shop")
    async with browser() as session:
        first = await click(session, svc.base_url, "hw-a")
        second = await click(session, svc.base_url, "hw-b")
        svc.wait_count("clicks", 2)

        empty_restart(svc)
        redis = svc.redis.client()
        # the operator restores what is not click data (links stay cached in the edge)
        wait_until(
            lambda: (
                svc.api("POST", "/api/advertisers", {"id": "shop", "token": ADV_TOKEN})[0] == 201
            ),
            30,
            "the advertiser stored again",
        )
        # Redis just came back empty: a 503 is sent again, as an advertiser's server does
        for _ in range(50):
            status, body = await postback(session, svc.base_url, click_id=second, txid="hw-1")
            if status != 503:
                break
            await asyncio.sleep(0.2)
        assert status == 200 and body.get("attribution") == "deferred", body
        assert body["status"] == "accepted"
        svc.wait_count("attribution_credits", 2, f"conversion_id = '{body['conversion_id']}'")
        assert credited(svc, body["conversion_id"]) == [("ca", first), ("cb", second)]
        [row] = svc.sql(
            "SELECT attributed, toString(click_id) AS c, campaign_id FROM tracker.conversions "
            "WHERE txid = 'hw-1'"
        )
        assert row == {"attributed": 1, "c": second, "campaign_id": "cb"}
        assert hot.get(redis, first) is None  # still not in Redis

        rebuilt = svc.cli("rebuild-hot", timeout=120)
        assert rebuilt.returncode == 0, rebuilt.stderr
        assert "2 clicks" in rebuilt.stdout
        assert hot.get(redis, first)["campaign_id"] == "ca"
        assert int(redis.get(K.HOT_SINCE)) <= uuid7_time_ms(first)

        status, body = await postback(session, svc.base_url, click_id=first, txid="hw-2")
        assert (body["attributed"], body["attribution"]) == (True, "online")
        svc.wait_count("attribution_credits", 1, f"conversion_id = '{body['conversion_id']}'")
        assert credited(svc, body["conversion_id"]) == [("ca", first)]
