"""ConversionIntake in: `GET|POST /postback` (server to server), the conversion pixel, and
`/t/conversion` (browser conversions sent by the first-party tag, static/t.js).

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
from typing import Any, NamedTuple
from urllib.parse import parse_qsl

import orjson
import redis.asyncio as aredis
from aiohttp import web

from tracker import hot, origins, refusals, signing
from tracker import redis_keys as K
from tracker.advertisers import Advertiser
from tracker.clock import Clock, clock_ms
from tracker.edge import conversion_input, postback_script
from tracker.edge.clicks import PIXEL, Hit, read_cookie, request_meta
from tracker.edge.conversion_input import Rejected
from tracker.edge.hit import hit_of
from tracker.edge.intake import ConversionIntake
from tracker.edge.keys import INTAKE
from tracker.ids import uuid7, uuid7_time_ms
from tracker.reasons import DuplicateReason, PostbackOutcome, UnattributedReason
from tracker.reasons import PostbackRefusal as R
from tracker.records import RequestMeta
from tracker.redis_connection import UNREACHABLE, as_text, is_cluster
from tracker.timefmt import utc_day
from tracker.types import AsyncRedis

log = logging.getLogger(__name__)

# KEYS: transaction record, events stream, and for a conversion of a campaign its
# conversion counters (that UTC day's, all time: a campaign's conversion cap).
# ARGV: expected current status ('' = none), new status, record JSON, TTL seconds, the
# daily counter's TTL, then the stream entry's field/value pairs.
# The counters go up once per transaction, when it is first accepted (the one report that
# finds no status), never for a duplicate or a status change. A later rejection or
# reversal does not take it back: the cap limits the traffic a campaign is sent, a
# rejection often comes days later (when that day's count no longer decides anything), and
# an advertiser that rejects conversions is not asking for more traffic.
RECORD_CONVERSION = """
local current = redis.call('HGET', KEYS[1], 'status') or ''
if current ~= ARGV[1] then
  return {'conflict', current}
end
if current == '' then
  redis.call('HSET', KEYS[1], 'status', ARGV[2], 'record', ARGV[3])
  redis.call('EXPIRE', KEYS[1], ARGV[4])
  if KEYS[4] then
    redis.call('INCR', KEYS[3])
    redis.call('EXPIRE', KEYS[3], ARGV[5])
    redis.call('INCR', KEYS[4])
  end
else
  redis.call('HSET', KEYS[1], 'status', ARGV[2])
end
redis.call('XADD', KEYS[2], '*', unpack(ARGV, 6))
return {'ok', current}
"""
ATTEMPTS = 5  # concurrent status reports for one transaction: re-read and try again
RECENT_CLICK_MS = 10_000
# A postback right after its click may find the click still in an edge's write buffer (a
# few ms, or a Redis timeout): look again after these pauses, 7 reads and 0.63 s at most.
RECENT_CLICK_PAUSES = (0.01, 0.02, 0.04, 0.08, 0.16, 0.32)
_PAUSES_THEN_NONE = (*RECENT_CLICK_PAUSES, None)
# A browser's report (pixel, tag) is unauthenticated: 3 reads and 0.12 s at most.
BROWSER_CLICK_PAUSES = (0.02, 0.1)
# Our side failing for a while (Redis away or slow, a socket error): the advertiser should
# retry, so 503. Anything else is a bug: 500, logged with its traceback.
UNAVAILABLE = (*UNREACHABLE, TimeoutError, OSError)
MAX_FIELD_NAME = 64  # of an offending JSON key echoed in the reply
# looked up by lower-case name: aiohttp's headers ignore case, the fast path's are lower
SIGNATURE = signing.SIGNATURE_HEADER.lower()
TIMESTAMP = signing.TIMESTAMP_HEADER.lower()


class Answer(NamedTuple):
    """A conversion route's JSON reply. aiohttp's routes send it as a Response
    (`as_response`); the fast path writes it as it is (tracker/edge/postback_fast.py)."""

    status: int
    body: bytes


def reply(
    status: PostbackOutcome,
    reason: str | None,
    conversion_id: str | None,
    http: int = 200,
    **extra: object,
) -> Answer:
    body = {"status": status, "reason": reason, "conversion_id": conversion_id, **extra}
    return Answer(http, orjson.dumps(body))


def as_response(answer: Answer) -> web.Response:
    return web.Response(body=answer.body, status=answer.status, content_type="application/json")


async def read_params(request: web.Request, max_body: int) -> tuple[dict[str, str], bytes]:
    """Query parameters merged with a form or JSON body (the body wins)."""
    if request.content_length and request.content_length > max_body:
        raise Rejected(413, R.BODY_TOO_LARGE)
    body = await request.content.read(max_body + 1) if request.can_read_body else b""
    if len(body) > max_body:
        raise Rejected(413, R.BODY_TOO_LARGE)
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
            raise Rejected(415, R.UNSUPPORTED_CONTENT_TYPE)
    return params, body


def json_params(body: bytes) -> dict[str, str]:
    """A JSON object of scalars, numbers kept as typed (never through float)."""
    try:
        data = json.loads(body, parse_float=str, parse_int=str, parse_constant=str)
    except (ValueError, UnicodeDecodeError, RecursionError):  # deep nesting: RecursionError
        raise Rejected(400, R.INVALID_JSON) from None
    if not isinstance(data, dict):
        raise Rejected(400, R.INVALID_JSON)
    params = {}
    for key, value in data.items():
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            if value is None:
                continue
            raise Rejected(400, R.INVALID_FIELD, field=key[:MAX_FIELD_NAME])
        params[key] = str(value)
    return params


def authenticate(
    hit: Hit,
    path: str,
    token: str,
    params: dict[str, str],
    body: bytes,
    window: int,
    clock: Clock,
) -> None:
    """A signed request (headers), or the advertiser's token among the parameters."""
    signature = hit.headers.get(SIGNATURE)
    if signature:
        reason = signing.verify(
            token,
            signature,
            hit.headers.get(TIMESTAMP, ""),
            hit.method,
            path,
            hit.query,
            body,
            now=clock(),
            window=window,
        )
        if reason is not None:
            raise Rejected(401, reason)
        return
    given = params.get("token", "")
    if not given:
        raise Rejected(401, R.MISSING_CREDENTIALS)
    if not hmac.compare_digest(given.encode(), token.encode()):
        raise Rejected(401, R.BAD_TOKEN)


class Found(NamedTuple):
    """What the edge knows at once of a new conversion's click."""

    click: dict[str, Any] | None  # a click record (tracker/hot.py `decode`)
    why: UnattributedReason | None
    deferred: bool = False  # only ClickHouse can tell: the sink attributes it


async def find_click(
    redis: AsyncRedis,
    conv: conversion_input.ConversionInput,
    visitor_id: str,
    lookback_ms: int,
    now: int,
    source: str = "postback",
    window: hot.HotWindow | None = None,
) -> Found:
    """The click a new conversion is attributed to, or None and the reason, from the hot
    window in Redis. A click Redis cannot vouch for (older than the window, or from
    before this Redis started holding clicks: tracker/hot.py) is left to the sink, which
    reads it from ClickHouse: `deferred`.

    A report from a browser (unauthenticated) waits less for a recent click; a pixel may
    name a click only of its own visitor (or any, when the browser sent no visitor
    cookie; the tag's click id comes from the merchant's own cookie, and a partitioned
    tracker cookie would not match)."""
    window = window or hot.HotWindow(lookback_ms // hot.HOUR_MS)
    pixel = source == "pixel"
    if conv.click_id:
        click_id = conv.click_id
        at = uuid7_time_ms(click_id)
        if now - at > lookback_ms:
            return Found(None, UnattributedReason.UNKNOWN_OR_EXPIRED_CLICK)
        key, field = hot.click_hash(click_id), hot.raw_id(click_id)
        pipe = redis.pipeline(transaction=False)
        pipe.get(K.HOT_SINCE)
        pipe.hget(key, field)
        since, raw = await pipe.execute()
        pauses = RECENT_CLICK_PAUSES if source == "postback" else BROWSER_CLICK_PAUSES
        for pause in pauses:
            if raw is not None or now - at > RECENT_CLICK_MS:
                break
            await asyncio.sleep(pause)
            raw = await redis.hget(key, field)
        if raw is None:
            if at < window.start(now, since):
                return Found(None, None, deferred=True)
            return Found(None, UnattributedReason.UNKNOWN_OR_EXPIRED_CLICK)
        click = hot.decode(click_id, raw)
        if click.get("advertiser_id") and click["advertiser_id"] != conv.advertiser:
            return Found(None, UnattributedReason.CLICK_OF_OTHER_ADVERTISER)
        if pixel and visitor_id and click.get("visitor_id") != visitor_id:
            return Found(None, UnattributedReason.CLICK_OF_OTHER_VISITOR)
        return Found(click, None)
    if not visitor_id:
        return Found(None, UnattributedReason.NO_VISITOR)
    hours = window.hours_between(now - lookback_ms, now, now)
    pipe = redis.pipeline(transaction=False)
    pipe.get(K.HOT_SINCE)
    visitor = hot.raw_id(visitor_id)
    # the click that made the visitor, if one did (in no path: tracker/hot.py), with the path
    pipe.hget(hot.click_hash(visitor_id), visitor)
    for hour in hours:
        pipe.hget(hot.path_hash(hour, visitor_id), visitor)
    since, first, *values = await pipe.execute()
    raws = {visitor_id: first}
    ids = [c for c in hot.paths_from(values) if c not in raws]
    if ids:  # the visitor's later clicks of the window (a few): their records say their times
        pipe = redis.pipeline(transaction=False)
        for click_id in ids:
            pipe.hget(hot.click_hash(click_id), hot.raw_id(click_id))
        raws.update(zip(ids, await pipe.execute(), strict=True))
    records = [hot.decode(c, raw) for c, raw in raws.items() if raw]
    records = [
        r for r in records if hot.of_visitor(r, visitor_id) and now - lookback_ms <= r["ts"] <= now
    ]
    if records:
        return Found(max(records, key=lambda r: (r["ts"], r["click_id"])), None)
    if window.start(now, since) > now - lookback_ms:
        return Found(None, None, deferred=True)
    return Found(None, UnattributedReason.NO_CLICK_IN_LOOKBACK)


async def record(
    ctx: ConversionIntake,
    conv: conversion_input.ConversionInput,
    *,
    visitor_id: str,
    source: str,
    meta: RequestMeta,
    first_only: bool = False,
) -> Answer:
    """Store a conversion report (new, or a status change) and say what happened.

    `first_only`: the report can only create the transaction (a browser's, which cannot
    change a status); when it exists in any status, the report is a duplicate."""
    s = ctx.settings
    key = K.conversion_key(conv.advertiser, conv.txid)
    if ctx.script is None:
        ctx.script = ctx.redis.register_script(RECORD_CONVERSION)
    for _ in range(ATTEMPTS):
        state = await ctx.redis.hgetall(key)
        current = as_text(state[b"status"]) if b"status" in state else None
        if first_only and current is not None:
            kind = "duplicate"
        else:
            kind = conversion_input.transition(current, conv.status)
        if kind == "duplicate":
            stored = orjson.loads(state[b"record"])
            ctx.outcomes[PostbackOutcome.DUPLICATE] += 1
            return reply(
                PostbackOutcome.DUPLICATE,
                DuplicateReason.DUPLICATE_TRANSACTION,
                stored["conversion_id"],
            )
        ms = clock_ms(ctx.clock)
        if kind == "new":
            click, why, deferred = await find_click(
                ctx.redis,
                conv,
                visitor_id,
                s.lookback_seconds * 1000,
                ms,
                source,
                hot.HotWindow(s.tracking.hot_hours),
            )
            amount = conv.amount if conv.amount is not None else 0
            stored = {
                "conversion_id": uuid7(ms),
                "click": click,
                "unattributed_reason": why or "",
                "visitor_id": (click or {}).get("visitor_id") or visitor_id,
                **({"deferred": True, "deferred_click": conv.click_id} if deferred else {}),
                "amount": str(amount),
                "currency": conv.currency,
                **({"payout": str(conv.payout)} if conv.payout is not None else {}),
            }
        else:
            stored = orjson.loads(state[b"record"])
        amount = conv.amount if conv.amount is not None else stored["amount"]
        currency = conv.currency if conv.amount is not None else stored["currency"]
        payout = conv.payout if conv.payout is not None else stored.get("payout")
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
            payout=payout,
        )
        keys = [key, K.EVENTS_STREAM]
        campaign_id = (stored["click"] or {}).get("campaign_id")
        if kind == "new" and campaign_id:  # counted for the campaign's conversion cap
            keys += [
                K.conversion_cap_daily_key(campaign_id, utc_day(ms)),
                K.conversion_cap_total_key(campaign_id),
            ]
        if stored.get("deferred"):  # the sink finds the click in ClickHouse
            conversion_input.defer(row, stored["deferred_click"])
        result = await ctx.script(
            keys=keys,
            args=[
                current or "",
                conv.status,
                orjson.dumps(stored),
                s.conversions.dedup_days * 86400,
                K.CAP_DAY_TTL,
                K.BATCH_ID_FIELD,
                uuid7(ms),
                "conversions",
                orjson.dumps(row),
            ],
        )
        if result[0] == b"ok":
            ctx.outcomes[PostbackOutcome.ACCEPTED] += 1
            if stored.get("deferred"):
                return reply(
                    PostbackOutcome.ACCEPTED,
                    None,
                    stored["conversion_id"],
                    attributed=None,
                    attribution="deferred",
                    transaction_status=conv.status,
                )
            return reply(
                PostbackOutcome.ACCEPTED,
                stored["unattributed_reason"] or None,
                stored["conversion_id"],
                attributed=not stored["unattributed_reason"],
                attribution="online",
                transaction_status=conv.status,
            )
    raise Rejected(409, R.CONCURRENT_UPDATE)


class Pending(NamedTuple):
    """A postback checked and ready for its Redis round trip."""

    params: dict[str, str]
    conv: conversion_input.ConversionInput
    meta: RequestMeta
    prepared: postback_script.Prepared | None  # None: a Redis Cluster (the reference path)
    recent: bool  # its click is seconds old: it may still be in an edge's write buffer


def pending_postback(
    ctx: ConversionIntake,
    params: dict[str, str],
    conv: conversion_input.ConversionInput,
    meta: RequestMeta,
) -> Pending:
    """The one-script call of a new postback (tracker/edge/postback_script.py), made
    ready: everything that does not depend on the click."""
    if ctx.new_postback is None:
        if is_cluster(ctx.settings.redis.url):
            return Pending(params, conv, meta, None, False)
        assert isinstance(ctx.redis, aredis.Redis)  # one server
        ctx.new_postback = postback_script.NewPostback(ctx.redis)
    s = ctx.settings
    ms = clock_ms(ctx.clock)
    prepared = postback_script.prepare(
        conv,
        ms=ms,
        meta=meta,
        lookback_ms=s.lookback_seconds * 1000,
        window=hot.HotWindow(s.tracking.hot_hours),
        dedup_seconds=s.conversions.dedup_days * 86400,
    )
    recent = ms - uuid7_time_ms(conv.click_id) <= RECENT_CLICK_MS
    return Pending(params, conv, meta, prepared, recent)


async def record_pending(ctx: ConversionIntake, pending: Pending) -> Answer:
    """A server-to-server postback: a new transaction in one Redis round trip; a
    duplicate answered from that same trip; a status change, a click record the script
    leaves to Python, or a Redis Cluster through `record_reference`."""
    prepared = pending.prepared
    if prepared is None:
        return await record_reference(ctx, pending)
    # a click right before its postback may still be in an edge's write buffer: look
    # again after each pause (the script answers `retry` and records nothing)
    for pause in _PAUSES_THEN_NONE:
        prepared.args[postback_script.RECENT_ARG] = "1" if pending.recent and pause else "0"
        result = await ctx.new_postback(prepared)
        if result[0] != b"retry" or pause is None:
            break
        await asyncio.sleep(pause)
    answer = settle(ctx, pending, result)
    return answer if answer is not None else await record_reference(ctx, pending)


async def record_reference(ctx: ConversionIntake, pending: Pending) -> Answer:
    """The postback through `record`, the reference path (its own Redis round trips)."""
    return await record(ctx, pending.conv, visitor_id="", source="postback", meta=pending.meta)


def settle(ctx: ConversionIntake, pending: Pending, result: list[Any]) -> Answer | None:
    """The answer to what the script did; None when the reference path decides (a status
    change, a click record left to Python). Raises Rejected for a refused transition."""
    outcome, conv = result[0], pending.conv
    assert pending.prepared is not None
    if outcome == b"ok":
        ctx.outcomes[PostbackOutcome.ACCEPTED] += 1
        if result[1] == postback_script.DEFERRED:
            return reply(
                PostbackOutcome.ACCEPTED,
                None,
                pending.prepared.conversion_id,
                attributed=None,
                attribution="deferred",
                transaction_status=conv.status,
            )
        why = postback_script.KINDS[result[1]]
        return reply(
            PostbackOutcome.ACCEPTED,
            why,
            pending.prepared.conversion_id,
            attributed=why is None,
            attribution="online",
            transaction_status=conv.status,
        )
    if outcome == b"missing":  # no such transaction, and this status cannot start one
        conversion_input.transition(None, conv.status)  # raises the refusal
    if outcome == b"exists":
        kind = conversion_input.transition(as_text(result[1]), conv.status)
        if kind == "duplicate":
            ctx.outcomes[PostbackOutcome.DUPLICATE] += 1
            return reply(
                PostbackOutcome.DUPLICATE,
                DuplicateReason.DUPLICATE_TRANSACTION,
                orjson.loads(result[2])["conversion_id"],
            )
    return None


def reject(ctx: ConversionIntake, exc: Rejected) -> Answer:
    ctx.rejections[exc.reason] += 1
    ctx.outcomes[PostbackOutcome.REJECTED] += 1
    extra = {} if exc.field is None else {"field": exc.field}
    return reply(PostbackOutcome.REJECTED, exc.reason, None, exc.status, **extra)


def failed(ctx: ConversionIntake, exc: Exception, what: str) -> Answer:
    """The reply to an exception that is not a refusal: 503 when our side is away for a
    while (retry later), else 500 with the traceback logged (a bug to fix)."""
    if isinstance(exc, UNAVAILABLE):
        log.warning("%s not recorded (retry later): %r", what, exc)
        return reject(ctx, Rejected(503, R.TEMPORARILY_UNAVAILABLE))
    log.error("%s failed", what, exc_info=exc)
    return reject(ctx, Rejected(500, R.INTERNAL_ERROR))


async def postback(request: web.Request) -> web.Response:
    ctx = request.app[INTAKE]
    try:
        params, body = await read_params(request, ctx.settings.conversions.max_body_bytes)
    except Rejected as exc:
        return as_response(refuse(ctx, {}, exc))
    except Exception as exc:
        return as_response(failed(ctx, exc, "postback"))
    return as_response(await answer_postback(ctx, hit_of(request), request.path, params, body))


async def answer_postback(
    ctx: ConversionIntake, hit: Hit, path: str, params: dict[str, str], body: bytes
) -> Answer:
    """A postback whose parameters (and body) are read: aiohttp's route, and the fast
    path's for a bodiless GET (tracker/edge/postback_fast.py)."""
    pending = check_postback(ctx, hit, path, params, body)
    if isinstance(pending, Answer):
        return pending
    return await finish_postback(ctx, pending)


def check_postback(
    ctx: ConversionIntake, hit: Hit, path: str, params: dict[str, str], body: bytes
) -> Answer | Pending:
    """The steps before Redis: validate, authenticate, prepare; a refusal's answer."""
    s = ctx.settings
    try:
        conv = conversion_input.parse(
            params,
            default_currency=s.conversions.default_currency,
            max_amount=s.conversions.max_amount,
            require_click=True,
        )
        advertiser = active_advertiser(ctx, conv.advertiser)
        authenticate(
            hit,
            path,
            advertiser.token,
            params,
            body,
            s.conversions.signature_window_seconds,
            ctx.clock,
        )
        meta = request_meta(hit, ctx.trusted, s.privacy.anonymize_ip)
        return pending_postback(ctx, params, conv, meta)
    except Rejected as exc:
        return refuse(ctx, params, exc)
    except Exception as exc:
        return failed(ctx, exc, "postback")


async def finish_postback(
    ctx: ConversionIntake, pending: Pending, *, script_settled: bool = False
) -> Answer:
    """Record a checked postback and answer it, whatever happens. `script_settled`: the
    one-script call already ran and left it to the reference path (`settle`)."""
    try:
        if script_settled:
            return await record_reference(ctx, pending)
        return await record_pending(ctx, pending)
    except Rejected as exc:
        return refuse(ctx, pending.params, exc)
    except Exception as exc:
        return failed(ctx, exc, "postback")


def refuse(ctx: ConversionIntake, params: dict[str, str], exc: Rejected) -> Answer:
    """A refused postback, counted for its advertiser's reconciliation."""
    named = conversion_input.pick(params, "advertiser")
    known = ctx.advertisers.get(named) is not None
    refusals.note(ctx.refused, named, known, exc.reason, clock_ms(ctx.clock))
    return reject(ctx, exc)


def active_advertiser(ctx: ConversionIntake, advertiser_id: str) -> Advertiser:
    advertiser = ctx.advertisers.get(advertiser_id)
    if advertiser is None or not advertiser.active:
        raise Rejected(401, R.UNKNOWN_ADVERTISER)
    return advertiser


async def conversion_pixel(
    request: web.Request, params: dict[str, str], visitor_id: str | None, meta: RequestMeta
) -> None:
    """A conversion reported by the thank-you page's pixel: the visitor comes from the cookie.

    Browsers cannot keep a secret, so pixel conversions are not authenticated: they are
    stored with source 'pixel', the advertiser must be known and active, a pixel reports a
    new pending conversion only (approval, rejection and refunds come by postback), is
    credited to its own visitor's clicks, and is rate-limited per visitor and address.
    """
    ctx = request.app[INTAKE]
    s = ctx.settings
    try:
        conv = conversion_input.parse(
            params,
            default_currency=s.conversions.default_currency,
            max_amount=s.conversions.max_amount,
            require_click=False,
        )
        if conv.status != "pending":
            raise Rejected(403, R.PIXEL_STATUS)
        advertiser = ctx.advertisers.get(conv.advertiser)
        if advertiser is None or not advertiser.active:
            raise Rejected(401, R.UNKNOWN_ADVERTISER)
        await within_pixel_limits(ctx, visitor_id, meta)
        await record(ctx, conv, visitor_id=visitor_id or "", source="pixel", meta=meta)
    except Rejected as exc:
        reject(ctx, exc)
    except Exception as exc:  # the pixel still answers its GIF
        failed(ctx, exc, "pixel conversion")


async def within_pixel_limits(
    ctx: ConversionIntake, visitor_id: str | None, meta: RequestMeta
) -> None:
    """Count this browser conversion (pixel or tag) against its visitor's and its
    address's hourly limits (one Redis round trip); Rejected (429) past either."""
    s = ctx.settings.conversions
    hour = clock_ms(ctx.clock) // 3_600_000
    limits = []
    if s.pixel_per_visitor_per_hour and visitor_id:
        limits.append((K.pixel_rate_key("v", visitor_id, hour), s.pixel_per_visitor_per_hour))
    if s.pixel_per_ip_per_hour:
        who = meta.ip_key or meta.ip
        limits.append((K.pixel_rate_key("ip", who, hour), s.pixel_per_ip_per_hour))
    if not limits:
        return
    pipe = ctx.redis.pipeline(transaction=False)
    for key, _ in limits:
        pipe.incr(key)
        pipe.expire(key, 3600)
    counts = (await pipe.execute())[::2]
    if any(n > limit for n, (_, limit) in zip(counts, limits, strict=True)):
        raise Rejected(429, R.RATE_LIMITED)


ORIGIN_REFUSALS = (R.ORIGIN_MISSING, R.ORIGIN_NOT_ALLOWED)


def check_origin(advertiser: Advertiser, origin: str) -> None:
    """Refuse a browser conversion from a site the advertiser has not allowed."""
    if not advertiser.allowed_origins:
        return
    if not origin:
        raise Rejected(403, R.ORIGIN_MISSING)
    if not origins.allowed(origin, advertiser.allowed_origins):
        raise Rejected(403, R.ORIGIN_NOT_ALLOWED)


async def browser_conversion(request: web.Request) -> web.StreamResponse:
    """`POST /t/conversion` (fetch or sendBeacon: JSON reply) or `GET` (an image: a GIF).

    Sent by the tag on the advertiser's thank-you page with the click id it kept on the
    advertiser's own domain, so the named click is credited even where the browser sends
    no tracker cookie. Stored with source 'browser'. CORS: the page may read the reply only
    from an origin the advertiser allows.
    """
    ctx = request.app[INTAKE]
    origin = origins.of_request(request.headers.get("Origin"), request.headers.get("Referer"))
    readable = True  # may the page read the reply (CORS)? Not from a refused origin.
    try:
        params, _ = await read_params(request, ctx.settings.conversions.max_body_bytes)
        # No secret in a browser: always `pending`; only an S2S postback may approve it.
        params.pop("status", None)
        conv = conversion_input.parse(
            params,
            default_currency=ctx.settings.conversions.default_currency,
            max_amount=ctx.settings.conversions.max_amount,
            require_click=False,
        )
        advertiser = active_advertiser(ctx, conv.advertiser)
        check_origin(advertiser, origin)
        visitor_id = read_cookie(request.headers.get("Cookie"), ctx.settings.cookie.name)
        meta = request_meta(hit_of(request), ctx.trusted, ctx.settings.privacy.anonymize_ip)
        # Without the tracker's cookie (the usual case), the click id stands for the visitor:
        # one click cannot be credited with a flood of made-up orders.
        await within_pixel_limits(ctx, visitor_id or conv.click_id or None, meta)
        answer = await record(
            ctx, conv, visitor_id=visitor_id or "", source="browser", meta=meta, first_only=True
        )
    except Rejected as exc:
        readable = exc.reason not in ORIGIN_REFUSALS
        answer = reject(ctx, exc)
    except Exception as exc:
        answer = failed(ctx, exc, "browser conversion")
    if request.method == "GET":
        response = web.Response(body=PIXEL, content_type="image/gif")
    else:
        response = as_response(answer)
    response.headers["Cache-Control"] = "no-store"
    if readable and origin:
        allow_origin(response, origin)
    return response


def allow_origin(response: web.StreamResponse, origin: str) -> None:
    response.headers["Access-Control-Allow-Origin"] = origin
    response.headers["Access-Control-Allow-Credentials"] = "true"
    response.headers["Vary"] = "Origin"


async def browser_preflight(request: web.Request) -> web.Response:
    """CORS preflight (a page sending JSON): answered for any origin, as the advertiser is
    only known from the body; the conversion itself is checked against the allowlist."""
    response = web.Response(status=204)
    origin = origins.of_request(request.headers.get("Origin"), None)
    if origin:
        allow_origin(response, origin)
        response.headers["Access-Control-Allow-Methods"] = "POST, GET"
        response.headers["Access-Control-Allow-Headers"] = "Content-Type"
        response.headers["Access-Control-Max-Age"] = "600"
    return response


def add_routes(app: web.Application) -> None:
    app.router.add_get("/postback", postback)
    app.router.add_post("/postback", postback)
    app.router.add_get("/t/conversion", browser_conversion)
    app.router.add_post("/t/conversion", browser_conversion)
    app.router.add_route("OPTIONS", "/t/conversion", browser_preflight)
