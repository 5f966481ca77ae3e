"""`privacy.anonymize_ip`: no full client address reaches a disk.

With the setting on, the edge truncates the address before anything is buffered, spooled
or written to Redis (whose AOF is a disk): the last IPv4 octet and the last 80 bits of
an IPv6 address are zeroed. The per-IP fraud counters still need to tell addresses
apart, so the edge adds `ip_key`, a keyed hash of the full address (BLAKE2b, 64 bits),
and the sink counts by it. The key is a random secret per hour, the fraud counters'
longest window: the edges share it through Redis, where it expires with the counters
(`WINDOW_TTL` + an hour), after which neither the counts nor the hashes can be linked
to an address (a guess of every IPv4 address needs that hour's secret).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import os
from functools import lru_cache
from hashlib import blake2b

from tracker import redis_keys as K
from tracker.background import Beat
from tracker.clock import Clock, clock_ms, system_clock
from tracker.types import AsyncRedis

log = logging.getLogger(__name__)
HOUR_MS = 3_600_000
SECRET_TTL = 3 * 3600  # the counters' two hours, and the hour before they start
REFRESH_SECONDS = 30.0


@lru_cache(maxsize=65536)
def anonymize_ip(ip: str) -> str:
    """Zero the last octet of an IPv4 address (also inside ::ffff:a.b.c.d) and the last 80
    bits of an IPv6 address; anything unparsable becomes '::'."""
    try:
        addr = ipaddress.ip_address(ip)
    except ValueError:
        return "::"
    if addr.version == 6 and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    if addr.version == 4:
        return str(ipaddress.IPv4Address(int(addr) & 0xFFFFFF00))
    return str(ipaddress.IPv6Address(int(addr) & ~((1 << 80) - 1)))


def ip_key(ip: str, secret: bytes) -> str:
    return blake2b(ip.encode(), key=secret, digest_size=8).hexdigest()


class IpKeys:
    """The hourly secrets, shared by every edge through Redis, refreshed in the
    background (the hot path only reads a dict). An hour whose secret could not be read
    (Redis away) gets one of this process's own: its counts are split by edge, not lost."""

    def __init__(self, redis: AsyncRedis, clock: Clock = system_clock) -> None:
        self.redis = redis
        self.clock = clock
        self.secrets: dict[int, bytes] = {}
        self._beat = Beat()

    def hour(self) -> int:
        return clock_ms(self.clock) // HOUR_MS

    def key_of(self, ip: str) -> str:
        hour = self.hour()
        secret = self.secrets.get(hour)
        if secret is None:
            secret = self.secrets[hour] = os.urandom(16)
        return ip_key(ip, secret)

    async def refresh(self) -> None:
        """Read (or create) this hour's and the next hour's secret; forget old ones."""
        hour = self.hour()
        for h in (hour, hour + 1):
            key = K.ip_key_secret(h)
            await self.redis.set(key, os.urandom(16), nx=True, ex=SECRET_TTL)
            secret = await self.redis.get(key)
            if isinstance(secret, bytes) and secret:
                self.secrets[h] = secret
        for old in [h for h in self.secrets if h < hour - 1]:
            del self.secrets[old]

    async def start(self) -> None:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.refresh(), 2.0)
        self._beat.start(self._run())

    async def _run(self) -> None:
        while await self._beat.wait(REFRESH_SECONDS):
            try:
                await asyncio.wait_for(self.refresh(), 5.0)
            except Exception as exc:  # Redis away: the secrets held stay in use
                log.debug("ip key refresh failed: %r", exc)

    async def stop(self) -> None:
        await self._beat.stop()
