"""`/api/deliveries`: delivery targets (postbacks out, webhooks), the queue's state, dead
letters and their replay. Admin-only (not listed in the access policy). Redis work runs in
a thread on a sync client, as the CLI does it; none of this is on the click path.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any

from aiohttp import web

from tracker import redis_keys as K
from tracker.delivery import queue
from tracker.delivery import targets as T
from tracker.edge.admin import audit, error, json_response, read_body
from tracker.edge.keys import SETTINGS
from tracker.reasons import AdminError
from tracker.redis_connection import sync_client

SYNC_REDIS = web.AppKey("deliveries_redis", object)
_lock = threading.Lock()


def _redis(app: web.Application) -> Any:
    with _lock:
        if app.get(SYNC_REDIS) is None:
            app[SYNC_REDIS] = sync_client(app[SETTINGS].redis.url)
        return app[SYNC_REDIS]


async def _run(request: web.Request, work) -> Any:
    redis = _redis(request.app)
    return await asyncio.to_thread(work, redis)


def _get(redis: Any, target_id: str) -> T.Target | None:
    raw = redis.hget(K.DELIVERY_TARGETS_HASH, target_id)
    return T.Target.from_json(raw) if raw else None


async def create_target(request: web.Request) -> web.Response:
    body = await read_body(request)
    try:
        target = T.validate(body)
    except T.TargetError as exc:
        return error(400, AdminError.INVALID, str(exc))
    if not await _run(request, lambda r: T.create(r, target)):
        return error(409, AdminError.EXISTS, f"target {target.id!r} already exists")
    audit(request, f"delivery_target:{target.id}", None, target.public())
    return json_response(target.public(show_secret=True), 201)


async def list_targets(request: web.Request) -> web.Response:
    found = await _run(request, T.load_all)
    return json_response({"targets": [t.public() for t in sorted(found, key=lambda t: t.id)]})


async def get_target(request: web.Request) -> web.Response:
    target = await _run(request, lambda r: _get(r, request.match_info["id"]))
    if target is None:
        return error(404, AdminError.NOT_FOUND, "no such target")
    return json_response(target.public())


async def update_target(request: web.Request) -> web.Response:
    body = await read_body(request)
    before = await _run(request, lambda r: _get(r, request.match_info["id"]))
    if before is None:
        return error(404, AdminError.NOT_FOUND, "no such target")
    try:
        target = T.validate(body, current=before)
    except T.TargetError as exc:
        return error(400, AdminError.INVALID, str(exc))
    await _run(request, lambda r: T.save(r, target))
    audit(request, f"delivery_target:{target.id}", before.public(), target.public())
    return json_response(target.public(show_secret="secret" in body))


async def delete_target(request: web.Request) -> web.Response:
    target_id = request.match_info["id"]

    def work(redis: Any) -> T.Target | None:
        found = _get(redis, target_id)
        if found is not None:
            redis.hdel(K.DELIVERY_TARGETS_HASH, target_id)
            redis.incr(K.DELIVERY_TARGETS_VERSION)
        return found

    before = await _run(request, work)
    if before is None:
        return error(404, AdminError.NOT_FOUND, "no such target")
    audit(request, f"delivery_target:{target_id}", before.public(), None)
    return json_response({"deleted": target_id})


async def state(request: web.Request) -> web.Response:
    def work(redis: Any) -> dict:
        return {"queue": queue.sizes(redis), "dead": queue.dead_letters(redis)}

    return json_response(await _run(request, work))


async def retry(request: web.Request) -> web.Response:
    delivery_id = request.match_info["id"]
    if not await _run(request, lambda r: queue.replay(r, delivery_id)):
        return error(404, AdminError.NOT_FOUND, "no dead letter with that id")
    audit(request, f"delivery:{delivery_id}", "dead", "queued")
    return json_response({"replayed": [delivery_id]})


async def retry_failed(request: web.Request) -> web.Response:
    def work(redis: Any) -> list[str]:
        return [j["id"] for j in queue.dead_letters(redis) if queue.replay(redis, j["id"])]

    replayed = await _run(request, work)
    audit(request, "deliveries:dead", len(replayed), "queued")
    return json_response({"replayed": replayed})


async def close(app: web.Application) -> None:
    client: Any = app.get(SYNC_REDIS)
    if client is not None:
        client.close()


def add_routes(app: web.Application) -> None:
    r = app.router
    r.add_post("/api/deliveries/targets", create_target)
    r.add_get("/api/deliveries/targets", list_targets)
    r.add_get("/api/deliveries/targets/{id}", get_target)
    r.add_patch("/api/deliveries/targets/{id}", update_target)
    r.add_delete("/api/deliveries/targets/{id}", delete_target)
    r.add_get("/api/deliveries", state)
    r.add_post("/api/deliveries/retry-failed", retry_failed)
    r.add_post("/api/deliveries/{id}/retry", retry)
    app.on_cleanup.append(close)
