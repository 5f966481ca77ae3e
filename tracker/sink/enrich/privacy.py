"""IP anonymisation before storage. Pure."""

from __future__ import annotations

import ipaddress
from functools import lru_cache


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
