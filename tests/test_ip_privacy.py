"""tracker/ip_privacy.py: truncation, and keyed hashes whose secret changes every hour and
is shared by the edges through a real Redis."""

from __future__ import annotations

import redis.asyncio as aioredis

from tracker import redis_keys as K
from tracker.clock import FixedClock
from tracker.ip_privacy import SECRET_TTL, IpKeys, anonymize_ip

HOUR = 3600.0


def test_truncation():
    assert anonymize_ip("203.0.113.77") == "203.0.113.0"
    assert anonymize_ip("::ffff:203.0.113.77") == "203.0.113.0"
    assert anonymize_ip("2001:db8:1:2:3:4:5:6") == "2001:db8:1::"
    assert anonymize_ip("not an ip") == "::"


async def test_edges_share_the_hourly_secret_and_it_rotates(redis_server):
    clock = FixedClock(1_700_000_000.0 // HOUR * HOUR + 10)
    first = IpKeys(aioredis.Redis.from_url(redis_server.url), clock)
    second = IpKeys(aioredis.Redis.from_url(redis_server.url), clock)
    await first.refresh()
    await second.refresh()
    a, b = "203.0.113.77", "203.0.113.78"
    assert first.key_of(a) == second.key_of(a)  # two edges count one address together
    assert first.key_of(a) != first.key_of(b)  # the same /24 is still two addresses
    assert a not in first.key_of(a) and len(first.key_of(a)) == 16
    this_hour = first.key_of(a)

    clock.advance(HOUR)  # the next hour's secret was fetched ahead
    assert first.key_of(a) == second.key_of(a) != this_hour
    ttl = redis_server.client().ttl(K.ip_key_secret(first.hour()))
    assert 0 < ttl <= SECRET_TTL

    clock.advance(3 * HOUR)
    await first.refresh()
    assert min(first.secrets) >= first.hour() - 1  # old secrets forgotten


def test_without_redis_a_process_keeps_its_own_secret():
    keys = IpKeys(redis=None, clock=FixedClock(1_700_000_000.0))
    assert keys.key_of("198.51.100.1") == keys.key_of("198.51.100.1")
    assert keys.key_of("198.51.100.1") != keys.key_of("198.51.100.2")
