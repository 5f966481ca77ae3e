"""Conversions: reading a postback's parameters, the status lifecycle, the stored row.

Pure functions, no I/O. A refusal raises Rejected with the HTTP status and a short reason
that the advertiser sees in the JSON reply.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, cast

from attribution.money import exponent, is_currency
from tracker.ids import ZERO_UUID, is_uuid
from tracker.reasons import PostbackRefusal as R
from tracker.records import RequestMeta, clean
from tracker.timefmt import format_ms
from tracker.types import ClickRecord, ConversionRow, SubParams

# Parameter names advertisers' systems commonly use, first match wins. `amount` is the
# sale value; `payout` is what the advertiser says the affiliate earns (used only where
# the campaign allows it), no longer another name for the amount.
ALIASES: dict[str, tuple[str, ...]] = {
    "click_id": ("click_id", "cid", "subid", "clickid"),
    "txid": ("txid", "transaction_id", "order_id", "tid"),
    "amount": ("amount", "revenue", "sum"),
    "payout": ("payout",),
    "advertiser": ("advertiser", "advertiser_id", "adv"),
    "currency": ("currency",),
    "status": ("status",),
    "event": ("event",),
}
STATUSES = ("pending", "approved", "rejected", "reversed")
# new status -> the statuses it may follow
TRANSITIONS: dict[str, tuple[str, ...]] = {
    "approved": ("pending",),
    "rejected": ("pending",),
    "reversed": ("approved",),
}
FIRST_STATUSES = ("pending", "approved")  # what a transaction may start as

MAX_SUB = 512  # characters kept of a sub-id
# ASCII digits and at most one decimal point: Decimal() alone also takes '١٢٣', '1_000',
# '1E+2', ' 12' and 'Infinity'
_AMOUNT_RE = re.compile(r"\A-?[0-9]+(?:\.[0-9]+)?\Z")
_ID_RE = re.compile(r"\A[A-Za-z0-9][A-Za-z0-9_.-]{0,63}\Z")
_EVENT_RE = re.compile(r"\A[a-z0-9][a-z0-9_.-]{0,31}\Z")


class Rejected(Exception):
    """A conversion that is refused: HTTP status and a reason from the closed set. `field`
    names the offending parameter for the reply only (it is the client's text, so it is
    never a metric label)."""

    def __init__(self, status: int, reason: R, field: str | None = None) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason
        self.field = field


@dataclass(slots=True)
class ConversionInput:
    advertiser: str
    txid: str
    click_id: str  # "" when none was given
    amount: Decimal | None  # None when none was given
    currency: str
    status: str
    event: str
    subs: SubParams
    payout: Decimal | None = None  # the advertiser's explicit payout, when given


def pick(params: Mapping[str, str], name: str) -> str:
    """The first non-empty value of the parameter's names, stripped."""
    for alias in ALIASES[name]:
        value = params.get(alias)
        if value:
            return value.strip()
    return ""


def parse(
    params: Mapping[str, str], *, default_currency: str, max_amount: int, require_click: bool
) -> ConversionInput:
    """Validate a conversion's parameters (query, form or JSON, already merged)."""
    advertiser = pick(params, "advertiser")
    if not advertiser:
        raise Rejected(400, R.MISSING_ADVERTISER)
    if not _ID_RE.match(advertiser):
        raise Rejected(400, R.INVALID_ADVERTISER)

    txid = pick(params, "txid")
    if not txid:
        raise Rejected(400, R.MISSING_TXID)
    # printable text has no whitespace but the ASCII space (every other is a control or
    # separator character): one `in`, not a Python loop over the characters
    if len(txid) > 128 or not txid.isprintable() or " " in txid:
        raise Rejected(400, R.INVALID_TXID)

    click_id = pick(params, "click_id").lower()
    if not click_id and require_click:
        raise Rejected(400, R.MISSING_CLICK_ID)
    if click_id and not is_uuid(click_id):
        raise Rejected(400, R.INVALID_CLICK_ID)

    currency = (pick(params, "currency") or default_currency).upper()
    if not is_currency(currency):
        raise Rejected(400, R.UNKNOWN_CURRENCY)
    amount = parse_amount(pick(params, "amount"), currency, max_amount)
    payout = parse_amount(pick(params, "payout"), currency, max_amount)

    status = (pick(params, "status") or "pending").lower()
    if status not in STATUSES:
        raise Rejected(400, R.UNKNOWN_STATUS)
    event = (pick(params, "event") or "conversion").lower()
    if not _EVENT_RE.match(event):
        raise Rejected(400, R.INVALID_EVENT)
    subs: SubParams = {
        "sub1": clean(params.get("sub1", ""), MAX_SUB),
        "sub2": clean(params.get("sub2", ""), MAX_SUB),
        "sub3": clean(params.get("sub3", ""), MAX_SUB),
        "sub4": clean(params.get("sub4", ""), MAX_SUB),
        "sub5": clean(params.get("sub5", ""), MAX_SUB),
    }
    return ConversionInput(
        advertiser, txid, click_id, amount, currency, status, event, subs, payout
    )


def parse_amount(text: str, currency: str, max_amount: int) -> Decimal | None:
    if not text:
        return None
    if len(text) > 40 or not _AMOUNT_RE.match(text):
        raise Rejected(400, R.INVALID_AMOUNT)
    amount = Decimal(text)
    if amount < 0:
        raise Rejected(400, R.NEGATIVE_AMOUNT)
    if amount > max_amount:
        raise Rejected(400, R.AMOUNT_TOO_LARGE)
    if not in_minor_units(text, currency):
        raise Rejected(400, R.TOO_MANY_DECIMALS)
    return amount


def in_minor_units(text: str, currency: str) -> bool:
    """Whether an amount as `_AMOUNT_RE` takes it is a whole number of the currency's
    minor units (`to_minor` would take it): no more significant decimals than the
    currency has. Read off the text: Decimal's digits cost microseconds a postback."""
    return len(text.partition(".")[2].rstrip("0")) <= exponent(currency)


def transition(current: str | None, new: str) -> str:
    """'new', 'duplicate' or 'change' for a status report; Rejected when not allowed."""
    if current is None:
        if new not in FIRST_STATUSES:
            raise Rejected(409, R.UNKNOWN_TRANSACTION)
        return "new"
    if current == new:
        return "duplicate"
    if current in TRANSITIONS.get(new, ()):
        return "change"
    raise Rejected(409, R.ILLEGAL_TRANSITION)


def row_head(
    conv: ConversionInput,
    *,
    ms: int,
    conversion_id: str,
    amount: Decimal,
    currency: str,
    previous_status: str,
) -> dict[str, Any]:
    """The columns of a `conversions` row before its click's (the one-script postback
    path splices the click's columns between this and `row_tail`)."""
    return {
        "event_time": format_ms(ms),
        "conversion_id": conversion_id,
        "advertiser_id": conv.advertiser,
        "txid": conv.txid,
        "event": conv.event,
        "status": conv.status,
        "previous_status": previous_status,
        "amount": str(amount),
        "currency": currency,
    }


def row_tail(
    conv: ConversionInput, *, source: str, meta: RequestMeta, payout: Decimal | str | None
) -> dict[str, Any]:
    """The columns of a `conversions` row after its click's."""
    tail: dict[str, Any] = {
        "source": source,
        **conv.subs,
        "ip": meta.ip,
        "user_agent": meta.user_agent,
    }
    if payout is not None:
        tail["advertiser_payout"] = str(payout)
    return tail


def conversion_row(
    *,
    ms: int,
    conversion_id: str,
    conv: ConversionInput,
    amount: Decimal,
    currency: str,
    previous_status: str,
    click: ClickRecord | None,
    visitor_id: str,
    unattributed_reason: str,
    source: str,
    meta: RequestMeta,
    payout: Decimal | str | None = None,
) -> ConversionRow:
    """The `conversions` row for one conversion event (a first report or a status change)."""
    found: Mapping[str, Any] = click or {}  # a record read back from Redis
    row = {
        **row_head(
            conv,
            ms=ms,
            conversion_id=conversion_id,
            amount=amount,
            currency=currency,
            previous_status=previous_status,
        ),
        "click_id": found.get("click_id") or ZERO_UUID,
        "visitor_id": visitor_id or ZERO_UUID,
        "click_time": format_ms(found["ts"]) if found.get("ts") else format_ms(0),
        "link_slug": found.get("link_slug", ""),
        "campaign_id": found.get("campaign_id", ""),
        "affiliate_id": found.get("affiliate_id", ""),
        "attributed": int(not unattributed_reason),
        "unattributed_reason": unattributed_reason,
        **row_tail(conv, source=source, meta=meta, payout=payout),
    }
    return cast(ConversionRow, row)


def defer(row: ConversionRow, click_id: str) -> None:
    """Mark a conversion whose click only ClickHouse knows: the sink finds the click (the
    named one, or the visitor's last) and fills in the click's columns before storing it
    (tracker/sink/deferred.py)."""
    row["click_id"] = click_id or ZERO_UUID
    row["attributed"] = 0
    row["unattributed_reason"] = ""
    row["deferred"] = 1
