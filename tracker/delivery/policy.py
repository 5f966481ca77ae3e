"""Retry timing and which addresses a delivery may reach. Pure functions."""

from __future__ import annotations

import ipaddress
import random

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address

# Cloud metadata services that sit on otherwise public-looking addresses.
METADATA = (
    ipaddress.ip_network("100.100.100.200/32"),  # Alibaba Cloud
    ipaddress.ip_network("fd00:ec2::254/128"),  # AWS over IPv6
)


def backoff_seconds(
    attempt: int, base: float, cap: float, rng: random.Random | None = None
) -> float:
    """Wait before attempt `attempt + 1`, after `attempt` (>= 1) failed: exponential from
    `base`, at most `cap`, with jitter over its upper half so retries of many deliveries
    that failed together spread out instead of arriving together."""
    ceiling = min(cap, base * 2 ** min(attempt - 1, 60))
    return ceiling * (0.5 + 0.5 * (rng or random).random())


def blocked(address: Address, allowed: list[Network]) -> bool:
    """True for an address a delivery must not reach: anything not globally routable
    (loopback, private, link-local including 169.254.169.254, shared, reserved,
    multicast, unspecified) and known metadata services, unless inside `allowed`."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        address = address.ipv4_mapped
    if any(address in net for net in allowed):
        return False
    if any(address in net for net in METADATA):
        return True
    return not address.is_global or address.is_multicast


def parse_allowed(cidrs: list[str]) -> list[Network]:
    return [ipaddress.ip_network(c, strict=False) for c in cidrs]
