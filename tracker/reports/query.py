"""A report request -> ClickHouse SQL -> the table people read. Pure: no I/O here.

`parse` validates a request (API query string or CLI flags) into a `Report`; `plan`
renders the SQL (the rows, the totals, and the previous period's totals when asked);
`assemble` turns the answers into rows of metrics (see metrics.py).

Each source (clicks, impressions, conversions, attribution credits) is read from its
hourly rollup when every field the report groups or filters by is one of the rollup's
dimensions, the period starts and ends on whole UTC hours, and the caller's time zone is
a whole number of hours from UTC over the period; otherwise from its raw table. The
sources are aggregated separately by the same keys and joined with UNION ALL + GROUP BY,
so a report costs one query.

Scope (what the caller's key may see) arrives as forced filters: they are ANDed with the
caller's own filters and go through the same checks, so a source that cannot be
restricted to the scope (impressions have no advertiser) is refused, never read whole.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from tracker.reports.metrics import (
    MEASURES,
    METRICS,
    Kind,
    Source,
    derive,
    json_value,
    measures_for,
    parse_measure,
    zero,
)

TIME_FIELDS = ("hour", "day", "week", "month")
_BASE = {
    "campaign": "campaign_id",
    "affiliate": "affiliate_id",
    "link": "link_slug",
}
_BASE_NO_LINK = {"campaign": "campaign_id", "affiliate": "affiliate_id"}
_SUBS = {f"sub{i}": f"sub{i}" for i in range(1, 6)}
_GEO_DEVICE = {"country": "country", "device": "device_type"}
_MORE = {"region": "region", "os": "os", "browser": "browser"}


@dataclass(frozen=True)
class Rollup:
    table: str
    grain: str  # "hour", or "day" (UTC days)
    fields: Mapping[str, str]


@dataclass(frozen=True)
class SourceSpec:
    rollups: tuple[Rollup, ...]  # smallest first: the planner takes the first that answers
    raw: str  # a table name, or a subquery with {db}
    raw_fields: Mapping[str, str]


_CAMPAIGN = {"campaign": "campaign_id", "advertiser": "advertiser_id"}
_GEO = {**_BASE_NO_LINK, "advertiser": "advertiser_id", "country": "country"}
_FULL = {**_BASE, "advertiser": "advertiser_id", **_GEO_DEVICE}

SOURCES: dict[Source, SourceSpec] = {
    Source.CLICKS: SourceSpec(
        (
            Rollup("clicks_hourly_campaign", "hour", _CAMPAIGN),
            Rollup("clicks_daily_geo", "day", _GEO),
            Rollup("clicks_hourly", "hour", _FULL),
        ),
        "{db}.clicks",
        {
            **_FULL,
            **_SUBS,
            **_MORE,
            "referrer": "domain(referer)",
            # one row per flag a click carries (bot clicks as bot:<reason>); unflagged
            # clicks have no row
            "fraud_flag": "arrayJoin(arrayConcat(fraud_flags, "
            "if(is_bot = 1, ['bot:' || bot_reason], [])))",
        },
    ),
    Source.IMPRESSIONS: SourceSpec(
        (Rollup("impressions_hourly", "hour", dict(_BASE)),),
        "{db}.impressions",
        {**_BASE, **_SUBS, "referrer": "domain(referer)"},
    ),
    Source.CONVERSIONS: SourceSpec(
        (
            Rollup("conversions_hourly_campaign", "hour", _CAMPAIGN),
            Rollup("conversions_daily_geo", "day", _GEO),
            Rollup("conversions_hourly", "hour", _FULL),
        ),
        # a status change books +1 under the new status and -1 under the previous one
        "(SELECT *, arrayJoin(arrayFilter(c -> c.1 != '', [(status, toInt8(1)), "
        "(previous_status, toInt8(-1))])) AS change FROM {db}.conversions)",
        {**_FULL, **_SUBS, **_MORE},
    ),
    Source.CREDITS: SourceSpec(
        (Rollup("credits_hourly", "hour", {**_BASE_NO_LINK, "model": "model"}),),
        "{db}.attribution_credits",
        {"campaign": "campaign_id", "affiliate": "affiliate_id", "model": "model"},
    ),
    Source.COMMISSIONS: SourceSpec(
        (
            Rollup("commissions_hourly_campaign", "hour", _CAMPAIGN),
            Rollup("commissions_hourly", "hour", {**_BASE_NO_LINK, "advertiser": "advertiser_id"}),
        ),
        "{db}.commissions",
        {**_BASE_NO_LINK, "advertiser": "advertiser_id"},
    ),
}
FIELDS = (
    *TIME_FIELDS,
    "campaign",
    "affiliate",
    "advertiser",
    "link",
    *_SUBS,
    "country",
    "region",
    "device",
    "os",
    "browser",
    "referrer",
    "model",
    "fraud_flag",
)
GROUP_ONLY = ("fraud_flag",)  # a click has several: grouped by, never filtered on
MAX_GROUPS = 4
MAX_DAYS = 400
MAX_LIMIT = 10_000
_VALUE_RE = re.compile(r"\A[^\x00-\x1f]{0,200}\Z")
_CURRENCY_RE = re.compile(r"\A[A-Z]{3}\Z")


class ReportError(ValueError):
    """A request that cannot be answered; the message is shown to the caller (400)."""

    def __init__(self, reason: str, status: int = 400) -> None:
        super().__init__(reason)
        self.status = status


@dataclass
class Report:
    metrics: list[str]
    group_by: list[str]
    start: datetime  # UTC, inclusive
    end: datetime  # UTC, exclusive
    tz: str
    currency: str
    filters: dict[str, tuple[str, ...]] = field(default_factory=dict)
    scope: dict[str, tuple[str, ...]] = field(default_factory=dict)  # forced by the key
    compare: bool = False
    sort: str = ""
    limit: int = 1000
    raw_only: bool = False  # read the raw tables even where a rollup would answer

    @property
    def view(self) -> str:
        """Whose EPC: an affiliate's key sees its earnings per click."""
        return "affiliate" if "affiliate" in self.scope else "operator"

    @property
    def time_field(self) -> str | None:
        return next((g for g in self.group_by if g in TIME_FIELDS), None)

    def previous(self) -> Report:
        span = self.end - self.start
        return Report(
            self.metrics,
            self.group_by,
            self.start - span,
            self.start,
            self.tz,
            self.currency,
            self.filters,
            self.scope,
            raw_only=self.raw_only,
        )


def _csv(value: str | None) -> list[str]:
    return [v.strip() for v in (value or "").split(",") if v.strip()]


def _zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ReportError(f"unknown time zone {name[:64]!r}") from None


def _local_time(text: str, zone: ZoneInfo, name: str) -> datetime:
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise ReportError(f"{name} must be a date (YYYY-MM-DD) or a datetime") from None
    if value.tzinfo is None:
        value = value.replace(tzinfo=zone)
    return value.astimezone(UTC)


def parse(
    params: Mapping[str, str],
    filters: Mapping[str, str],
    *,
    default_currency: str,
    now: datetime,
    scope: Mapping[str, tuple[str, ...]] | None = None,
) -> Report:
    """A validated Report from request parameters (`filters`: field -> comma list)."""
    metrics = _csv(params.get("metrics")) or ["clicks", "conversions"]
    for name in metrics:
        if name not in METRICS:
            raise ReportError(f"unknown metric {name[:40]!r}; see /api/reports/metrics")
    group_by = _csv(params.get("group_by"))
    for name in group_by:
        if name not in FIELDS:
            raise ReportError(f"unknown group_by field {name[:40]!r}")
    if len(set(group_by)) != len(group_by) or len(group_by) > MAX_GROUPS:
        raise ReportError(f"group_by takes up to {MAX_GROUPS} distinct fields")
    if sum(g in TIME_FIELDS for g in group_by) > 1:
        raise ReportError("group_by takes one time bucket (hour, day, week or month)")
    tz = params.get("tz") or "UTC"
    zone = _zone(tz)
    today = now.astimezone(zone).date()
    end = (
        _local_time(params["to"], zone, "to")
        if params.get("to")
        else _midnight(today + timedelta(days=1), zone)
    )
    start = (
        _local_time(params["from"], zone, "from") if params.get("from") else end - timedelta(days=7)
    )
    if end <= start:
        raise ReportError("to must be after from")
    if end - start > timedelta(days=MAX_DAYS):
        raise ReportError(f"a report covers at most {MAX_DAYS} days")
    currency = params.get("currency") or default_currency
    if not _CURRENCY_RE.match(currency):
        raise ReportError("currency must be an ISO 4217 code such as USD")
    parsed_filters: dict[str, tuple[str, ...]] = {}
    for name, value in filters.items():
        if name not in FIELDS or name in TIME_FIELDS:
            raise ReportError(f"unknown filter field {name[:40]!r}")
        if name in GROUP_ONLY:
            raise ReportError(f"{name} can be grouped by, not filtered on")
        values = tuple(_csv(value)) or ("",)
        if not all(_VALUE_RE.match(v) for v in values) or len(values) > 100:
            raise ReportError(f"filter[{name}]: up to 100 values of up to 200 characters")
        parsed_filters[name] = values
    try:
        limit = int(params.get("limit") or 1000)
    except ValueError:
        raise ReportError("limit must be a number") from None
    if not 1 <= limit <= MAX_LIMIT:
        raise ReportError(f"limit must be between 1 and {MAX_LIMIT}")
    sort = params.get("sort") or ""
    if sort and sort.lstrip("-") not in metrics + group_by:
        raise ReportError("sort must name a requested metric or group_by field")
    report = Report(
        metrics=metrics,
        group_by=group_by,
        start=start,
        end=end,
        tz=tz,
        currency=currency,
        filters=parsed_filters,
        scope=dict(scope or {}),
        compare=params.get("compare", "") in ("1", "true", "previous"),
        sort=sort,
        limit=limit,
    )
    sources_for(report)  # every check that depends on the combination
    return report


def _midnight(day: date, zone: ZoneInfo) -> datetime:
    return datetime(day.year, day.month, day.day, tzinfo=zone).astimezone(UTC)


def sources_for(report: Report, grouped: bool = True) -> dict[Source, Rollup | None]:
    """Each source the metrics need -> the rollup that answers it (None: the raw table).
    Refuses a metric its source cannot break down, filter or scope as asked."""
    groups = report.group_by if grouped else []
    fields = [g for g in groups if g not in TIME_FIELDS]
    filtered = set(report.filters) | set(report.scope)
    needed: dict[Source, Rollup | None] = {}
    for measure in measures_for(report.metrics):
        needed.setdefault(MEASURES[measure].source, None)
    credited = Source.CREDITS in needed
    if credited and "model" not in report.group_by and "model" not in filtered:
        raise ReportError("credited metrics need group_by=model or filter[model]")
    time_field = next((g for g in groups if g in TIME_FIELDS), None)
    grains = _grains(report, time_field)
    for source in needed:
        spec = SOURCES[source]
        for name in [g for g in report.group_by if g not in TIME_FIELDS]:
            if name not in spec.raw_fields:
                raise ReportError(f"{source.value} metrics cannot be grouped by {name}")
        for name in sorted(filtered):
            if name not in spec.raw_fields:
                raise ReportError(f"{source.value} metrics cannot be filtered by {name}")
        if report.raw_only:
            continue
        needed[source] = next(
            (
                rollup
                for rollup in spec.rollups
                if rollup.grain in grains
                and all(name in rollup.fields for name in [*fields, *filtered])
            ),
            None,
        )
    return needed


def _grains(report: Report, time_field: str | None) -> set[str]:
    """Which rollup grains answer the period and buckets exactly: hourly UTC rollups need
    whole-hour period ends and, for time buckets, a zone a whole number of hours from UTC
    all period long (not India's +5:30); daily ones whole UTC days and, for time buckets,
    day/week/month in a zone at UTC+0 all period long."""
    grains: set[str] = set()
    ends = (report.start, report.end)
    if any(e.minute or e.second or e.microsecond for e in ends):
        return grains
    offsets = _offsets(report) if time_field else {timedelta(0)}
    if not any(offset % timedelta(hours=1) for offset in offsets):
        grains.add("hour")
    if (
        not any(e.hour for e in ends)
        and offsets == {timedelta(0)}
        and time_field in (None, "day", "week", "month")
    ):
        grains.add("day")
    return grains


def _offsets(report: Report) -> set[timedelta]:
    zone = ZoneInfo(report.tz)
    found = set()
    moment = report.start
    while moment <= report.end:
        found.add(moment.astimezone(zone).utcoffset() or timedelta(0))
        moment += timedelta(hours=12)
    return found


def _literal(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _bucket(name: str, column: str, tz: str) -> str:
    zone = _literal(tz)
    return {
        "hour": f"formatDateTime({column}, '%Y-%m-%d %H:00', {zone})",
        "day": f"toString(toDate({column}, {zone}))",
        "week": f"toString(toMonday({column}, {zone}))",
        "month": f"toString(toStartOfMonth({column}, {zone}))",
    }[name]


def _cast(kind: Kind, expr: str) -> str:
    if kind == Kind.MONEY:
        return f"toDecimal128({expr}, 3)"
    if kind == Kind.SHARE:
        return f"toFloat64({expr})"
    return f"toInt64({expr})"


def _source_sql(
    report: Report,
    db: str,
    source: Source,
    rollup: Rollup | None,
    measures: list[str],
    grouped: bool,
) -> str:
    spec = SOURCES[source]
    columns = rollup.fields if rollup else spec.raw_fields
    time_col = rollup.grain if rollup else "event_time"
    keys = []
    for i, name in enumerate(report.group_by if grouped else []):
        if name not in TIME_FIELDS:
            expr = columns[name]
        elif rollup and rollup.grain == "day":  # UTC days, asked for at UTC+0
            expr = {"day": "toString(day)", "week": "toString(toMonday(day))"}.get(
                name, "toString(toStartOfMonth(day))"
            )
        else:
            expr = _bucket(name, time_col, report.tz)
        keys.append(f"{expr} AS k{i}")
    cur = _literal(report.currency)
    select = []
    for name in measures:
        m = MEASURES[name]
        expr = (m.rollup if rollup else m.raw).format(cur=cur) if m.source == source else "0"
        select.append(f"{_cast(m.kind, expr)} AS {name}")
    if rollup and rollup.grain == "day":
        period = f"day >= toDate('{report.start.date()}') AND day < toDate('{report.end.date()}')"
    elif rollup:
        fmt = "%Y-%m-%d %H:%M:%S"
        period = (
            f"hour >= toDateTime('{report.start.strftime(fmt)}', 'UTC') "
            f"AND hour < toDateTime('{report.end.strftime(fmt)}', 'UTC')"
        )
    else:
        fmt = "%Y-%m-%d %H:%M:%S.%f"
        period = (
            f"event_time >= toDateTime64('{report.start.strftime(fmt)[:-3]}', 3, 'UTC') "
            f"AND event_time < toDateTime64('{report.end.strftime(fmt)[:-3]}', 3, 'UTC')"
        )
    where = [period]
    for filters in (report.filters, report.scope):
        for name, values in sorted(filters.items()):
            where.append(f"{columns[name]} IN ({', '.join(map(_literal, values))})")
    table = f"{db}.{rollup.table}" if rollup else spec.raw.format(db=db)
    group = f" GROUP BY {', '.join(f'k{i}' for i in range(len(keys)))}" if keys else ""
    return f"SELECT {', '.join(keys + select)} FROM {table} WHERE {' AND '.join(where)}{group}"


def report_sql(report: Report, db: str, grouped: bool = True) -> str:
    """One query: each source aggregated by the report's keys, then joined by key."""
    plan = sources_for(report, grouped)
    measures = measures_for(report.metrics)
    parts = [
        _source_sql(report, db, source, rollup, measures, grouped)
        for source, rollup in plan.items()
    ]
    keys = [f"k{i}" for i in range(len(report.group_by))] if grouped else []
    sums = [f"sum({name}) AS {name}" for name in measures]
    inner = " UNION ALL ".join(parts)
    group = f" GROUP BY {', '.join(keys)}" if keys else ""
    return f"SELECT {', '.join(keys + sums)} FROM ({inner}){group}"


@dataclass
class Plan:
    """The queries one report needs, in order: rows, totals[, previous totals]."""

    report: Report
    queries: list[str]
    sources: dict[str, str]
    totals_from_rows: bool = False


def plan(report: Report, db: str) -> Plan:
    """Rows, then totals: summed from the rows when every measure adds up, else a query
    of their own (distinct visitors over the period are not a sum of groups); then the
    previous period's totals when asked."""
    queries = [report_sql(report, db)]
    summed = all(MEASURES[m].additive for m in measures_for(report.metrics))
    if not summed:
        queries.append(report_sql(report, db, grouped=False))
    if report.compare:
        queries.append(report_sql(report.previous(), db, grouped=False))
    sources = {s.value: r.table if r else "raw" for s, r in sources_for(report).items()}
    return Plan(report, queries, sources, summed)


def _measured(measures: list[str], columns: list[str], row: list) -> dict:
    by_name = dict(zip(columns, row, strict=True))
    return {name: parse_measure(name, by_name.get(name)) for name in measures}


def assemble(p: Plan, answers: list[tuple[list[str], list[list]]]) -> dict:
    """The report as the API returns it, from the answers to `p.queries` (in order)."""
    report = p.report
    measures = measures_for(report.metrics)
    keys = len(report.group_by)
    rows: dict[tuple, dict] = {}
    columns, data = answers[0]
    for row in data:
        key = tuple("" if v is None else str(v) for v in row[:keys])
        rows[key] = _measured(measures, columns, row)
    if report.group_by == [report.time_field] and report.time_field:
        empty = {name: zero(name) for name in measures}
        for label in buckets(report):
            rows.setdefault((label,), dict(empty))
    out_rows = [
        {
            **dict(zip(report.group_by, key, strict=True)),
            **derive(report.metrics, measured, report.view),
        }
        for key, measured in rows.items()
    ]
    _sort(out_rows, report)
    if p.totals_from_rows:
        summed = {name: zero(name) for name in measures}
        for measured in rows.values():
            for name in measures:
                summed[name] += measured[name]
        totals = derive(report.metrics, summed, report.view)
    else:
        totals = derive(report.metrics, _totals(measures, answers[1]), report.view)
    result = {
        "from": _iso(report.start, report.tz),
        "to": _iso(report.end, report.tz),
        "tz": report.tz,
        "currency": report.currency,
        "metrics": report.metrics,
        "group_by": report.group_by,
        "filters": {k: list(v) for k, v in report.filters.items()},
        "sources": p.sources,
        "rows": [{k: json_value(v) for k, v in r.items()} for r in out_rows[: report.limit]],
        "row_count": len(out_rows),
        "totals": {k: json_value(v) for k, v in totals.items()},
    }
    if report.compare:
        prev = report.previous()
        before = derive(report.metrics, _totals(measures, answers[-1]), report.view)
        result["previous"] = {
            "from": _iso(prev.start, report.tz),
            "to": _iso(prev.end, report.tz),
            "totals": {k: json_value(v) for k, v in before.items()},
        }
        result["change"] = {name: _change(totals[name], before[name]) for name in report.metrics}
    return result


def _totals(measures: list[str], answer: tuple[list[str], list[list]]) -> dict:
    columns, data = answer
    if not data:
        return {name: zero(name) for name in measures}
    return _measured(measures, columns, data[0])


def _change(now, before) -> float | None:
    """Relative change vs the previous period (0.25 = +25%); None when undefined."""
    if now is None or before is None or not before:
        return None
    return round(float((Decimal(str(now)) - Decimal(str(before))) / Decimal(str(before))), 6)


def _sort(rows: list[dict], report: Report) -> None:
    if report.sort:
        name = report.sort.lstrip("-")
        reverse = report.sort.startswith("-")
        present = [r for r in rows if r[name] is not None]
        missing = [r for r in rows if r[name] is None]
        present.sort(key=lambda r: r[name], reverse=reverse)
        rows[:] = present + missing
    elif report.time_field:
        rows.sort(key=lambda r: tuple(r[g] for g in report.group_by))
    elif report.group_by:
        first = report.metrics[0]
        rows.sort(key=lambda r: tuple(r[g] for g in report.group_by))
        rows.sort(key=lambda r: (r[first] is None, -_number(r[first])))


def _number(value) -> float:
    return float(value) if value is not None else 0.0


def _iso(moment: datetime, tz: str) -> str:
    return moment.astimezone(ZoneInfo(tz)).isoformat()


def buckets(report: Report) -> list[str]:
    """Every time bucket label of the period, in the caller's zone (for a gap-free series)."""
    zone = ZoneInfo(report.tz)
    name = report.time_field
    last = (report.end - timedelta(microseconds=1)).astimezone(zone)
    first = report.start.astimezone(zone)
    labels: list[str] = []
    if name == "hour":
        moment = report.start.replace(minute=0, second=0, microsecond=0)
        while moment < report.end:
            label = moment.astimezone(zone).strftime("%Y-%m-%d %H:00")
            if not labels or labels[-1] != label:
                labels.append(label)
            moment += timedelta(hours=1)
        return labels
    day = first.date()
    if name == "week":
        day -= timedelta(days=day.weekday())
    elif name == "month":
        day = day.replace(day=1)
    while day <= last.date():
        labels.append(day.isoformat())
        if name == "day":
            day += timedelta(days=1)
        elif name == "week":
            day += timedelta(days=7)
        else:
            day = (day.replace(day=28) + timedelta(days=4)).replace(day=1)
    return labels


def csv_columns(result: dict) -> list[str]:
    return [*result["group_by"], *result["metrics"]]
