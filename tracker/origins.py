"""Web origins (`scheme://host[:port]`): reading them from a browser's request and matching
them against an advertiser's allowlist. Pure functions, no I/O.

An allowlist entry is an origin (`https://shop.example`, `http://localhost:8080`) or a
wildcard over subdomains (`https://*.shop.example`, which also matches the bare domain).
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit

_HOST_RE = re.compile(r"\A(\*\.)?[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)*\Z")
MAX_ORIGINS = 50
DEFAULT_PORTS = {"http": 80, "https": 443}


def normalize(text: str) -> str | None:
    """The canonical form of an allowlist entry, or None when it is not an origin."""
    if not isinstance(text, str) or len(text) > 255:
        return None
    try:
        parts = urlsplit(text.strip().lower())
        port = parts.port
    except ValueError:
        return None
    host = parts.hostname or ""
    if parts.scheme not in DEFAULT_PORTS or not _HOST_RE.match(host):
        return None
    if parts.path not in ("", "/") or parts.query or parts.fragment or parts.username:
        return None
    if port is None or port == DEFAULT_PORTS[parts.scheme]:
        return f"{parts.scheme}://{host}"
    return f"{parts.scheme}://{host}:{port}"


def of_request(origin: str | None, referer: str | None) -> str:
    """The page's origin: the Origin header, else the Referer's origin, else ""."""
    for candidate in (origin, referer):
        if candidate and candidate != "null":
            parts = urlsplit(candidate)
            found = normalize(f"{parts.scheme}://{parts.netloc}") if parts.netloc else None
            if found:
                return found
    return ""


def allowed(origin: str, allowlist: list[str]) -> bool:
    """True when the (normalized) origin is on the allowlist; an empty list allows any."""
    if not allowlist:
        return True
    if not origin:
        return False
    scheme, _, rest = origin.partition("://")
    for entry in allowlist:
        if entry == origin:
            return True
        entry_scheme, _, entry_rest = entry.partition("://")
        if entry_rest.startswith("*.") and entry_scheme == scheme:
            domain = entry_rest[2:]
            if rest == domain or rest.endswith("." + domain):
                return True
    return False
