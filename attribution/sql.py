"""The attribution models as ClickHouse SQL, for batch re-attribution inside ClickHouse.

`credits_sql` mirrors `attribution.attribute` row for row: the same path (lookback window,
ties in time ordered by click id, a named click ends the path) and the same weights, so
history can be re-attributed under a new model or window without moving rows to Python.
`report_sql` puts several models side by side per campaign or affiliate.

Only validated values reach the SQL text: identifiers and dates are checked against
strict patterns and numbers are formatted as integers.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from datetime import datetime

from .models import MODELS, NAMED_CLICK_SOURCES

ZERO_UUID = "00000000-0000-0000-0000-000000000000"

_IDENT_RE = re.compile(r"\A[A-Za-z_][A-Za-z0-9_]{0,63}\Z")
_DATETIME_RE = re.compile(r"\A\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}\Z")
# Reports count a conversion by its latest status: approved by default, pending on
# request, never rejected or reversed.
REPORTABLE_STATUSES = ("approved", "pending")
DEFAULT_STATUSES = ("approved",)
_GROUPINGS = {"campaign": "campaign_id", "affiliate": "affiliate_id"}


# Weight expressions over the `path` CTE's columns: position (1-based), path_length,
# click_ms and newest_ms (Unix ms of the click and of the path's newest click).
# Window functions are allowed, partitioned by conversion_id.


def _first_click(half_life_ms: int) -> str:
    return "if(position = 1, 1.0, 0.0)"


def _last_click(half_life_ms: int) -> str:
    return "if(position = path_length, 1.0, 0.0)"


def _linear(half_life_ms: int) -> str:
    return "1.0 / path_length"


def _time_decay(half_life_ms: int) -> str:
    # Measured from the newest click like the Python model: same ratios, no underflow.
    decay = f"exp2((click_ms - newest_ms) / {half_life_ms})"
    return f"{decay} / sum({decay}) OVER (PARTITION BY conversion_id)"


def _position_based(half_life_ms: int) -> str:
    return (
        "multiIf(path_length <= 2, 1.0 / path_length, "
        "position = 1 OR position = path_length, 0.4, "
        "0.2 / greatest(toInt64(path_length) - 2, 1))"
    )


# One entry per name in attribution.MODELS (a test checks that they match).
WEIGHTS: dict[str, Callable[[int], str]] = {
    "first_click": _first_click,
    "last_click": _last_click,
    "linear": _linear,
    "time_decay": _time_decay,
    "position_based": _position_based,
}


def credits_sql(
    db: str,
    model: str,
    *,
    date_from: str | None = None,
    date_to: str | None = None,
    lookback_ms: int,
    half_life_ms: int,
    credit_flagged: bool = False,
    statuses: Sequence[str] = DEFAULT_STATUSES,
) -> str:
    """One row per (conversion_id, credited click) under `model`, weights summing to 1.

    Columns: conversion_id, click_id, campaign_id, affiliate_id, position, path_length,
    weight, conversion_time, amount, currency. Conversions are taken at their first row
    (status changes keep the first report's credits), by conversion time in
    [date_from, date_to) when given, and only those whose latest status is in `statuses`
    (approved by default; never rejected or reversed).
    """
    weight = _weight(model, half_life_ms)
    return f"""{_path_ctes(db, date_from, date_to, lookback_ms, credit_flagged, statuses)},
weighted AS (
    SELECT conversion_id, click_id, campaign_id, affiliate_id, position, path_length,
           {weight} AS weight,
           conversion_time, amount, currency
    FROM path
)
SELECT *
FROM weighted
WHERE weight > 0
ORDER BY conversion_time, conversion_id, position"""


def report_sql(
    db: str,
    by: str,
    models: Sequence[str],
    *,
    date_from: str | None = None,
    date_to: str | None = None,
    lookback_ms: int,
    half_life_ms: int,
    credit_flagged: bool = False,
    statuses: Sequence[str] = DEFAULT_STATUSES,
) -> str:
    """Per campaign (or affiliate) and currency, for each model side by side:
    `{model}_conversions` (sum of weights) and `{model}_revenue` (sum of weight * amount,
    Decimal rounded to 3 places; revenue is only added up within one currency)."""
    if by not in _GROUPINGS:
        raise ValueError(f"by must be one of {', '.join(_GROUPINGS)}, not {by!r}")
    key = _GROUPINGS[by]
    names = list(dict.fromkeys(models))
    if not names:
        raise ValueError("name at least one model")
    weights = ",\n           ".join(f"{_weight(name, half_life_ms)} AS w_{name}" for name in names)
    totals = ",\n       ".join(
        f"sum(w_{name}) AS {name}_conversions,\n       "
        f"toDecimal128(round(sum(amount * toDecimal128(w_{name}, 12)), 3), 3) AS {name}_revenue"
        for name in names
    )
    credited = " OR ".join(f"{name}_conversions > 0" for name in names)
    return f"""{_path_ctes(db, date_from, date_to, lookback_ms, credit_flagged, statuses)},
weighted AS (
    SELECT {key}, currency, amount,
           {weights}
    FROM path
)
SELECT {key}, currency,
       {totals}
FROM weighted
GROUP BY {key}, currency
HAVING {credited}
ORDER BY {key}, currency"""


def _weight(model: str, half_life_ms: int) -> str:
    if model not in MODELS:
        raise ValueError(f"unknown attribution model {model!r} (known: {', '.join(MODELS)})")
    if model not in WEIGHTS:
        raise ValueError(f"model {model!r} has no SQL weight expression yet")
    return WEIGHTS[model](_non_negative_int(half_life_ms, "half_life_ms", minimum=1))


def _path_ctes(
    db: str,
    date_from: str | None,
    date_to: str | None,
    lookback_ms: int,
    credit_flagged: bool = False,
    statuses: Sequence[str] = DEFAULT_STATUSES,
) -> str:
    """WITH ... path AS (...): one row per (conversion, click in its path), with position,
    path_length, click_ms, newest_ms and the conversion's time, amount and currency."""
    if not _IDENT_RE.match(db):
        raise ValueError(f"invalid database name {db!r}")
    lookback = _non_negative_int(lookback_ms, "lookback_ms")
    start, end = _datetime(date_from, "date_from"), _datetime(date_to, "date_to")
    zero = f"toUUID('{ZERO_UUID}')"
    named_sources = "(" + ", ".join(f"'{source}'" for source in NAMED_CLICK_SOURCES) + ")"

    # Rows after date_to cannot be the first row of a conversion that starts before it,
    # so they are skipped early; rows before date_from can, so only HAVING uses date_from.
    conv_where = f"\n    WHERE event_time < {end}" if end else ""
    having = [f"conversion_time >= {start}"] if start else []
    having += [f"conversion_time < {end}"] if end else []
    # Likewise clicks outside every conversion's window, for partition pruning.
    click_where = []
    if start:
        click_where.append(f"event_time >= {start} - toIntervalMillisecond({lookback})")
    if end:
        click_where.append(f"event_time < {end}")
    # Bot- and fraud-flagged clicks are never in a path.
    click_where.append("is_bot = 0 AND empty(fraud_flags)")
    clicks_where = f"\n        WHERE {' AND '.join(click_where)}"
    # Flagged conversions are credited only when the operator says so.
    having += [] if credit_flagged else ["empty(conversion_flags)"]
    having.append("attributed = 1")
    # A conversion counts by its latest status (over all its rows, also those after
    # date_to): a sale refunded since is not revenue, whatever period is asked for.
    having.append(
        f"conversion_id IN (SELECT conversion_id FROM {db}.conversions GROUP BY conversion_id "
        f"HAVING argMax(status, event_time) IN ({_statuses(statuses)}))"
    )
    conv_having = f"\n    HAVING {' AND '.join(having)}"

    return f"""WITH
-- The first row of each conversion: later rows are status changes of the same one.
conversion AS (
    SELECT conversion_id,
           min(event_time) AS conversion_time,
           argMin(visitor_id, event_time) AS conversion_visitor,
           -- a postback or the tag names its click; a pixel's click_id is only the last click
           argMin(if(source IN {named_sources}, click_id, {zero}), event_time) AS named_click,
           argMin(attributed, event_time) AS attributed,
           argMin(fraud_flags, event_time) AS conversion_flags,
           argMin(amount, event_time) AS amount,
           argMin(currency, event_time) AS currency
    FROM {db}.conversions{conv_where}
    GROUP BY conversion_id{conv_having}
),
-- A conversion that carries no visitor id is followed through its named click's visitor.
named_visitor AS (
    SELECT click_id, any(visitor_id) AS visitor_id
    FROM {db}.clicks
    WHERE click_id IN (
        SELECT named_click FROM conversion
        WHERE conversion_visitor = {zero} AND named_click != {zero}
    )
    GROUP BY click_id
),
journey AS (
    SELECT c.conversion_id AS conversion_id, c.conversion_time AS conversion_time,
           c.named_click AS named_click, c.amount AS amount, c.currency AS currency,
           if(c.conversion_visitor != {zero}, c.conversion_visitor, n.visitor_id) AS visitor
    FROM conversion AS c
    LEFT JOIN named_visitor AS n ON n.click_id = c.named_click
    WHERE visitor != {zero}
),
-- The visitor's clicks inside [conversion_time - lookback, conversion_time], ranked by
-- (time, click id as text): ClickHouse's UUID order is not the textual one Python uses.
in_window AS (
    SELECT j.conversion_id AS conversion_id, j.conversion_time AS conversion_time,
           j.named_click AS named_click, j.amount AS amount, j.currency AS currency,
           k.click_id AS click_id, k.campaign_id AS campaign_id,
           k.affiliate_id AS affiliate_id,
           toUnixTimestamp64Milli(k.event_time) AS click_ms,
           row_number() OVER (PARTITION BY j.conversion_id
                              ORDER BY k.event_time, toString(k.click_id)) AS position
    FROM (
        SELECT visitor_id, click_id, event_time, campaign_id, affiliate_id
        FROM {db}.clicks{clicks_where}
    ) AS k
    INNER JOIN journey AS j ON k.visitor_id = j.visitor
    WHERE k.event_time >= j.conversion_time - toIntervalMillisecond({lookback})
      AND k.event_time <= j.conversion_time
),
-- A named click ends the path; when it is not in the window there is no path at all.
cut AS (
    SELECT *,
           maxIf(position, click_id = named_click) OVER (PARTITION BY conversion_id)
               AS named_position
    FROM in_window
),
path AS (
    SELECT conversion_id, conversion_time, amount, currency, click_id, campaign_id,
           affiliate_id, click_ms, position,
           count() OVER (PARTITION BY conversion_id) AS path_length,
           max(click_ms) OVER (PARTITION BY conversion_id) AS newest_ms
    FROM cut
    WHERE named_click = {zero} OR position <= named_position
)"""


def _statuses(statuses: Sequence[str]) -> str:
    chosen = list(dict.fromkeys(statuses))
    if not chosen or not set(chosen) <= set(REPORTABLE_STATUSES):
        raise ValueError(f"statuses must be among {', '.join(REPORTABLE_STATUSES)}")
    return ", ".join(f"'{status}'" for status in chosen)


def _datetime(value: str | None, name: str) -> str | None:
    """A 'YYYY-MM-DD HH:MM:SS' (UTC) bound as a DateTime64 literal; anything else refused."""
    if value is None:
        return None
    if not isinstance(value, str) or not _DATETIME_RE.match(value):
        raise ValueError(f"{name} must be 'YYYY-MM-DD HH:MM:SS' (UTC), not {value!r}")
    try:
        datetime.strptime(value, "%Y-%m-%d %H:%M:%S")
    except ValueError:
        raise ValueError(f"{name} is not a valid date and time: {value!r}") from None
    return f"toDateTime64('{value}', 3, 'UTC')"


def _non_negative_int(value: int, name: str, minimum: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum} (milliseconds), not {value!r}")
    return value


def markov_paths_sql(
    db: str,
    by: str,
    *,
    date_from: str | None = None,
    date_to: str | None = None,
    lookback_ms: int,
    credit_flagged: bool = False,
    statuses: Sequence[str] = DEFAULT_STATUSES,
) -> str:
    """The paths the data-driven (Markov) model learns from, grouped: one row per
    (currency, channels) with `conversions` and `lost` counts.

    Converted paths are exactly the heuristic models' (same window, named click, flags and
    statuses), with their conversion's currency; a visitor with clicks in the period and
    no conversion there is one lost path of all its (unflagged) clicks, currency ''.
    """
    if by not in _GROUPINGS:
        raise ValueError(f"by must be one of {', '.join(_GROUPINGS)}, not {by!r}")
    key = _GROUPINGS[by]
    start, end = _datetime(date_from, "date_from"), _datetime(date_to, "date_to")
    zero = f"toUUID('{ZERO_UUID}')"
    lost_where = ["is_bot = 0", "empty(fraud_flags)", f"visitor_id != {zero}"]
    lost_where += [f"event_time >= {start}"] if start else []
    lost_where += [f"event_time < {end}"] if end else []
    lost_where.append("visitor_id NOT IN (SELECT visitor FROM journey)")
    ctes = _path_ctes(db, date_from, date_to, lookback_ms, credit_flagged, statuses)
    return f"""{ctes},
converted AS (
    SELECT any(currency) AS currency,
           arrayMap(x -> x.2, arraySort(x -> x.1, groupArray((position, {key})))) AS channels
    FROM path
    GROUP BY conversion_id
),
lost AS (
    SELECT arrayMap(x -> x.3, arraySort(groupArray((event_time, toString(click_id), {key}))))
               AS channels
    FROM {db}.clicks
    WHERE {" AND ".join(lost_where)}
    GROUP BY visitor_id
)
SELECT currency, channels, sum(conversions) AS conversions, sum(lost) AS lost
FROM (
    SELECT currency, channels, 1 AS conversions, 0 AS lost FROM converted
    UNION ALL
    SELECT '' AS currency, channels, 0 AS conversions, 1 AS lost FROM lost
)
GROUP BY currency, channels
ORDER BY currency, channels"""
