"""Create-then-stage of hash records (links, advertisers): one implementation for the
sync (CLI, start-up) and async (admin API) clients, over a real redis-server."""

from __future__ import annotations

import redis.asyncio as aredis

from tracker import advertisers, links
from tracker import redis_keys as K
from tracker.hashcache import create, create_async

LINK = {"slug": "spring", "destination": "https://shop.example/spring"}


def test_sync_create_stores_once_and_stages_the_rest(redis_server):
    client = redis_server.client()
    link = links.new_link(LINK)
    assert links.create(client, link)
    assert not create(client, links.new_record(links.new_link({**LINK, "campaign_id": "x"})))
    assert links.Link.from_json(client.hget(K.LINKS_HASH, "spring")).campaign_id == ""
    assert client.get(K.LINKS_VERSION) == b"1"  # the refused second create staged nothing
    assert client.xlen(K.EVENTS_STREAM) == 1  # one mirror row

    adv = advertisers.new_advertiser({"id": "shop", "token": "t" * 20})
    assert advertisers.create(client, adv)
    assert not advertisers.create(client, adv)
    assert client.get(K.ADVERTISERS_VERSION) == b"1"


async def test_async_create_is_the_same(redis_server):
    client = aredis.Redis.from_url(redis_server.url)
    try:
        link = links.new_link(LINK)
        assert await create_async(client, links.new_record(link))
        assert not await create_async(client, links.new_record(link))
        assert await client.get(K.LINKS_VERSION) == b"1"
        assert await client.xlen(K.EVENTS_STREAM) == 1
    finally:
        await client.aclose()
