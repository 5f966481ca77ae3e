"""Create-then-stage of hash records (links, advertisers): one implementation for the
sync (CLI, start-up) and async (admin API) clients, over a real redis-server."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import redis.asyncio as aredis

from tracker import advertisers, links
from tracker import redis_keys as K
from tracker.hashcache import create, create_async, write_snapshot

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


def test_snapshot_writes_at_the_same_time_in_one_process(tmp_path):
    """An admin call's reload and the refresh loop's write the snapshot at once (two
    executor threads of one process): neither fails, and the file is one whole write."""
    path = tmp_path / "links.snapshot.json"
    payloads = [bytes([65 + i]) * 4096 for i in range(8)]

    def writer(data: bytes) -> None:
        for _ in range(200):
            write_snapshot(path, data)

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(writer, payloads))  # re-raises any write's error
    assert path.read_bytes() in payloads
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temporary file left
