"""The programme API: affiliates, campaigns, balances, commissions and payouts (bearer
token, like every /api/ route). The ledger's SQL store does the work in a thread, so the
edge's event loop never waits on it; the store is opened on the first such request.
Errors are 4xx JSON with a short reason; nothing is stored half-way (one transaction).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import orjson
from aiohttp import web

from tracker.config import Settings
from tracker.edge.admin import error, json_response
from tracker.edge.keys import SETTINGS
from tracker.lazy import load
from tracker.ledger import lazy as ledger
from tracker.ledger.lazy import accounts, payouts, records
from tracker.ledger.statuses import PAYOUT_STATUSES
from tracker.reasons import AdminError
from tracker.timefmt import parse_when

if TYPE_CHECKING:
    from tracker.ledger.store import Store

LEDGER = web.AppKey("ledger", object)  # a Store, opened lazily
_open_lock = threading.Lock()


def _store(app: web.Application) -> Store:
    with _open_lock:
        if app.get(LEDGER) is None:
            load(*ledger.MODULES)  # here, under the lock: not raced by another thread
            app[LEDGER] = ledger.store.open_store(app[SETTINGS])
        return app[LEDGER]  # type: ignore[return-value]


async def _call(request: web.Request, work: Callable[[Store, Settings], Any], status: int = 200):
    """Run `work` against the store in a thread; map the ledger's errors to 4xx JSON."""
    app = request.app
    try:
        result = await asyncio.to_thread(lambda: work(_store(app), app[SETTINGS]))
    except records.RecordError as exc:
        return error(400, AdminError.INVALID, str(exc))
    except records.NotFound as exc:
        return error(404, AdminError.NOT_FOUND, str(exc))
    except records.Conflict as exc:
        return error(409, AdminError.CONFLICT, str(exc))
    except payouts.PayoutError as exc:
        code = {400: AdminError.INVALID, 404: AdminError.NOT_FOUND}.get(
            exc.status, AdminError.CONFLICT
        )
        return error(exc.status, code, str(exc))
    if isinstance(result, web.Response):
        return result
    return json_response(result, status)


async def _body(request: web.Request) -> Any:
    raw = await request.read()
    if not raw:
        return {}
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise web.HTTPBadRequest(
            body=orjson.dumps(
                {"error": AdminError.INVALID_JSON, "reason": "body is not valid JSON"}
            ),
            content_type="application/json",
        ) from None


# -- affiliates ---------------------------------------------------------------------------


async def create_affiliate(request: web.Request) -> web.Response:
    data = await _body(request)
    return await _call(
        request,
        lambda store, s: records.create_affiliate(
            store, data, max_levels=s.commissions.max_levels, min_payout=s.commissions.min_payout
        ),
        201,
    )


async def list_affiliates(request: web.Request) -> web.Response:
    status = request.query.get("status")
    return await _call(
        request,
        lambda store, s: (lambda items: {"affiliates": items, "count": len(items)})(
            records.list_affiliates(store, status)
        ),
    )


async def get_affiliate(request: web.Request) -> web.Response:
    aff = request.match_info["id"]
    return await _call(request, lambda store, s: records.get_affiliate(store, aff))


async def update_affiliate(request: web.Request) -> web.Response:
    aff = request.match_info["id"]
    data = await _body(request)
    return await _call(
        request,
        lambda store, s: records.update_affiliate(
            store,
            aff,
            data,
            max_levels=s.commissions.max_levels,
            min_payout=s.commissions.min_payout,
        ),
    )


async def affiliate_balance(request: web.Request) -> web.Response:
    aff = request.match_info["id"]

    def work(store: Store, s: Settings):
        records.get_affiliate(store, aff)
        with store.read() as conn:
            return {"affiliate_id": aff, "balances": accounts.balance(conn, aff, store.now_ms())}

    return await _call(request, work)


async def affiliate_commissions(request: web.Request) -> web.Response:
    aff = request.match_info["id"]
    try:
        limit = int(request.query.get("limit", "100"))
        offset = int(request.query.get("offset", "0"))
        if not (1 <= limit <= 1000 and offset >= 0):
            raise ValueError
    except ValueError:
        return error(400, AdminError.INVALID, "limit must be 1 to 1000 and offset >= 0")

    def work(store: Store, s: Settings):
        records.get_affiliate(store, aff)
        with store.read() as conn:
            items = accounts.commissions(conn, aff, store.now_ms(), limit=limit, offset=offset)
        return {"affiliate_id": aff, "commissions": items, "count": len(items)}

    return await _call(request, work)


async def affiliate_payouts(request: web.Request) -> web.Response:
    aff = request.match_info["id"]

    def work(store: Store, s: Settings):
        records.get_affiliate(store, aff)
        with store.read() as conn:
            items = payouts.listing(conn, affiliate_id=aff)
        return {"affiliate_id": aff, "payouts": items, "count": len(items)}

    return await _call(request, work)


# -- campaigns ----------------------------------------------------------------------------


async def create_campaign(request: web.Request) -> web.Response:
    data = await _body(request)
    return await _call(request, lambda store, s: records.create_campaign(store, data), 201)


async def list_campaigns(request: web.Request) -> web.Response:
    status = request.query.get("status")
    return await _call(
        request,
        lambda store, s: (lambda items: {"campaigns": items, "count": len(items)})(
            records.list_campaigns(store, status)
        ),
    )


async def get_campaign(request: web.Request) -> web.Response:
    camp = request.match_info["id"]
    return await _call(request, lambda store, s: records.get_campaign(store, camp))


async def update_campaign(request: web.Request) -> web.Response:
    camp = request.match_info["id"]
    data = await _body(request)
    return await _call(request, lambda store, s: records.update_campaign(store, camp, data))


# -- payouts ------------------------------------------------------------------------------


async def run_payouts(request: web.Request) -> web.Response:
    data = await _body(request)
    if not isinstance(data, dict) or set(data) - {"cutoff"}:
        return error(400, AdminError.INVALID, "body may only name a cutoff")
    try:
        cutoff = parse_when(data.get("cutoff"))
    except ValueError as exc:
        return error(400, AdminError.INVALID, f"cutoff: {exc}")

    def work(store: Store, s: Settings):
        done = payouts.run(store, cutoff=cutoff, export_dir=s.data_path / "payouts")
        return {
            "run_id": done.id,
            "payouts": done.payouts,
            "count": len(done.payouts),
            "csv": done.csv,
        }

    return await _call(request, work, 201)


async def list_payouts(request: web.Request) -> web.Response:
    query = request.query
    status = query.get("status")
    if status is not None and status not in PAYOUT_STATUSES:
        return error(400, AdminError.INVALID, f"status must be one of {', '.join(PAYOUT_STATUSES)}")

    def work(store: Store, s: Settings):
        with store.read() as conn:
            items = payouts.listing(
                conn,
                affiliate_id=query.get("affiliate_id"),
                status=status,
                run_id=query.get("run_id"),
            )
        if query.get("format") == "csv":
            return web.Response(text=payouts.to_csv(items), content_type="text/csv")
        return {"payouts": items, "count": len(items)}

    return await _call(request, work)


async def update_payout(request: web.Request) -> web.Response:
    payout_id = request.match_info["id"]
    data = await _body(request)
    if not isinstance(data, dict) or set(data) - {"status", "reference"}:
        return error(400, AdminError.INVALID, 'body: {"status": ..., "reference": ...}')
    reference = data.get("reference", "")
    if not isinstance(reference, str):
        return error(400, AdminError.INVALID, "reference must be text")
    return await _call(
        request,
        lambda store, s: payouts.set_status(store, payout_id, str(data.get("status")), reference),
    )


async def close_store(app: web.Application) -> None:
    store = app.get(LEDGER)
    if store is not None:
        store.close()  # type: ignore[attr-defined]


def add_routes(app: web.Application) -> None:
    app[LEDGER] = None
    app.on_cleanup.append(close_store)
    r = app.router
    r.add_post("/api/affiliates", create_affiliate)
    r.add_get("/api/affiliates", list_affiliates)
    r.add_get("/api/affiliates/{id}", get_affiliate)
    r.add_patch("/api/affiliates/{id}", update_affiliate)
    r.add_get("/api/affiliates/{id}/balance", affiliate_balance)
    r.add_get("/api/affiliates/{id}/commissions", affiliate_commissions)
    r.add_get("/api/affiliates/{id}/payouts", affiliate_payouts)
    r.add_post("/api/campaigns", create_campaign)
    r.add_get("/api/campaigns", list_campaigns)
    r.add_get("/api/campaigns/{id}", get_campaign)
    r.add_patch("/api/campaigns/{id}", update_campaign)
    r.add_post("/api/payouts/runs", run_payouts)
    r.add_get("/api/payouts", list_payouts)
    r.add_patch("/api/payouts/{id}", update_payout)
