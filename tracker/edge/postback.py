"""ConversionIntake in: `GET|POST /postback` (server to server) and the conversion pixel.

Steps: read parameters -> validate -> authenticate the advertiser -> record -> reply.
Recording awaits Redis (unlike clicks): the reply says whether the conversion was new, a
duplicate or refused, and an accepted conversion is already in the events stream. One
script checks the transaction's current status and, only if it is still what this
request saw, stores the new status and appends the row to the stream, so 50 identical
postbacks at once give exactly one `accepted`.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import time
from urllib.parse import parse_qsl

import orjson
from aiohttp import web

from tracker import redis_keys as K
from tracker import signing
from tracker.edge import conversion_input
from tracker.edge.clicks import request_meta
from tracker.edge.conversion_input import Rejected
from tracker.edge.hit import hit_of
from tracker.edge.intake import ConversionIntake
from tracker.edge.keys import CONVERSIONS
from tracker.ids import uuid7, uuid7_time_ms
from tracker.records import RequestMeta
from tracker.timefmt import now_ms

log = logging.getLogger(__name__)

# KEYS: transaction record, events stream.
# ARGV: expected current status ('' = none), new status, record JSON, TTL seconds, then the
# stream entry's field/value pairs.
RECORD_CONVERSION = """
local current = redis.call('HGET', KEYS[1], 'status') or ''
if current ~= ARGV[1] then
  return {'conflict', current}
end
if current == '' then
  redis.call('HSET', KEYS[1], 'status', ARGV[2], 'record', ARGV[3])
  redis.call('EXPIRE', KEYS[1], ARGV[4])
else
  redis.call('HSET', KEYS[1], 'status', ARGV[2])
end
redis.call('XADD', KEYS[2], '*', unpack(ARGV, 5))
return {'ok', current}
"""
ATTEMPTS = 5  # concurrent status reports for one transaction: re-read and try again
RECENT_CLICK_MS = 10_000
RECENT_CLICK_RETRIES = 100


def reply(
    status: str, reason: str | None, conversion_id: str | None, http: int = 200, **extra
) -> web.Response:
    body = {"status": status, "reason": reason, "conversion_id": conversion_id, **extra}
    return web.Response(body=orjson.dumps(body), status=http, content_type="application/json")


async def read_params(request: web.Request, max_body: int) -> tuple[dict[str, str], bytes]:
    """Query parameters merged with a form or JSON body (the body wins)."""
    if request.content_length and request.content_length > max_body:
        raise Rejected(413, "body_too_large")
    body = await request.content.read(max_body + 1) if request.can_read_body else b""
    if len(body) > max_body:
        raise Rejected(413, "body_too_large")
    params = {
        k: v
        for k, v in parse_qsl(
            request.rel_url.raw_query_string, keep_blank_values=True, errors="replace"
        )
    }
    if body:
        ctype = request.content_type
        if ctype == "application/json":
            params.update(json_params(body))
        elif ctype in ("application/x-www-form-urlencoded", "application/octet-stream", ""):
            params.update(parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True))
        else:
            raise Rejected(415, "unsupported_content_type")
    return params, body


def json_params(body: bytes) -> dict[str, str]:
    """A JSON object of scalars, numbers kept as typed (never through float)."""
    try:
        data = json.loads(body, parse_float=str, parse_int=str, parse_constant=str)
    except (ValueError, UnicodeDecodeError):
        raise Rejected(400, "invalid_json") from None
    if not isinstance(data, dict):
        raise Rejected(400, "invalid_json")
    params = {}
    for key, value in data.items():
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            if value is None:
                continue
            raise Rejected(
                400, f"invalid_field_{key[:32]}" if key.isidentifier() else "invalid_field"
            )
        params[key] = str(value)
    return params


def authenticate(
    request: web.Request, token: str, params: dict[str, str], body: bytes, window: int
) -> None:
    signature = request.headers.get(signing.SIGNATURE_HEADER)
    if signature:
        reason = signing.verify(
            token,
            signature,
            request.headers.get(signing.TIMESTAMP_HEADER, ""),
            request.method,
            request.path,
            request.rel_url.raw_query_string,
            body,
            now=time.time(),
            window=window,
        )
        if reason:
            raise Rejected(401, reason)
        return
    given = params.get("token", "")
    if not given:
        raise Rejected(401, "missing_credentials")
    if not hmac.compare_digest(given.encode(), token.encode()):
        raise Rejected(401, "bad_token")


async def find_click(
    redis, conv: conversion_input.ConversionInput, visitor_id: str, lookback_ms: int, now: int
) -> tuple[dict | None, str]:
    """The click a new conversion is attributed to, or None and the reason."""
    if conv.click_id:
        raw = await redis.get(K.click_key(conv.click_id))
        # A click made a moment ago may still be in its edge's write buffer: wait a little.
        for _ in range(RECENT_CLICK_RETRIES):
            if raw is not None or now - uuid7_time_ms(conv.click_id) > RECENT_CLICK_MS:
                break
            await asyncio.sleep(0.01)
            raw = await redis.get(K.click_key(conv.click_id))
        if raw is None:
            return None, "unknown_or_expired_click"
        click = orjson.loads(raw)
        if click.get("advertiser_id") and click["advertiser_id"] != conv.advertiser:
            return None, "click_of_other_advertiser"
        return click, ""
    if not visitor_id:
        return None, "no_visitor"
    last = await redis.zrevrangebyscore(
        K.visitor_clicks_key(visitor_id), now, now - lookback_ms, start=0, num=1
    )
    if not last:
        return None, "no_click_in_lookback"
    raw = await redis.get(K.click_key(last[0].decode()))
    return (orjson.loads(raw), "") if raw else (None, "no_click_in_lookback")


async def record(
    ctx: ConversionIntake,
    conv: conversion_input.ConversionInput,
    *,
    visitor_id: str,
    source: str,
    meta: RequestMeta,
) -> web.Response:
    """Store a conversion report (new, or a status change) and say what happened."""
    s = ctx.settings
    key = K.conversion_key(conv.advertiser, conv.txid)
    if ctx.script is None:
        ctx.script = ctx.redis.register_script(RECORD_CONVERSION)
    for _ in range(ATTEMPTS):
        state = await ctx.redis.hgetall(key)
        current = state[b"status"].decode() if b"status" in state else None
        kind = conversion_input.transition(current, conv.status)
        if kind == "duplicate":
            stored = orjson.loads(state[b"record"])
            ctx.outcomes["duplicate"] += 1
            return reply("duplicate", "duplicate_transaction", stored["conversion_id"])
        ms = now_ms()
        if kind == "new":
            click, why = await find_click(
                ctx.redis, conv, visitor_id, s.lookback_seconds * 1000, ms
            )
            amount = conv.amount if conv.amount is not None else 0
            stored = {
                "conversion_id": uuid7(ms),
                "click": click,
                "unattributed_reason": why,
                "visitor_id": (click or {}).get("visitor_id") or visitor_id,
                "amount": str(amount),
                "currency": conv.currency,
            }
        else:
            stored = orjson.loads(state[b"record"])
        amount = conv.amount if conv.amount is not None else stored["amount"]
        currency = conv.currency if conv.amount is not None else stored["currency"]
        row = conversion_input.conversion_row(
            ms=ms,
            conversion_id=stored["conversion_id"],
            conv=conv,
            amount=amount,
            currency=currency,
            previous_status=current or "",
            click=stored["click"],
            visitor_id=stored["visitor_id"],
            unattributed_reason=stored["unattributed_reason"],
            source=source,
            meta=meta,
        )
        result = await ctx.script(
            keys=[key, K.EVENTS_STREAM],
            args=[
                current or "",
                conv.status,
                orjson.dumps(stored),
                s.conversions.dedup_days * 86400,
                K.BATCH_ID_FIELD,
                uuid7(ms),
                "conversions",
                orjson.dumps(row),
            ],
        )
        if result[0] == b"ok":
            ctx.outcomes["accepted"] += 1
            return reply(
                "accepted",
                stored["unattributed_reason"] or None,
                stored["conversion_id"],
                attributed=not stored["unattributed_reason"],
                transaction_status=conv.status,
            )
    raise Rejected(409, "concurrent_update")


def reject(ctx: ConversionIntake, exc: Rejected) -> web.Response:
    ctx.rejections[exc.reason] += 1
    ctx.outcomes["rejected"] += 1
    return reply("rejected", exc.reason, None, exc.status)


async def postback(request: web.Request) -> web.Response:
    ctx = request.app[CONVERSIONS]
    s = ctx.settings
    try:
        params, body = await read_params(request, s.conversions.max_body_bytes)
        conv = conversion_input.parse(
            params,
            default_currency=s.conversions.default_currency,
            max_amount=s.conversions.max_amount,
            require_click=True,
        )
        advertiser = ctx.advertisers.get(conv.advertiser)
        if advertiser is None or not advertiser.active:
            raise Rejected(401, "unknown_advertiser")
        authenticate(
            request, advertiser.token, params, body, s.conversions.signature_window_seconds
        )
        meta = request_meta(hit_of(request), ctx.trusted)
        return await record(ctx, conv, visitor_id="", source="postback", meta=meta)
    except Rejected as exc:
        return reject(ctx, exc)
    except Exception as exc:  # Redis away: the advertiser should retry later
        log.warning("postback not recorded: %r", exc)
        return reject(ctx, Rejected(503, "temporarily_unavailable"))


async def conversion_pixel(
    request: web.Request, params: dict[str, str], visitor_id: str | None, meta: RequestMeta
) -> None:
    """A conversion reported by the thank-you page's pixel: the visitor comes from the cookie.

    Browsers cannot keep a secret, so pixel conversions are not authenticated; they are
    stored with source 'pixel' and the advertiser must be known and active.
    """
    ctx = request.app[CONVERSIONS]
    s = ctx.settings
    try:
        conv = conversion_input.parse(
            params,
            default_currency=s.conversions.default_currency,
            max_amount=s.conversions.max_amount,
            require_click=False,
        )
        advertiser = ctx.advertisers.get(conv.advertiser)
        if advertiser is None or not advertiser.active:
            raise Rejected(401, "unknown_advertiser")
        await record(ctx, conv, visitor_id=visitor_id or "", source="pixel", meta=meta)
    except Rejected as exc:
        reject(ctx, exc)
    except Exception as exc:
        log.warning("pixel conversion not recorded: %r", exc)
        reject(ctx, Rejected(503, "temporarily_unavailable"))


def add_routes(app: web.Application) -> None:
    app.router.add_get("/postback", postback)
    app.router.add_post("/postback", postback)
