"""Browser conversions (`/t/conversion`, sent by the tag) in process, over a real
redis-server: bounded like the pixel, per address and per click id."""

from __future__ import annotations

import orjson
import pytest
from aiohttp.test_utils import TestClient, TestServer

from tracker import config
from tracker import redis_keys as K
from tracker.clock import FixedClock
from tracker.edge.app import create_app
from tracker.stream_payload import unpack
from tracker.testing import TOKEN

CLOCK = FixedClock(1_767_225_600.0)  # 2026-01-01 00:00:00 UTC: every request in one hour
SHOP = "https://shop.example"


@pytest.fixture
async def client(tmp_path, redis_server):
    settings = config.load(
        env={
            "TRACKER_DATA_DIR": str(tmp_path / "data"),
            "TRACKER_REDIS_URL": redis_server.url,
            "TRACKER_ADMIN_TOKEN": TOKEN,
            "TRACKER_CONVERSIONS_PIXEL_PER_VISITOR_PER_HOUR": "3",
            "TRACKER_CONVERSIONS_PIXEL_PER_IP_PER_HOUR": "10",
        }
    )
    async with TestClient(TestServer(create_app(settings, clock=CLOCK))) as client:
        r = await client.post(
            "/api/advertisers",
            json={"id": "shop", "allowed_origins": [SHOP]},
            headers={"Authorization": f"Bearer {TOKEN}"},
        )
        assert r.status == 201
        yield client


async def send(client: TestClient, **fields) -> tuple[int, dict]:
    r = await client.post(
        "/t/conversion", data={"advertiser": "shop", **fields}, headers={"Origin": SHOP}
    )
    return r.status, orjson.loads(await r.read())


def stored(redis_server) -> list[str]:
    txids = []
    for _, fields in redis_server.client().xrange(K.EVENTS_STREAM):
        for line in unpack(fields.get(b"conversions", b"")).split(b"\n"):
            if line:
                txids.append(orjson.loads(line)["txid"])
    return txids


async def test_one_click_id_is_credited_a_bounded_number_of_times(client, redis_server):
    click_id = "0190a0a0-0000-7000-8000-0000000000c1"  # long expired: recorded unattributed
    answers = [await send(client, txid=f"c-{n}", click_id=click_id) for n in range(5)]
    assert [status for status, _ in answers] == [200, 200, 200, 429, 429]
    assert answers[-1][1]["reason"] == "rate_limited"
    assert stored(redis_server) == ["c-0", "c-1", "c-2"]


async def test_one_address_is_bounded_whatever_the_click_ids(client, redis_server):
    statuses = []
    for n in range(12):
        click_id = f"0190a0a0-0000-7000-8000-{n:012x}"
        statuses.append((await send(client, txid=f"ip-{n}", click_id=click_id))[0])
    assert statuses == [200] * 10 + [429] * 2
    assert len(stored(redis_server)) == 10
