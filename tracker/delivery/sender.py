"""One delivery attempt over HTTP: SSRF-guarded, bounded in time and in what it reads.

Destinations are checked where the connection is made: the connector's resolver refuses
a name that resolves to an address `policy.blocked` refuses (so DNS cannot rebind the
name between a check and the connect), and a literal address is checked before the
request. Redirects are not followed; a reply body is read up to `max_response_bytes`.
Webhooks are signed as inbound postbacks are (tracker/signing.py): the receiver checks
`X-Tracker-Signature` over the timestamp, method, path, query and body with its secret.
"""

from __future__ import annotations

import asyncio
import ipaddress
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver

from tracker import signing
from tracker.delivery.policy import Network, blocked
from tracker.reasons import DeliveryOutcome

USER_AGENT = "tracker-delivery/1"
IDEMPOTENCY_HEADER = "Idempotency-Key"
DELIVERY_HEADER = "X-Tracker-Delivery"
MAX_ERROR = 300


class BlockedAddress(OSError):
    """The destination resolves to an address deliveries may not reach."""


class GuardedResolver(AbstractResolver):
    def __init__(self, allowed: list[Network]) -> None:
        self.allowed = allowed
        self.inner = DefaultResolver()

    async def resolve(self, host: str, port: int = 0, family: Any = 0) -> list[ResolveResult]:
        results = await self.inner.resolve(host, port, family)
        for result in results:
            if blocked(ipaddress.ip_address(result["host"]), self.allowed):
                raise BlockedAddress(f"{host} resolves to a non-public address")
        return results

    async def close(self) -> None:
        await self.inner.close()


@dataclass(slots=True)
class Attempt:
    outcome: DeliveryOutcome
    status: int = 0
    latency_ms: int = 0
    error: str = ""


class Sender:
    def __init__(
        self, *, timeout: float, max_response_bytes: int, allowed: list[Network], concurrency: int
    ) -> None:
        self.timeout = timeout
        self.max_response_bytes = max_response_bytes
        self.allowed = allowed
        self.concurrency = concurrency
        self.session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> Sender:
        connector = aiohttp.TCPConnector(
            resolver=GuardedResolver(self.allowed), limit=self.concurrency, ttl_dns_cache=0
        )
        self.session = aiohttp.ClientSession(
            connector=connector,
            timeout=aiohttp.ClientTimeout(total=self.timeout),
            headers={"User-Agent": USER_AGENT},
            auto_decompress=False,
            trust_env=False,
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self.session is not None:
            await self.session.close()

    def headers(self, job: dict, secret: str, now: float) -> dict[str, str]:
        headers = {IDEMPOTENCY_HEADER: job["id"], DELIVERY_HEADER: job["id"]}
        if job["kind"] == "webhook":
            parts = urlsplit(job["url"])
            timestamp = str(int(now))
            headers["Content-Type"] = "application/json"
            headers[signing.TIMESTAMP_HEADER] = timestamp
            headers[signing.SIGNATURE_HEADER] = signing.sign(
                secret,
                timestamp,
                "POST",
                parts.path or "/",
                parts.query,
                job["body"].encode(),
            )
        return headers

    async def send(self, job: dict, secret: str = "") -> Attempt:
        assert self.session is not None
        started = time.monotonic()
        url = job["url"]

        def took() -> int:
            return int((time.monotonic() - started) * 1000)

        host = urlsplit(url).hostname or ""
        try:
            literal = ipaddress.ip_address(host)
        except ValueError:
            literal = None
        if literal is not None and blocked(literal, self.allowed):
            return Attempt(DeliveryOutcome.BLOCKED_ADDRESS, error=f"{host} is not public")
        try:
            async with self.session.request(
                job["method"],
                url,
                data=job["body"].encode() if job["body"] else None,
                headers=self.headers(job, secret, time.time()),
                allow_redirects=False,
            ) as response:
                body = await response.content.read(self.max_response_bytes)
                if 200 <= response.status < 300:
                    return Attempt(DeliveryOutcome.DELIVERED, response.status, took())
                return Attempt(
                    DeliveryOutcome.HTTP_ERROR,
                    response.status,
                    took(),
                    body[:MAX_ERROR].decode(errors="replace"),
                )
        except TimeoutError:
            return Attempt(DeliveryOutcome.TIMEOUT, 0, took(), f"no reply in {self.timeout}s")
        except aiohttp.ClientConnectorError as exc:
            if isinstance(exc.os_error, BlockedAddress):
                return Attempt(DeliveryOutcome.BLOCKED_ADDRESS, 0, took(), str(exc.os_error))
            return Attempt(DeliveryOutcome.CONNECTION_ERROR, 0, took(), _short(exc))
        except (aiohttp.ClientError, OSError, asyncio.IncompleteReadError) as exc:
            return Attempt(DeliveryOutcome.CONNECTION_ERROR, 0, took(), _short(exc))


def _short(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:MAX_ERROR]
