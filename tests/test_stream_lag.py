"""`/readyz` and the `tracker_stream_lag_events` gauge read the sink's lag by one rule."""

from __future__ import annotations

import redis.asyncio as aredis

from tracker import redis_keys as K
from tracker.stream_lag import shard_lag, stream_lag, stream_lag_async, streams


def test_shard_lag_rule():
    assert shard_lag([]) is None
    assert shard_lag([{"name": b"other", "lag": 7, "pending": 0}]) is None
    assert shard_lag([{"name": b"sink", "lag": 7, "pending": 2}]) == 7
    # Redis cannot tell the lag (entries deleted past the group's position): pending stands in
    assert shard_lag([{"name": "sink", "lag": None, "pending": 2}]) == 2


async def test_sync_and_async_agree(redis_server):
    client = redis_server.client()
    names = streams(3)  # shard 2 is never written: it adds nothing
    assert stream_lag(client, names) is None
    assert await both(redis_server.url, names) is None

    for shard, entries in ((0, 5), (1, 3)):
        for i in range(entries):
            client.xadd(names[shard], {"n": i})
        client.xgroup_create(names[shard], K.SINK_GROUP, id="0")
    client.xreadgroup(K.SINK_GROUP, "c", {names[0]: ">"}, count=2)
    assert stream_lag(client, names) == 3 + 3
    assert await both(redis_server.url, names) == 6

    # an unread entry deleted: Redis no longer knows shard 1's lag, its pending count (1)
    # stands in, on both sides
    client.xreadgroup(K.SINK_GROUP, "c", {names[1]: ">"}, count=1)
    last = client.xrevrange(names[1], count=1)[0][0]
    client.xdel(names[1], last)
    (group,) = client.xinfo_groups(names[1])
    assert group["lag"] is None and group["pending"] == 1
    expected = 3 + 1
    assert stream_lag(client, names) == expected
    assert await both(redis_server.url, names) == expected


async def both(url: str, names: list[str]) -> int | None:
    client = aredis.Redis.from_url(url)
    try:
        return await stream_lag_async(client, names)
    finally:
        await client.aclose()
