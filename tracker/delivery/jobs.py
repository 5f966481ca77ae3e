"""Which deliveries a batch of conversion events makes, and what each one sends. Pure.

A conversion row fires `accepted` on its first report and its status (`approved`,
`rejected`, `reversed`) on every step; each target that hears a trigger gets one
delivery. A delivery's id is derived from (conversion, trigger, target), so the same
event enqueued twice is the same delivery, and receivers use it as the idempotency key.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from decimal import Decimal

import orjson

from tracker.delivery.targets import Target, matching
from tracker.ids import ZERO_UUID
from tracker.macros import render_postback

SUB_KEYS = ("sub1", "sub2", "sub3", "sub4", "sub5")
STATUS_TRIGGERS = ("approved", "rejected", "reversed")


def triggers_of(row: Mapping) -> list[str]:
    out = [] if row.get("previous_status") else ["accepted"]
    if row.get("status") in STATUS_TRIGGERS:
        out.append(row["status"])
    return out


def delivery_id(conversion_id: str, trigger: str, target_id: str) -> str:
    return hashlib.sha256(f"{conversion_id}\n{trigger}\n{target_id}".encode()).hexdigest()[:32]


def payouts_of(commission_rows: Iterable[Mapping]) -> dict[tuple[str, str, str], Decimal]:
    """(conversion id, status, affiliate) -> the commission that step booked for it (all
    levels the affiliate earns on), from the rows the ledger mirrors to ClickHouse."""
    out: dict[tuple[str, str, str], Decimal] = {}
    for row in commission_rows:
        if int(row.get("level", 0)) < 1 or row.get("status") != row.get("step"):
            continue
        key = (row["conversion_id"], row["status"], row["affiliate_id"])
        out[key] = out.get(key, Decimal(0)) + Decimal(row["payout"])
    return out


def macro_values(
    row: Mapping, trigger: str, click: Mapping | None, payout: Decimal | None
) -> dict[str, str]:
    click = click or {}
    values = {
        "click_id": "" if row.get("click_id") in (None, ZERO_UUID) else str(row["click_id"]),
        "conversion_id": str(row["conversion_id"]),
        "txid": str(row.get("txid", "")),
        "event": str(row.get("event", "")),
        "status": str(row.get("status", "")),
        "trigger": trigger,
        "amount": str(row.get("amount", "")),
        "currency": str(row.get("currency", "")),
        "payout": "" if payout is None else str(payout),
        "campaign_id": str(row.get("campaign_id", "")),
        "affiliate_id": str(row.get("affiliate_id", "")),
        "advertiser_id": str(row.get("advertiser_id", "")),
    }
    for key in SUB_KEYS:  # what the affiliate passed on its click (its own click id)
        values[key] = str(click.get(key) or row.get(key) or "")
    return values


def webhook_body(job_id: str, trigger: str, row: Mapping, values: dict[str, str], ms: int) -> str:
    data = dict(values)
    data.pop("trigger")
    data.update(
        event_time=row.get("event_time", ""),
        previous_status=row.get("previous_status", ""),
        link_slug=row.get("link_slug", ""),
        source=row.get("source", ""),
    )
    return orjson.dumps(
        {"id": job_id, "type": f"conversion.{trigger}", "created_ms": ms, "data": data}
    ).decode()


def jobs_for(
    rows: Iterable[Mapping],
    targets: list[Target],
    *,
    clicks: Mapping[str, Mapping],
    payouts: Mapping[tuple[str, str, str], Decimal],
    ms: int,
) -> list[dict]:
    """The deliveries of a batch of conversion rows (clicks: click id -> click record)."""
    jobs = []
    for row in rows:
        for trigger in triggers_of(row):
            chosen = matching(targets, trigger, row)
            if not chosen:
                continue
            click = clicks.get(row.get("click_id", ""))
            for target in chosen:
                affiliate = target.affiliate_id or row.get("affiliate_id", "")
                payout = payouts.get((row["conversion_id"], row["status"], affiliate))
                values = macro_values(row, trigger, click, payout)
                job_id = delivery_id(row["conversion_id"], trigger, target.id)
                job = {
                    "id": job_id,
                    "target_id": target.id,
                    "kind": target.kind,
                    "trigger": trigger,
                    "conversion_id": row["conversion_id"],
                    "affiliate_id": row.get("affiliate_id", ""),
                    "campaign_id": row.get("campaign_id", ""),
                    "method": target.method,
                    "attempt": 0,
                    "created_ms": ms,
                }
                job["url"] = render_postback(target.url, values)
                job["body"] = (
                    webhook_body(job_id, trigger, row, values, ms)
                    if target.kind == "webhook"
                    else ""
                )
                jobs.append(job)
    return jobs
