"""Advertiser reconciliation: for one advertiser and period, its conversions by status
(counts and amounts, per currency), what it owes (approved revenue; pending beside it),
and the postbacks it sent that were refused, by reason. Read from the raw tables (one
advertiser's rows), so any period and time zone is exact; refusals are counted by UTC day.
"""

from __future__ import annotations

from decimal import Decimal

from tracker.links import ID_RE
from tracker.reports.metrics import Source
from tracker.reports.query import SOURCES, Report, ReportError, _iso, _literal

STATUSES = ("pending", "approved", "rejected", "reversed")


def check_advertiser(advertiser: str) -> str:
    if not advertiser or not ID_RE.match(advertiser):
        raise ReportError("advertiser must be an advertiser id")
    return advertiser


def _period(report: Report) -> str:
    fmt = "%Y-%m-%d %H:%M:%S.%f"
    return (
        f"event_time >= toDateTime64('{report.start.strftime(fmt)[:-3]}', 3, 'UTC') "
        f"AND event_time < toDateTime64('{report.end.strftime(fmt)[:-3]}', 3, 'UTC')"
    )


def queries(report: Report, db: str, advertiser: str) -> list[str]:
    who = f"advertiser_id = {_literal(advertiser)}"
    conversions = SOURCES[Source.CONVERSIONS].raw.format(db=db)
    return [
        f"SELECT currency, change.1 AS status, sum(change.2) AS conversions, "
        f"sum(toDecimal128(amount, 3) * change.2) AS amount FROM {conversions} "
        f"WHERE {who} AND {_period(report)} GROUP BY currency, status "
        f"ORDER BY currency, status",
        f"SELECT currency, "
        f"sumIf(toDecimal128(revenue, 3), status = 'approved') AS owed, "
        f"sumIf(toDecimal128(revenue, 3), status = 'pending') AS pending "
        f"FROM {db}.commissions WHERE {who} AND level = 0 AND {_period(report)} "
        f"GROUP BY currency ORDER BY currency",
    ]


def assemble(
    report: Report, advertiser: str, answers: list[tuple[list, list]], refused: dict[str, int]
) -> dict:
    by_currency: dict[str, dict] = {}
    for currency, status, count, amount in answers[0][1]:
        entry = by_currency.setdefault(
            currency,
            {"currency": currency, **{s: {"conversions": 0, "amount": "0.000"} for s in STATUSES}},
        )
        if status in STATUSES:
            entry[status] = {
                "conversions": int(count),
                "amount": str(Decimal(str(amount)).quantize(Decimal("0.001"))),
            }
    owed = [
        {
            "currency": currency,
            "owed": str(Decimal(str(due)).quantize(Decimal("0.001"))),
            "pending": str(Decimal(str(pending)).quantize(Decimal("0.001"))),
        }
        for currency, due, pending in answers[1][1]
    ]
    return {
        "advertiser": advertiser,
        "from": _iso(report.start, report.tz),
        "to": _iso(report.end, report.tz),
        "tz": report.tz,
        "conversions": list(by_currency.values()),
        "owed": owed,
        "refused_postbacks": [{"reason": r, "count": n} for r, n in refused.items()],
        "refused_total": sum(refused.values()),
    }
