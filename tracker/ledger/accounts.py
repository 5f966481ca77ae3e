"""What an affiliate is owed: balances and commissions, read from the ledger entries.

Every entry sits in exactly one part of a balance, so the parts add up to the sum of the
entries: `pending` (its conversion is pending), `on_hold` (approved, hold not over),
`available` (approved, payable, in no payout), `in_payout` (in a pending or processing
payout) and `paid`. A failed payout's entries are available again.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from sqlalchemy import Connection, case, func, select

from attribution.money import from_minor
from tracker.ledger import schema as T
from tracker.timefmt import format_ms

PARTS = ("pending", "on_hold", "available", "in_payout", "paid")

E, ITEMS, P = T.entries, T.payout_items, T.payouts


def _taken():
    """entry seq -> status of the live (not failed) payout that holds it."""
    return (
        select(ITEMS.c.entry_seq, P.c.status)
        .join(P, P.c.id == ITEMS.c.payout_id)
        .where(P.c.status != "failed")
        .subquery()
    )


def balance_minor(conn: Connection, affiliate_id: str | None, now: int) -> dict:
    """{(affiliate, currency): {part: minor units}} for one affiliate (or all)."""
    taken = _taken()
    part = case(
        (E.c.state == "pending", "pending"),
        (taken.c.status == "paid", "paid"),
        (taken.c.status.is_not(None), "in_payout"),
        (E.c.available_at <= now, "available"),
        else_="on_hold",
    ).label("part")
    query = (
        select(E.c.affiliate_id, E.c.currency, part, func.sum(E.c.amount_minor))
        .select_from(E.outerjoin(taken, taken.c.entry_seq == E.c.seq))
        .group_by(E.c.affiliate_id, E.c.currency, part)
    )
    if affiliate_id is not None:
        query = query.where(E.c.affiliate_id == affiliate_id)
    out: dict[tuple[str, str], dict[str, int]] = defaultdict(lambda: dict.fromkeys(PARTS, 0))
    for affiliate, currency, name, total in conn.execute(query):
        out[(affiliate, currency)][name] += int(total)
    return dict(out)


def balance(conn: Connection, affiliate_id: str, now: int) -> list[dict]:
    """The affiliate's balance per currency, as the API shows it (decimal strings)."""
    rows = []
    for (_, currency), parts in sorted(balance_minor(conn, affiliate_id, now).items()):
        rows.append(
            {
                "currency": currency,
                **{name: str(from_minor(parts[name], currency)) for name in PARTS},
                "total": str(from_minor(sum(parts.values()), currency)),
            }
        )
    return rows


def commissions(
    conn: Connection, affiliate_id: str, now: int, *, limit: int = 100, offset: int = 0
) -> list[dict]:
    """The affiliate's commissions, newest first, each with its current status:
    pending, on_hold, available, in_payout, paid, rejected, reversed (or clawed_back when
    it had been paid)."""
    ids = [
        row[0]
        for row in conn.execute(
            select(E.c.commission_id)
            .where(E.c.affiliate_id == affiliate_id)
            .group_by(E.c.commission_id)
            .order_by(func.min(E.c.seq).desc())
            .limit(limit)
            .offset(offset)
        )
    ]
    if not ids:
        return []
    taken = _taken()
    entries = conn.execute(
        select(E, taken.c.status.label("payout_status"))
        .select_from(E.outerjoin(taken, taken.c.entry_seq == E.c.seq))
        .where(E.c.commission_id.in_(ids))
        .order_by(E.c.seq)
    ).mappings()
    by_id: dict[str, list[Any]] = defaultdict(list)
    for entry in entries:
        by_id[entry["commission_id"]].append(entry)
    return [_commission(by_id[cid], now) for cid in ids]


def _commission(entries: list[Any], now: int) -> dict:
    kinds = {e["kind"]: e for e in entries}
    last = entries[-1]
    approved = kinds.get("approve")
    if "reverse" in kinds:
        status = "clawed_back" if approved and approved["payout_status"] == "paid" else "reversed"
    elif "reject" in kinds:
        status = "rejected"
    elif approved is not None:
        if approved["payout_status"] == "paid":
            status = "paid"
        elif approved["payout_status"]:
            status = "in_payout"
        else:
            status = "available" if approved["available_at"] <= now else "on_hold"
    elif "unpend" in kinds:  # approved without a commission (the plan changed)
        status = "cancelled"
    else:
        status = "pending"
    shown = approved or kinds.get("accrue") or last
    currency = shown["currency"]
    return {
        "commission_id": shown["commission_id"],
        "conversion_id": shown["conversion_id"],
        "campaign_id": shown["campaign_id"],
        "level": shown["level"],
        "status": status,
        "amount": str(from_minor(shown["amount_minor"], currency)),
        "currency": currency,
        "plan_version": shown["plan_version"],
        "created_at": format_ms(entries[0]["created_at"]),
        "available_at": format_ms(approved["available_at"]) if approved else None,
    }


def ledger_total(conn: Connection) -> dict[str, int]:
    """Sum of every entry per currency (for checks: equals the sum of all balances)."""
    return {
        currency: int(total)
        for currency, total in conn.execute(
            select(E.c.currency, func.sum(E.c.amount_minor)).group_by(E.c.currency)
        )
    }


__all__ = ["PARTS", "balance", "balance_minor", "commissions", "ledger_total"]
