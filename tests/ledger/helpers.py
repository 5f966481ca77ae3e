"""Conversion rows as the sink hands them to the commission engine."""

from __future__ import annotations

import uuid

from tracker.timefmt import format_ms


def conversion(
    clock,
    *,
    conversion_id: str | None = None,
    status: str = "pending",
    previous: str = "",
    campaign: str = "c1",
    affiliate: str = "leaf",
    amount: str = "100.00",
    currency: str = "USD",
    event: str = "sale",
    flags: list[str] | None = None,
    payout: str | None = None,
    ms: int | None = None,
) -> dict:
    row = {
        "event_time": format_ms(clock.ms if ms is None else ms),
        "conversion_id": conversion_id or str(uuid.uuid4()),
        "advertiser_id": "shop",
        "txid": "t",
        "event": event,
        "status": status,
        "previous_status": previous,
        "amount": amount,
        "currency": currency,
        "click_id": str(uuid.uuid4()),
        "visitor_id": str(uuid.uuid4()),
        "campaign_id": campaign,
        "affiliate_id": affiliate,
        "source": "postback",
        "fraud_flags": flags or [],
    }
    if payout is not None:
        row["advertiser_payout"] = payout
    return row


def step(row: dict, clock, status: str) -> dict:
    """The same conversion's next status report, at the clock's time."""
    return {
        **row,
        "status": status,
        "previous_status": row["status"],
        "event_time": format_ms(clock.ms),
    }
