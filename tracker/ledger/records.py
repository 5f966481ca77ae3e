"""Affiliates and campaigns: validation of what the admin API and the CLI receive, and
their storage in the ledger's SQL store. Pure validation first, I/O at the end.
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation
from typing import Any

import orjson
from sqlalchemy import Connection, insert, select, update

from attribution import MODELS
from attribution.money import from_minor, is_currency, to_minor
from tracker.ledger import plans
from tracker.ledger import schema as T
from tracker.ledger.statuses import AFFILIATE_STATUSES, CAMPAIGN_STATUSES
from tracker.ledger.store import Store
from tracker.timefmt import format_ms

ID_RE = re.compile(r"\A[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}\Z")


class RecordError(ValueError):
    """Invalid input; the message is the reason shown to the user (HTTP 400)."""


class NotFound(LookupError):
    """No such record (HTTP 404)."""


class Conflict(ValueError):
    """The record exists, or the change breaks a rule between records (HTTP 409)."""


def _object(data: Any, allowed: set[str]) -> dict:
    if not isinstance(data, dict):
        raise RecordError("body must be a JSON object")
    unknown = set(data) - allowed
    if unknown:
        raise RecordError(f"unknown field: {sorted(unknown)[0]}")
    return data


def _id(value: Any, what: str) -> str:
    if not isinstance(value, str) or not ID_RE.match(value):
        raise RecordError(f"{what} must be 1-64 letters, digits, '-', '_', '.' or ':'")
    return value


def _name(value: Any, default: str) -> str:
    if value is None:
        return default
    if not isinstance(value, str) or not 1 <= len(value) <= 200 or not value.isprintable():
        raise RecordError("name must be 1 to 200 printable characters")
    return value


def _amount_minor(value: Any, currency: str, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise RecordError(f'{what} must be a decimal string such as "100.00"')
    try:
        amount = Decimal(str(value))
        minor = to_minor(amount, currency)
    except (InvalidOperation, ValueError):
        raise RecordError(f"{what} must be an amount in {currency}") from None
    if minor < 0:
        raise RecordError(f"{what} must be >= 0")
    return minor


def _optional_count(value: Any, what: str, *, maximum: int = 10**9) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= maximum:
        raise RecordError(f"{what} must be a whole number from 0 to {maximum}, or null")
    return value


# -- affiliates ---------------------------------------------------------------------------

AFFILIATE_FIELDS = {"id", "name", "status", "parent_id", "currency", "min_payout"}


def affiliate_values(data: Any, *, current: dict | None, default_min_payout: str) -> dict:
    """The columns of a new affiliate (current None) or of a changed one."""
    data = _object(data, AFFILIATE_FIELDS - ({"id"} if current else set()))
    out = dict(current or {})
    if current is None:
        out["id"] = _id(data.get("id"), "id")
    out["name"] = _name(data.get("name"), out.get("name") or out["id"])
    status = data.get("status", out.get("status", "active"))
    if status not in AFFILIATE_STATUSES:
        raise RecordError("status must be active, paused or banned")
    out["status"] = status
    currency = data.get("currency", out.get("currency", "USD"))
    if not is_currency(currency):
        raise RecordError("currency must be an ISO 4217 code such as USD")
    out["currency"] = currency
    if "min_payout" in data:
        out["min_payout_minor"] = _amount_minor(data["min_payout"], currency, "min_payout")
    elif current is None or currency != current.get("currency"):
        out["min_payout_minor"] = _amount_minor(default_min_payout, currency, "min_payout")
    if "parent_id" in data or current is None:
        parent = data.get("parent_id")
        out["parent_id"] = None if parent in (None, "") else _id(parent, "parent_id")
    return out


def check_parent(conn: Connection, affiliate_id: str, parent_id: str | None, max_levels: int):
    """A referrer must exist, and the change must make no cycle and no chain deeper than
    the level cap (the affiliate's deepest referral plus its referrers)."""
    if parent_id is None:
        return
    if parent_id == affiliate_id:
        raise Conflict("an affiliate cannot refer itself")
    parents = dict(conn.execute(select(T.affiliates.c.id, T.affiliates.c.parent_id)).all())
    if parent_id not in parents:
        raise Conflict(f"no affiliate {parent_id!r} to be the referrer")
    above = 0
    node: str | None = parent_id
    while node is not None:
        if node == affiliate_id:
            raise Conflict("that referrer would make a cycle")
        above += 1
        node = parents.get(node)
    below = _depth_below(affiliate_id, parents)
    if above + 1 + below > max_levels:
        raise Conflict(f"that referrer would make a chain deeper than {max_levels} levels")


def _depth_below(affiliate_id: str, parents: dict[str, str | None]) -> int:
    children: dict[str, list[str]] = {}
    for child, parent in parents.items():
        if parent:
            children.setdefault(parent, []).append(child)
    deepest, frontier = 0, [affiliate_id]
    while frontier:
        frontier = [c for node in frontier for c in children.get(node, [])]
        deepest += bool(frontier)
        if deepest > plans.MAX_LEVELS:
            break
    return deepest


def affiliate_public(row: Any) -> dict:
    return {
        "id": row["id"],
        "name": row["name"],
        "status": row["status"],
        "parent_id": row["parent_id"],
        "currency": row["currency"],
        "min_payout": str(from_minor(row["min_payout_minor"], row["currency"])),
        "created_at": format_ms(row["created_at"]),
        "updated_at": format_ms(row["updated_at"]),
    }


def create_affiliate(store: Store, data: Any, *, max_levels: int, min_payout: str) -> dict:
    values = affiliate_values(data, current=None, default_min_payout=min_payout)
    now = store.now_ms()
    with store.begin() as conn:
        if conn.execute(select(T.affiliates.c.id).where(T.affiliates.c.id == values["id"])).first():
            raise Conflict(f"affiliate {values['id']!r} already exists")
        check_parent(conn, values["id"], values["parent_id"], max_levels)
        conn.execute(insert(T.affiliates), [{**values, "created_at": now, "updated_at": now}])
        return affiliate_public(_get(conn, T.affiliates, values["id"], "affiliate"))


def update_affiliate(
    store: Store, affiliate_id: str, data: Any, *, max_levels: int, min_payout: str
) -> dict:
    with store.begin() as conn:
        current = dict(_get(conn, T.affiliates, affiliate_id, "affiliate"))
        values = affiliate_values(data, current=current, default_min_payout=min_payout)
        if values["parent_id"] != current["parent_id"]:
            check_parent(conn, affiliate_id, values["parent_id"], max_levels)
        values["updated_at"] = store.now_ms()
        conn.execute(update(T.affiliates).where(T.affiliates.c.id == affiliate_id).values(values))
        return affiliate_public(_get(conn, T.affiliates, affiliate_id, "affiliate"))


def list_affiliates(store: Store, status: str | None = None) -> list[dict]:
    query = select(T.affiliates).order_by(T.affiliates.c.id)
    if status:
        query = query.where(T.affiliates.c.status == status)
    with store.read() as conn:
        return [affiliate_public(r) for r in conn.execute(query).mappings()]


def get_affiliate(store: Store, affiliate_id: str) -> dict:
    with store.read() as conn:
        return affiliate_public(_get(conn, T.affiliates, affiliate_id, "affiliate"))


# -- campaigns ----------------------------------------------------------------------------

CAMPAIGN_FIELDS = {
    "id",
    "advertiser_id",
    "name",
    "status",
    "plan",
    "revenue",
    "pay_model",
    "hold_days",
    "daily_cap",
    "monthly_cap",
    "auto_approve_days",
    "allow_advertiser_payout",
    "pay_flagged",
}


def campaign_values(data: Any, *, current: dict | None) -> dict:
    data = _object(data, CAMPAIGN_FIELDS - ({"id"} if current else set()))
    out = dict(current or {})
    if current is None:
        out["id"] = _id(data.get("id"), "id")
        out["advertiser_id"] = _id(data.get("advertiser_id"), "advertiser_id")
    elif "advertiser_id" in data:
        out["advertiser_id"] = _id(data["advertiser_id"], "advertiser_id")
    out["name"] = _name(data.get("name"), out.get("name") or out["id"])
    status = data.get("status", out.get("status", "active"))
    if status not in CAMPAIGN_STATUSES:
        raise RecordError("status must be active or paused")
    out["status"] = status
    try:
        if "plan" in data or current is None:
            out["plan"] = orjson.dumps(plans.parse_plan(data.get("plan"))).decode()
        if "revenue" in data or current is None:
            out["revenue"] = orjson.dumps(plans.parse_revenue(data.get("revenue"))).decode()
    except plans.PlanError as exc:
        raise RecordError(str(exc)) from None
    model = data.get("pay_model", out.get("pay_model", "last_click"))
    if model not in MODELS:
        raise RecordError(f"pay_model must be one of {', '.join(MODELS)}")
    out["pay_model"] = model
    hold = data.get("hold_days", out.get("hold_days", 30))
    if isinstance(hold, bool) or not isinstance(hold, int) or not 0 <= hold <= 3650:
        raise RecordError("hold_days must be a whole number from 0 to 3650")
    out["hold_days"] = hold
    for key in ("daily_cap", "monthly_cap", "auto_approve_days"):
        if key in data or current is None:
            out[key] = _optional_count(data.get(key), key)
    for key in ("allow_advertiser_payout", "pay_flagged"):
        value = data.get(key, out.get(key, False))
        if not isinstance(value, bool):
            raise RecordError(f"{key} must be true or false")
        out[key] = value
    return out


def campaign_public(row: Any) -> dict:
    return {
        "id": row["id"],
        "advertiser_id": row["advertiser_id"],
        "name": row["name"],
        "status": row["status"],
        "plan": orjson.loads(row["plan"]),
        "plan_version": row["plan_version"],
        "revenue": orjson.loads(row["revenue"]),
        "pay_model": row["pay_model"],
        "hold_days": row["hold_days"],
        "daily_cap": row["daily_cap"],
        "monthly_cap": row["monthly_cap"],
        "auto_approve_days": row["auto_approve_days"],
        "allow_advertiser_payout": bool(row["allow_advertiser_payout"]),
        "pay_flagged": bool(row["pay_flagged"]),
        "created_at": format_ms(row["created_at"]),
        "updated_at": format_ms(row["updated_at"]),
    }


def create_campaign(store: Store, data: Any) -> dict:
    values = campaign_values(data, current=None)
    now = store.now_ms()
    with store.begin() as conn:
        if conn.execute(select(T.campaigns.c.id).where(T.campaigns.c.id == values["id"])).first():
            raise Conflict(f"campaign {values['id']!r} already exists")
        values.update(plan_version=1, created_at=now, updated_at=now)
        conn.execute(insert(T.campaigns), [values])
        _save_version(conn, values, now)
        return campaign_public(_get(conn, T.campaigns, values["id"], "campaign"))


def update_campaign(store: Store, campaign_id: str, data: Any) -> dict:
    with store.begin() as conn:
        current = dict(_get(conn, T.campaigns, campaign_id, "campaign"))
        values = campaign_values(data, current=current)
        now = store.now_ms()
        values["updated_at"] = now
        if (values["plan"], values["revenue"]) != (current["plan"], current["revenue"]):
            values["plan_version"] = current["plan_version"] + 1
            _save_version(conn, values, now)
        conn.execute(update(T.campaigns).where(T.campaigns.c.id == campaign_id).values(values))
        return campaign_public(_get(conn, T.campaigns, campaign_id, "campaign"))


def _save_version(conn: Connection, values: dict, now: int) -> None:
    conn.execute(
        insert(T.plan_versions),
        [
            {
                "campaign_id": values["id"],
                "version": values["plan_version"],
                "plan": values["plan"],
                "revenue": values["revenue"],
                "created_at": now,
            }
        ],
    )


def list_campaigns(store: Store, status: str | None = None) -> list[dict]:
    query = select(T.campaigns).order_by(T.campaigns.c.id)
    if status:
        query = query.where(T.campaigns.c.status == status)
    with store.read() as conn:
        return [campaign_public(r) for r in conn.execute(query).mappings()]


def get_campaign(store: Store, campaign_id: str) -> dict:
    with store.read() as conn:
        return campaign_public(_get(conn, T.campaigns, campaign_id, "campaign"))


def _get(conn: Connection, table, record_id: str, what: str):
    row = conn.execute(select(table).where(table.c.id == record_id)).mappings().first()
    if row is None:
        raise NotFound(f"no {what} {record_id!r}")
    return row
