"""The client's IP address: X-Forwarded-For is believed only from trusted proxies."""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from functools import lru_cache

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
UNKNOWN_IP = "::"


@lru_cache(maxsize=4096)
def _parse(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    text = text.strip()
    if text.startswith("[") and "]" in text:  # [v6]:port
        text = text[1 : text.index("]")]
    elif text.count(":") == 1:  # v4:port
        text = text.split(":", 1)[0]
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        return None
    # a dual-stack socket shows IPv4 peers as ::ffff:a.b.c.d: compare them as IPv4
    mapped = getattr(ip, "ipv4_mapped", None)
    return mapped or ip


@lru_cache(maxsize=4096)
def _text(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str:
    return str(ip)  # ipaddress formats anew on every str(): a microsecond per click


def _trusted(ip, networks: Sequence[Network]) -> bool:
    return any(ip in net for net in networks)


def client_ip(peer: str | None, forwarded_for: str | None, trusted: Sequence[Network]) -> str:
    """The address to record for a request.

    When the direct peer is a trusted proxy, X-Forwarded-For is read from the right,
    skipping trusted hops; the first untrusted address is the client. Anything unparsable
    stops the walk, so a client cannot inject addresses past the proxies we trust.
    """
    ip = _parse(peer) if peer else None
    if ip is None:
        return UNKNOWN_IP
    if forwarded_for and trusted and _trusted(ip, trusted):
        for hop in reversed(forwarded_for.split(",")):
            candidate = _parse(hop)
            if candidate is None:
                break
            ip = candidate
            if not _trusted(candidate, trusted):
                break
    return _text(ip)
