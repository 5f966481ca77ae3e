"""Every report metric, defined once: the API, the CLI and the dashboard all read this.

A report fetches *measures* (additive aggregates: sums and distinct counts) from
ClickHouse, per source table, and derives each *metric* from measures in Python, so a
ratio is computed the same way for a row, a total and the previous period. Money
measures are Decimal (three decimals, in the report's currency), never float; a money
ratio (AOV, EPC) is Decimal too, rounded half-even to three decimals.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from decimal import ROUND_HALF_EVEN, Decimal
from enum import StrEnum


class Source(StrEnum):
    """Where a measure comes from (a rollup, or its raw table when the rollup lacks a field)."""

    CLICKS = "clicks"
    IMPRESSIONS = "impressions"
    CONVERSIONS = "conversions"
    CREDITS = "credits"
    COMMISSIONS = "commissions"


class Kind(StrEnum):
    COUNT = "count"  # an integer
    MONEY = "money"  # Decimal, in the report's currency
    RATE = "rate"  # a float between 0 and 1 (or more for ROI)
    SHARE = "share"  # a float count (credited conversions: weights sum to 1 per conversion)


@dataclass(frozen=True, slots=True)
class Measure:
    name: str
    source: Source
    kind: Kind
    rollup: str  # SQL over the rollup table ({cur} = the currency literal)
    raw: str  # SQL over the raw table
    additive: bool = True  # a total is the sum of the groups' values (not distinct counts)


# Conversions' raw SQL reads a subquery with `change` = (status, +1 | -1): see SOURCES.
MEASURES: dict[str, Measure] = {
    m.name: m
    for m in [
        Measure("impressions", Source.IMPRESSIONS, Kind.COUNT, "sum(impressions)", "count()"),
        Measure("clicks", Source.CLICKS, Kind.COUNT, "sum(clicks)", "count()"),
        Measure(
            "unique_clicks",
            Source.CLICKS,
            Kind.COUNT,
            "uniqMerge(visitors)",
            "uniq(if(empty(visitor_id), click_id, visitor_id))",
            additive=False,
        ),
        Measure("bot_clicks", Source.CLICKS, Kind.COUNT, "sum(bot_clicks)", "countIf(is_bot = 1)"),
        Measure(
            "flagged_clicks",
            Source.CLICKS,
            Kind.COUNT,
            "sum(flagged_clicks)",
            "countIf(notEmpty(fraud_flags))",
        ),
        *[
            Measure(
                f"{status}_conversions",
                Source.CONVERSIONS,
                Kind.COUNT,
                f"sumIf(conversions, status = '{status}')",
                f"sumIf(change.2, change.1 = '{status}')",
            )
            for status in ("approved", "pending", "rejected", "reversed")
        ],
        *[
            Measure(
                f"{status}_amount",
                Source.CONVERSIONS,
                Kind.MONEY,
                f"sumIf(amount, status = '{status}' AND currency = {{cur}})",
                f"sumIf(toDecimal128(amount, 3) * change.2, "
                f"change.1 = '{status}' AND currency = {{cur}})",
            )
            for status in ("approved", "pending")
        ],
        *[
            Measure(
                f"{status}_{column}",
                Source.COMMISSIONS,
                Kind.MONEY,
                f"sumIf({column}, status = '{status}' AND currency = {{cur}})",
                f"sumIf(toDecimal128({column}, 3), status = '{status}' AND currency = {{cur}})",
            )
            for status in ("approved", "pending")
            for column in ("revenue", "payout")
        ],
        Measure("credited", Source.CREDITS, Kind.SHARE, "sum(credited)", "sum(weight)"),
        Measure(
            "credited_amount_sum",
            Source.CREDITS,
            Kind.MONEY,
            "sumIf(credited_amount, currency = {cur})",
            "sumIf(toDecimal128(credited_amount, 3), currency = {cur})",
        ),
    ]
}

CENT = Decimal("0.001")


def _ratio(num: str, den: str) -> Callable[[Mapping], float | None]:
    def compute(m: Mapping) -> float | None:
        return float(m[num]) / float(m[den]) if m[den] else None

    return compute


def _money_ratio(num: str, den: str) -> Callable[[Mapping], Decimal | None]:
    def compute(m: Mapping) -> Decimal | None:
        if not m[den]:
            return None
        return (Decimal(m[num]) / Decimal(m[den])).quantize(CENT, ROUND_HALF_EVEN)

    return compute


@dataclass(frozen=True, slots=True)
class Metric:
    name: str
    kind: Kind
    measures: tuple[str, ...]
    compute: Callable[[Mapping], object]
    definition: str  # what the README says; one sentence
    revenue: bool = False  # hidden from affiliates (what the advertiser pays)


def _plain(name: str) -> Callable[[Mapping], object]:
    return lambda m: m[name]


def _profit(m: Mapping) -> Decimal:
    return m["approved_revenue"] - m["approved_payout"]


def _roi(m: Mapping) -> float | None:
    payout = m["approved_payout"]
    return float(_profit(m) / payout) if payout else None


def _epc(m: Mapping) -> Decimal | None:
    """Earnings per click: what the affiliate earns (its view) or what the advertiser pays
    (everyone else's) per click; `view` is set by derive()."""
    earned = m["approved_payout"] if m.get("view") == "affiliate" else m["approved_revenue"]
    if not m["clicks"]:
        return None
    return (Decimal(earned) / m["clicks"]).quantize(CENT, ROUND_HALF_EVEN)


METRICS: dict[str, Metric] = {
    m.name: m
    for m in [
        Metric(
            "impressions",
            Kind.COUNT,
            ("impressions",),
            _plain("impressions"),
            "impression pixel hits (`/p.gif` without a conversion)",
        ),
        Metric("clicks", Kind.COUNT, ("clicks",), _plain("clicks"), "tracking-link clicks"),
        Metric(
            "unique_clicks",
            Kind.COUNT,
            ("unique_clicks",),
            _plain("unique_clicks"),
            "distinct visitors among the clicks (a no-track click counts as its own visitor)",
        ),
        Metric(
            "ctr",
            Kind.RATE,
            ("clicks", "impressions"),
            _ratio("clicks", "impressions"),
            "click-through rate = clicks / impressions",
        ),
        Metric(
            "conversions",
            Kind.COUNT,
            ("approved_conversions",),
            _plain("approved_conversions"),
            "conversions whose latest status is approved",
        ),
        Metric(
            "pending_conversions",
            Kind.COUNT,
            ("pending_conversions",),
            _plain("pending_conversions"),
            "conversions whose latest status is pending",
        ),
        Metric(
            "rejected_conversions",
            Kind.COUNT,
            ("rejected_conversions",),
            _plain("rejected_conversions"),
            "conversions whose latest status is rejected",
        ),
        Metric(
            "reversed_conversions",
            Kind.COUNT,
            ("reversed_conversions",),
            _plain("reversed_conversions"),
            "conversions approved, then reversed (refunds, chargebacks)",
        ),
        Metric(
            "cvr",
            Kind.RATE,
            ("approved_conversions", "clicks"),
            _ratio("approved_conversions", "clicks"),
            "conversion rate = conversions / clicks",
        ),
        Metric(
            "amount",
            Kind.MONEY,
            ("approved_amount",),
            _plain("approved_amount"),
            "order value of approved conversions, in the report currency",
        ),
        Metric(
            "pending_amount",
            Kind.MONEY,
            ("pending_amount",),
            _plain("pending_amount"),
            "order value of pending conversions, in the report currency",
        ),
        Metric(
            "aov",
            Kind.MONEY,
            ("approved_amount", "approved_conversions"),
            _money_ratio("approved_amount", "approved_conversions"),
            "average order value = amount / conversions",
        ),
        Metric(
            "reversal_rate",
            Kind.RATE,
            ("reversed_conversions", "approved_conversions"),
            lambda m: _share(m["reversed_conversions"], m["approved_conversions"]),
            "reversed / (approved + reversed): the share of once-approved conversions reversed",
        ),
        Metric(
            "bot_rate",
            Kind.RATE,
            ("bot_clicks", "clicks"),
            _ratio("bot_clicks", "clicks"),
            "clicks from bots (user agent or data-centre network) / clicks",
        ),
        Metric(
            "fraud_rate",
            Kind.RATE,
            ("flagged_clicks", "clicks"),
            _ratio("flagged_clicks", "clicks"),
            "clicks carrying at least one fraud flag / clicks",
        ),
        Metric(
            "revenue",
            Kind.MONEY,
            ("approved_revenue",),
            _plain("approved_revenue"),
            "what advertisers owe for approved conversions (the campaign's revenue rule)",
            revenue=True,
        ),
        Metric(
            "payout",
            Kind.MONEY,
            ("approved_payout",),
            _plain("approved_payout"),
            "commissions earned on approved conversions, every level (referrers included)",
        ),
        Metric(
            "pending_payout",
            Kind.MONEY,
            ("pending_payout",),
            _plain("pending_payout"),
            "commissions of pending conversions",
        ),
        Metric(
            "profit",
            Kind.MONEY,
            ("approved_revenue", "approved_payout"),
            _profit,
            "profit = revenue - payout",
            revenue=True,
        ),
        Metric(
            "roi",
            Kind.RATE,
            ("approved_revenue", "approved_payout"),
            _roi,
            "return on investment = profit / payout",
            revenue=True,
        ),
        Metric(
            "epc",
            Kind.MONEY,
            ("approved_revenue", "approved_payout", "clicks"),
            _epc,
            "earnings per click = revenue / clicks (operator's view); an affiliate key gets "
            "payout / clicks",
        ),
        Metric(
            "credited_conversions",
            Kind.SHARE,
            ("credited",),
            lambda m: round(float(m["credited"]), 6),
            "conversions credited under an attribution model (weights of one conversion sum "
            "to 1); group or filter by `model`",
        ),
        Metric(
            "credited_amount",
            Kind.MONEY,
            ("credited_amount_sum",),
            _plain("credited_amount_sum"),
            "order value credited under an attribution model, in the report currency",
        ),
    ]
}


def _share(part, rest) -> float | None:
    whole = part + rest
    return float(part) / whole if whole else None


def measures_for(metrics: list[str]) -> list[str]:
    """The measures the metrics need, in a stable order."""
    wanted = {name for metric in metrics for name in METRICS[metric].measures}
    return [name for name in MEASURES if name in wanted]


def zero(measure: str):
    kind = MEASURES[measure].kind
    return Decimal(0) if kind == Kind.MONEY else 0.0 if kind == Kind.SHARE else 0


def parse_measure(measure: str, value):
    """A measure's value as the query endpoint sends it (Decimals arrive as strings)."""
    kind = MEASURES[measure].kind
    if value is None:
        return zero(measure)
    if kind == Kind.MONEY:
        return Decimal(str(value)).quantize(CENT)
    if kind == Kind.SHARE:
        return float(value)
    return int(value)


def derive(metrics: list[str], measured: Mapping, view: str = "operator") -> dict[str, object]:
    """The metrics from the measures; `view` is "affiliate" for an affiliate's key."""
    context = {**measured, "view": view}
    return {name: METRICS[name].compute(context) for name in metrics}


def json_value(value):
    """Money as a string with three decimals (JSON numbers would be floats)."""
    if isinstance(value, Decimal):
        return str(value.quantize(CENT))
    if isinstance(value, float):
        return round(value, 6)
    return value


def definitions() -> list[tuple[str, str]]:
    """(metric, definition) for the README and `tracker report metrics`."""
    return [(m.name, m.definition) for m in METRICS.values()]
