"""Who may call which /api/ route, API key management, `GET /api/me` and the audit log.

Every /api/ request passes `authorize`: the bearer token is the admin token (the
bootstrap key) or an API key (tracker/access.py); the route must allow the key's role
(`POLICY`; a route not listed is admin-only, so a new route is closed until someone opens
it). Handlers narrow further by the caller's subject (an affiliate's own links, reports
scoped to its id). Every successful write (any method but GET/HEAD) is appended to the
audit log with what the handler put in `request[AUDIT]` (target, before, after).
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from tracker import access
from tracker import redis_keys as K
from tracker.access import ApiKey, KeyError_, Principal, Role
from tracker.audit import entry, matches, parse
from tracker.edge.admin import audit, error, json_response, principal, read_body
from tracker.edge.keys import ADMIN_TOKEN, AUDIT, PRINCIPAL, REDIS
from tracker.reasons import AdminError

ALL = frozenset(Role)
READERS = frozenset({Role.ADMIN, Role.ANALYST})
READ_ONLY = ("GET", "HEAD")
# An affiliate's own records: the route's {id} must be the key's subject.
OWN_AFFILIATE = frozenset({Role.ADMIN, Role.ANALYST, Role.AFFILIATE})
OWNED_BY_ID = {Role.AFFILIATE: "id"}

# (method, route) -> roles allowed. Anything else under /api/ is admin-only.
POLICY: dict[tuple[str, str], frozenset[Role]] = {
    ("GET", "/api/me"): ALL,
    ("GET", "/api/reports"): ALL,
    ("GET", "/api/reports/metrics"): ALL,
    ("GET", "/api/live"): READERS,  # the whole programme's click rate
    # an advertiser's own (reports_api.get_reconciliation)
    ("GET", "/api/reports/reconciliation"): READERS | {Role.ADVERTISER},
    ("GET", "/api/links"): ALL,  # each sees its own (admin.list_links)
    ("GET", "/api/links/{slug}"): ALL,
    ("POST", "/api/links"): frozenset({Role.ADMIN, Role.AFFILIATE}),  # affiliates: their own
    ("GET", "/api/affiliates"): READERS,
    ("GET", "/api/campaigns"): READERS,
    ("GET", "/api/campaigns/{id}"): READERS,
    ("GET", "/api/payouts"): READERS,
    ("GET", "/api/affiliates/{id}"): OWN_AFFILIATE,
    ("GET", "/api/affiliates/{id}/balance"): OWN_AFFILIATE,
    ("GET", "/api/affiliates/{id}/commissions"): OWN_AFFILIATE,
    ("GET", "/api/affiliates/{id}/payouts"): OWN_AFFILIATE,
}


def allowed(
    method: str, route: str, role: Role, params: dict | None = None, subject: str = ""
) -> bool:
    """Whether a role may call a route; for an affiliate, a route about one affiliate
    ({id}) must be about itself."""
    if method == "HEAD":
        method = "GET"
    if role == Role.ADMIN:
        return True
    if role not in POLICY.get((method, route), frozenset()):
        return False
    own = OWNED_BY_ID.get(role)
    if own and route.startswith("/api/affiliates/"):
        return (params or {}).get(own) == subject
    return True


async def authenticate(request: web.Request) -> Principal | None:
    authorization = request.headers.get("Authorization")
    token = access.bearer_token(authorization)
    if token is None:
        return None
    if access.is_admin(authorization, request.app[ADMIN_TOKEN]):
        return access.BOOTSTRAP
    parts = access.split_token(token)
    if parts is None:
        return None
    raw = await request.app[REDIS].hget(K.API_KEYS_HASH, parts[0])
    return access.verify(ApiKey.from_json(raw), parts[1]) if raw else None


@web.middleware
async def authorize(request: web.Request, handler):
    if not request.path.startswith("/api/"):
        return await handler(request)
    caller = await authenticate(request)
    if caller is None:
        return error(401, AdminError.UNAUTHORIZED, "missing or wrong bearer token")
    resource = request.match_info.route.resource
    route = resource.canonical if resource else "unmatched"
    params = dict(request.match_info)
    if not allowed(request.method, route, caller.role, params, caller.subject):
        return error(403, AdminError.FORBIDDEN, f"a {caller.role} key may not do this")
    request[PRINCIPAL] = caller
    response = await handler(request)
    if request.method not in READ_ONLY and 200 <= response.status < 300:
        details = request.get(AUDIT) or {}
        fields = entry(
            actor=caller.key_id,
            role=caller.role,
            action=f"{request.method} {route}",
            target=details.get("target", ""),
            before=details.get("before"),
            after=details.get("after"),
            status=response.status,
        )
        await request.app[REDIS].xadd(K.AUDIT_STREAM, fields)
    return response


# -- routes ---------------------------------------------------------------------------


async def me(request: web.Request) -> web.Response:
    return json_response(principal(request).public())


async def create_key(request: web.Request) -> web.Response:
    try:
        key, token = access.new_key(await read_body(request))
    except KeyError_ as exc:
        return error(400, AdminError.INVALID_KEY, str(exc))
    await request.app[REDIS].hset(K.API_KEYS_HASH, key.id, key.to_json())
    audit(request, key.id, None, key.public())
    return json_response({**key.public(), "key": token}, 201)


async def list_keys(request: web.Request) -> web.Response:
    raw = await request.app[REDIS].hgetall(K.API_KEYS_HASH)
    keys = sorted((ApiKey.from_json(v) for v in raw.values()), key=lambda k: k.created_at)
    return json_response({"keys": [k.public() for k in keys], "count": len(keys)})


async def revoke_key(request: web.Request) -> web.Response:
    key_id = request.match_info["id"]
    redis = request.app[REDIS]
    raw = await redis.hget(K.API_KEYS_HASH, key_id)
    if raw is None:
        return error(404, AdminError.NOT_FOUND, "no such key")
    key = ApiKey.from_json(raw)
    done = access.revoked(key)
    await redis.hset(K.API_KEYS_HASH, key_id, done.to_json())
    audit(request, key_id, key.public(), done.public())
    return json_response(done.public())


async def list_audit(request: web.Request) -> web.Response:
    """Newest first; `limit` (default 100, at most 1000), `actor`, `action`, `before` (an
    entry id, for the next page)."""
    try:
        limit = min(max(int(request.query.get("limit", "100")), 1), 1000)
    except ValueError:
        return error(400, AdminError.INVALID_JSON, "limit must be a number")
    actor, action = request.query.get("actor"), request.query.get("action")
    end = request.query.get("before")
    end = f"({end}" if end else "+"
    items: list[dict] = []
    redis = request.app[REDIS]
    while len(items) < limit:
        try:
            page: Any = await redis.xrevrange(K.AUDIT_STREAM, max=end, min="-", count=500)
        except Exception:  # a malformed `before` id
            return error(400, AdminError.INVALID_JSON, "before must be an audit entry id")
        if not page:
            break
        for entry_id, fields in page:
            item = parse(entry_id, fields)
            if matches(item, actor, action):
                items.append(item)
        end = f"({_id(page[-1][0])}"
    return json_response({"entries": items[:limit], "count": len(items[:limit])})


def _id(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def add_routes(app: web.Application) -> None:
    app.router.add_get("/api/me", me)
    app.router.add_post("/api/keys", create_key)
    app.router.add_get("/api/keys", list_keys)
    app.router.add_delete("/api/keys/{id}", revoke_key)
    app.router.add_get("/api/audit", list_audit)
