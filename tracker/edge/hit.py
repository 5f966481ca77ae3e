"""An aiohttp request as the click core reads it (`Hit`), and a `Reply` as aiohttp sends it."""

from __future__ import annotations

from aiohttp import web
from multidict import CIMultiDict

from tracker.edge.clicks import Hit, Reply


def hit_of(request: web.Request) -> Hit:
    peer = request.transport.get_extra_info("peername") if request.transport else None
    return Hit(
        request.method,
        request.raw_path,
        request.rel_url.raw_query_string,
        request.headers,
        peer[0] if peer else None,
    )


def to_response(reply: Reply) -> web.Response:
    return web.Response(status=reply.status, body=reply.body, headers=CIMultiDict(reply.headers))
