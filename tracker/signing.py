"""Signed postbacks: HMAC-SHA256 over a canonical form of the request. Pure functions.

    X-Tracker-Timestamp: <Unix seconds>
    X-Tracker-Signature: sha256=<hex HMAC-SHA256(token, canonical)>

    canonical = timestamp + "\\n" + METHOD + "\\n" + path + "\\n"
              + query parameters sorted and percent-encoded (k=v&k=v) + "\\n"
              + hex SHA-256 of the body

Sorting makes the signature independent of parameter order; the timestamp bounds replays
(a replay inside the window is a duplicate transaction anyway).
"""

from __future__ import annotations

import hashlib
import hmac
from urllib.parse import parse_qsl, urlencode

from tracker.reasons import PostbackRefusal

TIMESTAMP_HEADER = "X-Tracker-Timestamp"
SIGNATURE_HEADER = "X-Tracker-Signature"


def canonical(timestamp: str, method: str, path: str, query: str, body: bytes) -> bytes:
    params = sorted(parse_qsl(query, keep_blank_values=True))
    return "\n".join(
        [timestamp, method.upper(), path, urlencode(params), hashlib.sha256(body).hexdigest()]
    ).encode()


def sign(token: str, timestamp: str, method: str, path: str, query: str, body: bytes) -> str:
    digest = hmac.new(
        token.encode(), canonical(timestamp, method, path, query, body), hashlib.sha256
    ).hexdigest()
    return f"sha256={digest}"


def verify(
    token: str,
    signature: str,
    timestamp: str,
    method: str,
    path: str,
    query: str,
    body: bytes,
    *,
    now: float,
    window: int,
) -> PostbackRefusal | None:
    """None when the signature is good; otherwise the reason it is refused."""
    try:
        ts = int(timestamp)
    except ValueError:
        return PostbackRefusal.BAD_TIMESTAMP
    if abs(now - ts) > window:
        return PostbackRefusal.STALE_SIGNATURE
    expected = sign(token, timestamp, method, path, query, body)
    if not hmac.compare_digest(signature.strip().encode(), expected.encode()):
        return PostbackRefusal.BAD_SIGNATURE
    return None
