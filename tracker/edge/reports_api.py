"""`GET /api/reports` (JSON, or CSV with format=csv) and `GET /api/reports/metrics`.

The edge validates the request and renders the SQL (tracker/reports/query.py); the sink's
query endpoint runs it (tracker/reports/store.py says why). The caller's scope, from its
API key, is added as forced filters before anything is rendered.
"""

from __future__ import annotations

import asyncio
import csv
import io
import re
from collections.abc import AsyncIterator
from datetime import UTC, datetime

from aiohttp import web
from prometheus_client import CollectorRegistry, multiprocess

from tracker import refusals
from tracker.access import Role
from tracker.edge.admin import error, json_response
from tracker.edge.keys import PRINCIPAL, REDIS, REPORT_STORE, SETTINGS
from tracker.reasons import AdminError
from tracker.reports import metrics, query, reconciliation
from tracker.reports.store import ReportStore, StoreError
from tracker.timefmt import now_ms

_FILTER_RE = re.compile(r"\Afilter\[(\w{1,32})\]\Z")


def scope_of(request: web.Request) -> dict[str, tuple[str, ...]]:
    """Forced filters for the caller (set by the access middleware; none for admin)."""
    principal = request.get(PRINCIPAL)
    return principal.scope() if principal is not None else {}


def parse_request(request: web.Request) -> query.Report:
    filters = {}
    for name, value in request.query.items():
        if match := _FILTER_RE.match(name):
            filters[match[1]] = value
        elif name.startswith("filter"):
            raise query.ReportError(f"filters are written filter[field]=value, not {name[:40]}")
    principal = request.get(PRINCIPAL)
    report = query.parse(
        request.query,
        filters,
        default_currency=request.app[SETTINGS].conversions.default_currency,
        now=datetime.now(UTC),
        scope=scope_of(request),
    )
    if principal is not None and principal.role == Role.AFFILIATE:
        hidden = [name for name in report.metrics if metrics.METRICS[name].revenue]
        if hidden:  # what the advertiser pays is not the affiliate's to see
            raise query.ReportError(f"an affiliate key may not see {hidden[0]}", 403)
    return report


async def run_report(request: web.Request, report: query.Report) -> dict:
    store = request.app[REPORT_STORE]
    plan = query.plan(report, store.database)
    answers = await asyncio.gather(*(store.query(sql) for sql in plan.queries))
    return query.assemble(plan, list(answers))


async def get_report(request: web.Request) -> web.Response:
    fmt = request.query.get("format", "json")
    if fmt not in ("json", "csv"):
        return error(400, AdminError.INVALID_REPORT, "format must be json or csv")
    try:
        report = parse_request(request)
    except query.ReportError as exc:
        return error(exc.status, AdminError.INVALID_REPORT, str(exc))
    try:
        result = await run_report(request, report)
    except StoreError as exc:
        return error(502, AdminError.REPORT_STORE, str(exc))
    if fmt == "csv":
        return web.Response(
            text=to_csv(result),
            content_type="text/csv",
            headers={"Content-Disposition": 'attachment; filename="report.csv"'},
        )
    return json_response(result)


def to_csv(result: dict) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    columns = query.csv_columns(result)
    writer.writerow(columns)
    for row in result["rows"]:
        writer.writerow(["" if row[c] is None else row[c] for c in columns])
    return out.getvalue()


async def get_metrics(request: web.Request) -> web.Response:
    return json_response(
        {
            "metrics": [{"name": n, "definition": d} for n, d in metrics.definitions()],
            "fields": list(query.FIELDS),
        }
    )


async def get_reconciliation(request: web.Request) -> web.Response:
    """`?advertiser=&from=&to=&tz=`; an advertiser's key gets its own, whatever it asks."""
    principal = request.get(PRINCIPAL)
    advertiser = request.query.get("advertiser", "")
    if principal is not None and principal.role == Role.ADVERTISER:
        advertiser = advertiser or principal.subject
        if advertiser != principal.subject:
            return error(403, AdminError.FORBIDDEN, "an advertiser key sees its own only")
    try:
        reconciliation.check_advertiser(advertiser)
        report = query.parse(
            {k: request.query.get(k, "") for k in ("from", "to", "tz")},
            {},
            default_currency=request.app[SETTINGS].conversions.default_currency,
            now=datetime.now(UTC),
        )
    except query.ReportError as exc:
        return error(exc.status, AdminError.INVALID_REPORT, str(exc))
    store = request.app[REPORT_STORE]
    try:
        answers = await asyncio.gather(
            *(
                store.query(sql)
                for sql in reconciliation.queries(report, store.database, advertiser)
            )
        )
    except StoreError as exc:
        return error(502, AdminError.REPORT_STORE, str(exc))
    redis = request.app[REDIS]
    pipe = redis.pipeline(transaction=False)
    for day in refusals.days(report.start, report.end):
        pipe.hgetall(refusals.day_key(day))
    refused = refusals.totals(await pipe.execute(), advertiser)
    return json_response(reconciliation.assemble(report, advertiser, list(answers), refused))


async def live(request: web.Request) -> web.Response:
    """Clicks recorded by every edge process so far (published once a second): the
    dashboard's clicks-per-second counter is the difference between two readings."""
    loop = asyncio.get_running_loop()
    total = await loop.run_in_executor(None, clicks_total)
    return json_response({"clicks_total": total, "at_ms": now_ms()})


def clicks_total() -> int:
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)
    return int(
        sum(
            sample.value
            for family in registry.collect()
            if family.name == "tracker_clicks"
            for sample in family.samples
            if sample.name == "tracker_clicks_total"
        )
    )


async def store_ctx(app: web.Application) -> AsyncIterator[None]:
    store = ReportStore(app[SETTINGS])
    app[REPORT_STORE] = store
    yield
    await store.close()


def add_routes(app: web.Application) -> None:
    app.cleanup_ctx.append(store_ctx)
    app.router.add_get("/api/reports", get_report)
    app.router.add_get("/api/reports/metrics", get_metrics)
    app.router.add_get("/api/live", live)
    app.router.add_get("/api/reports/reconciliation", get_reconciliation)
