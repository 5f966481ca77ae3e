"""Commissions of conversion status steps, written to the ledger exactly once.

The sink hands each batch's conversion rows to `Engine.process` after inserting them into
ClickHouse. One transaction per batch: each (conversion, status) step not yet in
`conversion_steps` is computed and stored with its ledger entries and the ClickHouse rows
it mirrors; a step already there (a replayed batch, a sink killed before it acknowledged)
only returns its stored rows, which ClickHouse drops as a repeat of the batch's insert.

Steps: a conversion's first report (pending or approved) decides whether it earns at all
(campaign, affiliate, fraud, caps) and who shares it (the campaign's attribution model);
approval computes the amounts with the plan then in force (tiers count this calendar
month's approved conversions, this one included) and starts the hold; rejection cancels
pending money; reversal books the approved money back out, due when the original was
(so before a payout they cancel out, and after one the negative entry is netted from the
next payout: a clawback).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import orjson
from sqlalchemy import Connection, func, insert, select

from attribution import Touch, attribute, split_amount
from attribution.money import from_minor, to_minor
from tracker.ledger import plans
from tracker.ledger import schema as T
from tracker.ledger.store import Store
from tracker.reasons import NoCommission
from tracker.timefmt import format_ms, parse_ms

log = logging.getLogger(__name__)

DAY_MS = 86_400_000
DEFAULT_MODEL = "last_click"

# (visitor id, conversion time ms) -> that visitor's clicks (the sink's Redis path)
PathReader = Callable[[str, int], list[Touch]]


@dataclass(slots=True)
class ConversionEvent:
    conversion_id: str
    status: str
    ms: int
    advertiser_id: str
    campaign_id: str
    affiliate_id: str
    event: str
    amount_minor: int
    currency: str
    flagged: bool
    click_id: str
    visitor_id: str
    source: str
    advertiser_payout_minor: int | None
    txid: str = ""

    @classmethod
    def from_row(cls, row: dict) -> ConversionEvent:
        currency = row["currency"]
        payout = row.get("advertiser_payout")
        return cls(
            conversion_id=row["conversion_id"],
            status=row["status"],
            ms=parse_ms(row["event_time"]),
            advertiser_id=row.get("advertiser_id", ""),
            campaign_id=row.get("campaign_id", ""),
            affiliate_id=row.get("affiliate_id", ""),
            event=row.get("event", "conversion"),
            amount_minor=to_minor(Decimal(row["amount"]), currency),
            currency=currency,
            flagged=bool(row.get("fraud_flags")),
            click_id=row.get("click_id", ""),
            visitor_id=row.get("visitor_id", ""),
            source=row.get("source", ""),
            advertiser_payout_minor=(
                to_minor(Decimal(payout), currency) if payout not in (None, "") else None
            ),
            txid=row.get("txid", ""),
        )


@dataclass(slots=True)
class Share:
    level: int
    affiliate_id: str
    amount_minor: int
    weight: float


def month_of(ms: int) -> int:
    text = format_ms(ms)
    return int(text[0:4] + text[5:7])


def day_of(ms: int) -> int:
    text = format_ms(ms)
    return int(text[0:4] + text[5:7] + text[8:10])


def commission_id(conversion_id: str, level: int, affiliate_id: str) -> str:
    return f"{conversion_id}:{level}:{affiliate_id}"


class Engine:
    def __init__(
        self,
        store: Store,
        *,
        max_levels: int = 2,
        path: PathReader | None = None,
        lookback_ms: int = 30 * DAY_MS,
        half_life_ms: int = 7 * DAY_MS,
    ) -> None:
        self.store = store
        self.max_levels = min(max_levels, plans.MAX_LEVELS)
        self.path = path
        self.lookback_ms = lookback_ms
        self.half_life_ms = half_life_ms
        self.steps_done = 0  # computed (not replayed) steps, for the sink's figures

    # -- a batch ------------------------------------------------------------------------

    def process(self, rows: Iterable[dict]) -> list[bytes]:
        """The ClickHouse `commissions` rows (JSON lines) of these conversion rows, after
        storing each new step in one transaction."""
        events = [ConversionEvent.from_row(row) for row in rows]
        if not events:
            return []
        out: list[bytes] = []
        with self.store.begin() as conn:
            batch = _Batch(conn, self, events)
            for event in events:
                out += batch.step(event)
            batch.flush()
        return out


class _Batch:
    """One transaction's view: the steps of the batch's conversions and the records."""

    def __init__(self, conn: Connection, engine: Engine, events: list[ConversionEvent]) -> None:
        self.conn = conn
        self.engine = engine
        self.campaigns: dict[str, Any] = {}
        self.affiliates: dict[str, Any] = {}
        self.steps: dict[str, dict[str, Any]] = {}
        self.entries: dict[str, list[dict]] = {}
        self.new_steps: list[dict] = []  # written in one statement each at flush()
        self.new_entries: list[dict] = []
        self.prefetch_records(events)
        ids = sorted({e.conversion_id for e in events})
        for chunk in range(0, len(ids), 500):
            part = ids[chunk : chunk + 500]
            for row in conn.execute(
                select(T.conversion_steps).where(T.conversion_steps.c.conversion_id.in_(part))
            ).mappings():
                self.steps.setdefault(row["conversion_id"], {})[row["status"]] = dict(row)
            for row in conn.execute(
                select(T.entries)
                .where(T.entries.c.conversion_id.in_(part))
                .order_by(T.entries.c.seq)
            ).mappings():
                self.entries.setdefault(row["conversion_id"], []).append(dict(row))

    def flush(self) -> None:
        """Write the steps and entries made so far (before a query that counts them)."""
        if self.new_steps:
            self.conn.execute(insert(T.conversion_steps), self.new_steps)
            self.new_steps = []
        if self.new_entries:
            self.conn.execute(insert(T.entries), self.new_entries)
            self.new_entries = []

    # -- records --------------------------------------------------------------------------

    def prefetch_records(self, events: list[ConversionEvent]) -> None:
        """The batch's campaigns, affiliates and their referrers, a few queries in all.
        (Status changes name their campaign and affiliate in their first step: those are
        fetched on demand.)"""
        campaigns = sorted({e.campaign_id for e in events})
        for row in self.conn.execute(
            select(T.campaigns).where(T.campaigns.c.id.in_(campaigns))
        ).mappings():
            self._keep_campaign(row)
        for campaign_id in campaigns:
            self.campaigns.setdefault(campaign_id, None)
        wanted = {e.affiliate_id for e in events if e.affiliate_id}
        for _ in range(plans.MAX_LEVELS):
            wanted -= set(self.affiliates)
            if not wanted:
                break
            found = self.conn.execute(
                select(T.affiliates).where(T.affiliates.c.id.in_(sorted(wanted)))
            ).mappings()
            for row in found:
                self.affiliates[row["id"]] = dict(row)
            for affiliate_id in wanted:
                self.affiliates.setdefault(affiliate_id, None)
            wanted = {a["parent_id"] for a in self.affiliates.values() if a and a["parent_id"]}

    def _keep_campaign(self, row: Any) -> None:
        campaign = dict(row)
        campaign["plan_obj"] = orjson.loads(row["plan"])
        campaign["revenue_obj"] = orjson.loads(row["revenue"])
        self.campaigns[row["id"]] = campaign

    def campaign(self, campaign_id: str):
        if campaign_id not in self.campaigns:
            row = (
                self.conn.execute(select(T.campaigns).where(T.campaigns.c.id == campaign_id))
                .mappings()
                .first()
            )
            self.campaigns[campaign_id] = None
            if row:
                self._keep_campaign(row)
        return self.campaigns[campaign_id]

    def affiliate(self, affiliate_id: str):
        if affiliate_id not in self.affiliates:
            row = None
            if affiliate_id:
                row = (
                    self.conn.execute(select(T.affiliates).where(T.affiliates.c.id == affiliate_id))
                    .mappings()
                    .first()
                )
            self.affiliates[affiliate_id] = dict(row) if row else None
        return self.affiliates[affiliate_id]

    def ancestors(self, affiliate_id: str, depth: int) -> list[str]:
        chain: list[str] = []
        current = self.affiliate(affiliate_id)
        while current and current["parent_id"] and len(chain) < depth:
            chain.append(current["parent_id"])
            current = self.affiliate(current["parent_id"])
        return chain

    # -- steps ----------------------------------------------------------------------------

    def step(self, ev: ConversionEvent) -> list[bytes]:
        known = self.steps.get(ev.conversion_id, {})
        if ev.status in known:  # done before: the same rows again
            return [line for line in known[ev.status]["mirror"].encode().split(b"\n") if line]
        if ev.status in ("pending", "approved") and not known:
            rows = self.first(ev)
        elif ev.status == "approved" and "pending" in known:
            rows = self.change(ev, known["pending"], "pending", "approved")
        elif ev.status == "rejected" and "pending" in known:
            rows = self.change(ev, known["pending"], "pending", "rejected")
        elif ev.status == "reversed" and "approved" in known:
            rows = self.change(ev, known["approved"], "approved", "reversed")
        else:
            rows = self.record(ev, None, NoCommission.UNKNOWN_CONVERSION, [], 0, [], [])
        self.engine.steps_done += 1
        return rows

    def first(self, ev: ConversionEvent) -> list[bytes]:
        campaign = self.campaign(ev.campaign_id)
        reason = self.refusal(ev, campaign)
        if reason:
            revenue = 0
            if campaign and reason in _AFFILIATE_REASONS:  # the advertiser still owes it
                revenue = self.revenue(campaign, ev, 0)
            return self.record(ev, campaign, reason, [], revenue, [], [])
        shares = self.split(ev, campaign)
        approved = ev.status == "approved"
        commissions, reason = self.amounts(ev, campaign, shares, approved)
        if reason:
            revenue = self.revenue(campaign, ev, 0)
            return self.record(ev, campaign, reason, shares, revenue, [], [])
        revenue = self.revenue(campaign, ev, sum(c.amount_minor for c in commissions))
        return self.record(ev, campaign, "", shares, revenue, commissions, [], commissioned=True)

    def change(self, ev: ConversionEvent, before: dict, old: str, new: str) -> list[bytes]:
        """A status change: move what the previous step booked."""
        shares = orjson.loads(before["shares"])
        campaign = self.campaign(before["campaign_id"])
        # the earlier step's facts stay (campaign, affiliate, event, amount, currency)
        ev.campaign_id, ev.affiliate_id = before["campaign_id"], before["affiliate_id"]
        ev.event, ev.currency = before["event"], before["currency"]
        ev.amount_minor = before["amount_minor"]
        wanted = "accrue" if old == "pending" else "approve"
        previous = [e for e in self.entries.get(ev.conversion_id, []) if e["kind"] == wanted]
        if before["reason"] or campaign is None:
            return self.record(
                ev,
                campaign,
                before["reason"],
                shares,
                before["revenue_minor"],
                [],
                [],
                moved=before,
            )
        if new == "approved":
            commissions, reason = self.amounts(ev, campaign, shares, approved=True)
            if reason:  # e.g. the plan no longer pays this event: the pending money goes
                return self.record(ev, campaign, reason, shares, 0, [], previous, moved=before)
            revenue = self.revenue(campaign, ev, sum(c.amount_minor for c in commissions))
            return self.record(
                ev, campaign, "", shares, revenue, commissions, previous, moved=before
            )
        return self.record(
            ev, campaign, "", shares, before["revenue_minor"], [], previous, moved=before
        )

    def refusal(self, ev: ConversionEvent, campaign) -> str:
        if campaign is None:
            return NoCommission.UNKNOWN_CAMPAIGN
        if campaign["status"] != "active":
            return NoCommission.CAMPAIGN_PAUSED
        affiliate = self.affiliate(ev.affiliate_id)
        if affiliate is None:
            return NoCommission.UNKNOWN_AFFILIATE
        if affiliate["status"] == "paused":
            return NoCommission.AFFILIATE_PAUSED
        if affiliate["status"] != "active":
            return NoCommission.AFFILIATE_BANNED
        if ev.flagged and not campaign["pay_flagged"]:
            return NoCommission.FRAUD
        if self.capped(ev, campaign):
            return NoCommission.CAP_REACHED
        return ""

    def capped(self, ev: ConversionEvent, campaign) -> bool:
        if campaign["daily_cap"] is None and campaign["monthly_cap"] is None:
            return False
        self.flush()
        steps = T.conversion_steps.c
        for cap, column, value in (
            (campaign["daily_cap"], steps.day, day_of(ev.ms)),
            (campaign["monthly_cap"], steps.month, month_of(ev.ms)),
        ):
            if cap is None:
                continue
            taken = self.conn.execute(
                select(func.count()).where(
                    steps.campaign_id == ev.campaign_id,
                    steps.status.in_(("pending", "approved")),
                    steps.commissioned.is_(True),
                    column == value,
                )
            ).scalar_one()
            if taken >= cap:
                return True
        return False

    def split(self, ev: ConversionEvent, campaign) -> list[list]:
        """[[affiliate, click id, weight], ...]: who shares the level-1 commission."""
        model = campaign["pay_model"] or DEFAULT_MODEL
        own = [[ev.affiliate_id, ev.click_id, 1.0]]
        if model == DEFAULT_MODEL or self.engine.path is None:
            return own
        touches = [
            t
            for t in self.engine.path(ev.visitor_id, ev.ms)
            if t.campaign_id == ev.campaign_id and self.active(t.affiliate_id)
        ]
        named = ev.click_id if ev.source == "postback" else None
        credits = attribute(
            touches,
            ev.ms,
            model,
            lookback=self.engine.lookback_ms,
            half_life=self.engine.half_life_ms,
            named_click_id=named,
        )
        return [[c.touch.affiliate_id, c.touch.click_id, c.weight] for c in credits] or own

    def active(self, affiliate_id: str) -> bool:
        affiliate = self.affiliate(affiliate_id)
        return bool(affiliate and affiliate["status"] == "active")

    def amounts(
        self, ev: ConversionEvent, campaign, shares: Sequence[list], approved: bool
    ) -> tuple[list[Share], str]:
        plan = campaign["plan_obj"]
        if ev.advertiser_payout_minor is not None and campaign["allow_advertiser_payout"]:
            pool = ev.advertiser_payout_minor
        else:
            rule = plans.rule_for(plan, ev.event, ev.affiliate_id)
            if rule is None:
                return [], NoCommission.NO_PLAN_FOR_EVENT
            count, amount = self.month_so_far(ev) if rule["type"] == "tiered" else (0, 0)
            result = plans.rule_amount(
                rule,
                ev.amount_minor,
                ev.currency,
                month_count=count + 1,
                month_amount_minor=amount + ev.amount_minor,
            )
            if result is None:
                return [], NoCommission.NO_RATE_FOR_CURRENCY
            pool = result
        weights = [float(share[2]) for share in shares]
        if len(weights) == 1:  # the usual case (last click): nothing to split
            parts, sales = [pool], [ev.amount_minor]
        else:
            parts = split_amount(pool, weights)
            sales = split_amount(ev.amount_minor, weights)
        found: dict[tuple[int, str], Share] = {}

        def add(level: int, affiliate_id: str, amount: int, weight: float) -> None:
            if amount == 0:
                return
            key = (level, affiliate_id)
            if key in found:
                found[key].amount_minor += amount
                found[key].weight += weight
            else:
                found[key] = Share(level, affiliate_id, amount, weight)

        for (affiliate_id, _click, weight), part, sale in zip(shares, parts, sales, strict=True):
            add(1, affiliate_id, part, weight)
            ups = plans.level_amounts(plan.get("levels", []), part, sale, self.engine.max_levels)
            chain = self.ancestors(affiliate_id, len(ups))
            for level, (amount, ancestor) in enumerate(zip(ups, chain, strict=False), start=2):
                if self.active(ancestor):
                    add(level, ancestor, amount, weight)
        return list(found.values()), ""

    def month_so_far(self, ev: ConversionEvent) -> tuple[int, int]:
        """The affiliate's approved, commissioned conversions of this campaign this calendar
        month before this one: how many, and their amount in this currency."""
        self.flush()
        steps = T.conversion_steps.c
        where = (
            steps.campaign_id == ev.campaign_id,
            steps.affiliate_id == ev.affiliate_id,
            steps.status == "approved",
            steps.reason == "",
            steps.month == month_of(ev.ms),
        )
        count = self.conn.execute(select(func.count()).where(*where)).scalar_one()
        amount = self.conn.execute(
            select(func.coalesce(func.sum(steps.amount_minor), 0)).where(
                *where, steps.currency == ev.currency
            )
        ).scalar_one()
        return int(count), int(amount)

    def revenue(self, campaign, ev: ConversionEvent, payout_minor: int) -> int:
        value = plans.revenue_amount(
            campaign["revenue_obj"], ev.event, ev.amount_minor, ev.currency, payout_minor
        )
        return value or 0

    # -- storing --------------------------------------------------------------------------

    def record(
        self,
        ev: ConversionEvent,
        campaign,
        reason: str,
        shares: Sequence[list],
        revenue_minor: int,
        commissions: Sequence[Share],
        previous: Sequence[Any],
        *,
        commissioned: bool = False,
        moved: dict | None = None,
    ) -> list[bytes]:
        """Store the step, its entries and its ClickHouse rows; return those rows."""
        now_state = "pending" if ev.status == "pending" else "approved"
        hold_ms = (campaign["hold_days"] if campaign else 0) * DAY_MS
        version = campaign["plan_version"] if campaign else 0
        entries: list[dict] = []
        mirror: list[dict] = []
        base = {
            "event_time": format_ms(ev.ms),
            "conversion_id": ev.conversion_id,
            "advertiser_id": ev.advertiser_id or (campaign["advertiser_id"] if campaign else ""),
            "campaign_id": ev.campaign_id,
            "event": ev.event,
            "step": ev.status,
            "currency": ev.currency,
        }

        def money(minor: int) -> str:
            return str(from_minor(minor, ev.currency))

        def row(status: str, level: int, affiliate: str, payout: int, revenue: int, **kw) -> None:
            if reason == NoCommission.FRAUD:  # flagged: the commission is rejected outright
                status = "rejected"
            mirror.append(
                {
                    **base,
                    "commission_id": commission_id(ev.conversion_id, level, affiliate),
                    "affiliate_id": affiliate,
                    "level": level,
                    "status": status,
                    "payout": money(payout),
                    "revenue": money(revenue),
                    "plan_version": kw.get("plan_version", version),
                    "weight": kw.get("weight", 0.0),
                    "reason": reason,
                    "available_at": format_ms(kw.get("available_at", 0)),
                }
            )

        old_status = moved["status"] if moved else ""
        # money leaving the previous status
        for entry in previous:
            kind = {"approved": "unpend", "rejected": "reject", "reversed": "reverse"}[ev.status]
            entries.append(
                _entry(
                    entry,
                    kind,
                    -entry["amount_minor"],
                    entry["state"],
                    entry["available_at"] if kind == "reverse" else ev.ms,
                    ev.ms,
                )
            )
            row(
                old_status,
                entry["level"],
                entry["affiliate_id"],
                -entry["amount_minor"],
                0,
                plan_version=entry["plan_version"],
            )
            if ev.status != "approved":  # rejected / reversed: shown under the new status
                row(
                    ev.status,
                    entry["level"],
                    entry["affiliate_id"],
                    entry["amount_minor"],
                    0,
                    plan_version=entry["plan_version"],
                )
        # money entering the new status (first report, or approval)
        available_at = ev.ms + hold_ms if now_state == "approved" else ev.ms
        for share in commissions:
            cid = commission_id(ev.conversion_id, share.level, share.affiliate_id)
            entries.append(
                {
                    "entry_id": f"{cid}:{'accrue' if now_state == 'pending' else 'approve'}",
                    "commission_id": cid,
                    "conversion_id": ev.conversion_id,
                    "campaign_id": ev.campaign_id,
                    "affiliate_id": share.affiliate_id,
                    "level": share.level,
                    "kind": "accrue" if now_state == "pending" else "approve",
                    "state": now_state,
                    "amount_minor": share.amount_minor,
                    "currency": ev.currency,
                    "available_at": available_at,
                    "plan_version": version,
                    "created_at": ev.ms,
                }
            )
            row(
                ev.status,
                share.level,
                share.affiliate_id,
                share.amount_minor,
                0,
                weight=share.weight,
                available_at=available_at if now_state == "approved" else 0,
            )
        # level 0: the conversion itself, its revenue and, when unpaid, the reason
        if moved:
            row(old_status, 0, ev.affiliate_id, 0, -moved["revenue_minor"])
        row(ev.status, 0, ev.affiliate_id, 0, revenue_minor)
        payout_total = sum(s.amount_minor for s in commissions)
        step = {
            "conversion_id": ev.conversion_id,
            "status": ev.status,
            "event_time": ev.ms,
            "advertiser_id": base["advertiser_id"],
            "campaign_id": ev.campaign_id,
            "affiliate_id": ev.affiliate_id,
            "event": ev.event,
            "amount_minor": ev.amount_minor,
            "currency": ev.currency,
            "revenue_minor": revenue_minor,
            "payout_minor": payout_total,
            "commissioned": commissioned,
            "reason": str(reason),
            "plan_version": version,
            "shares": orjson.dumps(list(shares)).decode(),
            "mirror": b"\n".join(orjson.dumps(m) for m in mirror).decode(),
            "month": month_of(ev.ms),
            "day": day_of(ev.ms),
            "txid": ev.txid[:128],
        }
        self.new_steps.append(step)
        self.new_entries += entries
        self.entries.setdefault(ev.conversion_id, []).extend(entries)
        self.steps.setdefault(ev.conversion_id, {})[ev.status] = step
        return [orjson.dumps(m) for m in mirror]


_AFFILIATE_REASONS = (
    NoCommission.UNKNOWN_AFFILIATE,
    NoCommission.AFFILIATE_PAUSED,
    NoCommission.AFFILIATE_BANNED,
)


def _entry(original: Any, kind: str, amount: int, state: str, available_at: int, ms: int) -> dict:
    return {
        "entry_id": f"{original['commission_id']}:{kind}",
        "commission_id": original["commission_id"],
        "conversion_id": original["conversion_id"],
        "campaign_id": original["campaign_id"],
        "affiliate_id": original["affiliate_id"],
        "level": original["level"],
        "kind": kind,
        "state": state,
        "amount_minor": amount,
        "currency": original["currency"],
        "available_at": available_at,
        "plan_version": original["plan_version"],
        "created_at": ms,
    }
