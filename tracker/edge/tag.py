"""`GET /t.js`: the first-party tag, served from memory.

The file ships in the package (static/t.js) and is read once per process. Its version is
a hash of its bytes: `/t.js?v=VERSION` is cached for a year (a new release has a new
version, so a new URL), plain `/t.js` for an hour and revalidated by ETag. Browsers that
accept gzip get the gzipped copy.
"""

from __future__ import annotations

import gzip
import hashlib
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from aiohttp import web

SOURCE = Path(__file__).with_name("static") / "t.js"
YEAR = 365 * 86400
HOUR = 3600


@dataclass(frozen=True, slots=True)
class Tag:
    body: bytes
    gzipped: bytes
    version: str  # first 12 hex digits of the SHA-256 of the body

    @property
    def etag(self) -> str:
        return f'"{self.version}"'


@cache
def tag() -> Tag:
    body = SOURCE.read_bytes()
    return Tag(body, gzip.compress(body, 9, mtime=0), hashlib.sha256(body).hexdigest()[:12])


def cache_control(requested_version: str | None, version: str) -> str:
    if requested_version == version:
        return f"public, max-age={YEAR}, immutable"
    return f"public, max-age={HOUR}"


def snippets(
    base_url: str, advertiser_id: str, click_param: str, lookback_days: int = 30
) -> dict[str, str]:
    """The script tags an advertiser pastes: every page (landing), and the thank-you page.
    The ids and the parameter name are validated on save (no quotes or brackets)."""
    src = f"{base_url}/t.js?v={tag().version}"
    param = "" if click_param == "click_id" else f' data-param="{click_param}"'
    if lookback_days != 30:  # the tag's own default
        param += f' data-lookback-days="{lookback_days}"'
    return {
        "every_page": f'<script async src="{src}" data-advertiser="{advertiser_id}"{param}>'
        "</script>",
        "thank_you_page": f'<script async src="{src}" data-advertiser="{advertiser_id}"{param} '
        'data-txid="ORDER_ID" data-amount="19.99" data-currency="EUR" data-event="sale">'
        "</script>",
    }


async def serve(request: web.Request) -> web.Response:
    t = tag()
    headers = {
        "Cache-Control": cache_control(request.query.get("v"), t.version),
        "ETag": t.etag,
        "Vary": "Accept-Encoding",
        "Access-Control-Allow-Origin": "*",
    }
    if t.etag in request.headers.get("If-None-Match", ""):
        return web.Response(status=304, headers=headers)
    body = t.body
    if "gzip" in request.headers.get("Accept-Encoding", ""):
        body = t.gzipped
        headers["Content-Encoding"] = "gzip"
    headers["Content-Type"] = "application/javascript; charset=utf-8"
    return web.Response(body=body, headers=headers)


def add_routes(app: web.Application) -> None:
    app.router.add_get("/t.js", serve)
