"""Commission plans and revenue rules: validation and the amounts, as pure functions.

A plan, as the admin API takes it (amounts are decimal strings, never floats):

    {
      "events": {                       # per event name; "*" applies to any other event
        "sale": {"type": "percent", "percent": "10", "min": {"USD": "1.00"}},
        "lead": {"type": "fixed", "fixed": {"USD": "5.00", "EUR": "4.50"}},
        "signup": {"type": "fixed_percent", "fixed": {"USD": "1"}, "percent": "2.5"},
        "install": {"type": "tiered", "basis": "count",     # or "amount"
                    "tiers": [{"from": "1", "type": "fixed", "fixed": {"USD": "2"}},
                              {"from": "101", "type": "fixed", "fixed": {"USD": "3"}}]}
      },
      "levels": [{"percent": "10", "of": "commission"},   # level 2 (the referrer)
                 {"percent": "1", "of": "amount"}],       # level 3
      "overrides": {"aff-7": {"sale": {"type": "percent", "percent": "12"}}}
    }

A revenue rule is {"events": {...}} with the same rules (no tiers): what the advertiser
owes per conversion. Without one, revenue equals the payout (margin 0).

Amounts are integer minor units of the conversion's currency. A percent is rounded half
up to the minor unit; `min` / `max` clamp one commission, in the currencies they list.
A fixed amount must be listed in the conversion's currency (no exchange rates here).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from decimal import Decimal, InvalidOperation
from functools import lru_cache
from typing import Any

from attribution.money import from_minor, is_currency, to_minor

RULE_TYPES = ("fixed", "percent", "fixed_percent", "tiered")
TIER_BASES = ("count", "amount")
LEVEL_BASES = ("commission", "amount")
MAX_LEVELS = 3  # level 1 and two referrers: the ceiling, whatever the settings say
ANY_EVENT = "*"
MAX_PERCENT = Decimal(100)


class PlanError(ValueError):
    """A plan or revenue rule is invalid; the message says where and why."""


# -- validation ---------------------------------------------------------------------------


def _decimal(value: Any, where: str, *, minimum: Decimal = Decimal(0)) -> Decimal:
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise PlanError(f'{where}: give a decimal string such as "10.50"')
    try:
        number = Decimal(str(value).strip())
    except InvalidOperation:
        raise PlanError(f"{where}: {value!r} is not a number") from None
    if not number.is_finite() or number < minimum:
        raise PlanError(f"{where}: must be a number >= {minimum}")
    return number


def _money_map(value: Any, where: str) -> dict[str, str]:
    if not isinstance(value, dict) or not value:
        raise PlanError(f'{where}: give amounts by currency, e.g. {{"USD": "5.00"}}')
    out = {}
    for currency, amount in value.items():
        if not is_currency(currency):
            raise PlanError(f"{where}: unknown currency {currency!r}")
        number = _decimal(amount, f"{where}.{currency}")
        try:
            to_minor(number, currency)
        except ValueError:
            raise PlanError(f"{where}.{currency}: more decimals than {currency} has") from None
        out[currency] = str(number)
    return out


def _percent(value: Any, where: str) -> str:
    number = _decimal(value, where)
    if number > MAX_PERCENT:
        raise PlanError(f"{where}: a percent is at most 100")
    return str(number)


def parse_rule(data: Any, where: str, *, tiers_allowed: bool = True) -> dict:
    """A validated, normalized rule (the JSON the plan stores)."""
    if not isinstance(data, dict):
        raise PlanError(f'{where}: a rule is an object with a "type"')
    kind = data.get("type")
    if kind not in RULE_TYPES or (kind == "tiered" and not tiers_allowed):
        allowed = RULE_TYPES if tiers_allowed else RULE_TYPES[:3]
        raise PlanError(f"{where}.type: one of {', '.join(allowed)}")
    known = {"type", "min", "max"} | {
        "fixed": {"fixed"},
        "percent": {"percent"},
        "fixed_percent": {"fixed", "percent"},
        "tiered": {"basis", "tiers"},
    }[kind]
    extra = set(data) - known - {"from"}
    if extra:
        raise PlanError(f"{where}: unknown field {sorted(extra)[0]!r} for type {kind}")
    rule: dict[str, Any] = {"type": kind}
    if "fixed" in known:
        rule["fixed"] = _money_map(data.get("fixed"), f"{where}.fixed")
    if "percent" in known:
        rule["percent"] = _percent(data.get("percent"), f"{where}.percent")
    for bound in ("min", "max"):
        if data.get(bound) is not None:
            rule[bound] = _money_map(data[bound], f"{where}.{bound}")
    for currency in set(rule.get("min", {})) & set(rule.get("max", {})):
        if Decimal(rule["min"][currency]) > Decimal(rule["max"][currency]):
            raise PlanError(f"{where}: min above max in {currency}")
    if kind == "tiered":
        basis = data.get("basis", "count")
        if basis not in TIER_BASES:
            raise PlanError(f"{where}.basis: count or amount")
        tiers = data.get("tiers")
        if not isinstance(tiers, list) or not tiers:
            raise PlanError(f"{where}.tiers: a non-empty list")
        parsed = []
        for i, tier in enumerate(tiers):
            at = f"{where}.tiers[{i}]"
            if not isinstance(tier, dict) or "from" not in tier:
                raise PlanError(f'{at}: each tier has a "from"')
            start = _decimal(tier["from"], f"{at}.from")
            if basis == "count" and start != start.to_integral_value():
                raise PlanError(f"{at}.from: a whole number of conversions")
            body = parse_rule(
                {k: v for k, v in tier.items() if k != "from"}, at, tiers_allowed=False
            )
            parsed.append({"from": str(start), **body})
        starts = [Decimal(t["from"]) for t in parsed]
        if starts != sorted(starts) or len(set(starts)) != len(starts):
            raise PlanError(f'{where}.tiers: "from" must increase from tier to tier')
        if starts[0] > (1 if basis == "count" else 0):
            raise PlanError(f"{where}.tiers[0].from: the first tier starts at 0 (or 1 conversion)")
        rule["basis"] = basis
        rule["tiers"] = parsed
    return rule


def _events(data: Any, where: str, *, tiers_allowed: bool) -> dict[str, dict]:
    if not isinstance(data, dict):
        raise PlanError(f'{where}: rules by event name, e.g. {{"sale": {{...}}}}')
    out = {}
    for event, rule in data.items():
        if not isinstance(event, str) or not (event == ANY_EVENT or _event_name_ok(event)):
            raise PlanError(f"{where}: invalid event name {event!r}")
        out[event] = parse_rule(rule, f"{where}.{event}", tiers_allowed=tiers_allowed)
    return out


def _event_name_ok(name: str) -> bool:
    return (
        0 < len(name) <= 32
        and name[0].isalnum()
        and all(ch.isascii() and (ch.isalnum() or ch in "_.-") and not ch.isupper() for ch in name)
    )


def parse_plan(data: Any) -> dict:
    """A validated commission plan (see the module doc); PlanError otherwise."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise PlanError('plan: an object with "events"')
    extra = set(data) - {"events", "levels", "overrides"}
    if extra:
        raise PlanError(f"plan: unknown field {sorted(extra)[0]!r}")
    plan: dict[str, Any] = {
        "events": _events(data.get("events", {}), "plan.events", tiers_allowed=True)
    }
    levels = data.get("levels", [])
    if not isinstance(levels, list) or len(levels) > MAX_LEVELS - 1:
        raise PlanError(f"plan.levels: a list of at most {MAX_LEVELS - 1} referrer levels")
    plan["levels"] = []
    for i, level in enumerate(levels):
        at = f"plan.levels[{i}]"
        if not isinstance(level, dict) or set(level) - {"percent", "of"}:
            raise PlanError(f'{at}: {{"percent": "10", "of": "commission"}}')
        of = level.get("of", "commission")
        if of not in LEVEL_BASES:
            raise PlanError(f"{at}.of: commission or amount")
        plan["levels"].append(
            {"percent": _percent(level.get("percent"), f"{at}.percent"), "of": of}
        )
    overrides = data.get("overrides", {})
    if not isinstance(overrides, dict):
        raise PlanError("plan.overrides: rules by affiliate id")
    plan["overrides"] = {
        str(aff): _events(rules, f"plan.overrides.{aff}", tiers_allowed=True)
        for aff, rules in overrides.items()
    }
    return plan


def parse_revenue(data: Any) -> dict:
    """A validated revenue rule: {"events": {...}} without tiers; {} = revenue is payout."""
    if data is None or data == {}:
        return {}
    if not isinstance(data, dict) or set(data) - {"events"}:
        raise PlanError('revenue: an object with "events"')
    return {"events": _events(data.get("events", {}), "revenue.events", tiers_allowed=False)}


# -- amounts ------------------------------------------------------------------------------


def rule_for(plan: Mapping, event: str, affiliate_id: str) -> dict | None:
    """The affiliate's override for the event, else the plan's rule, else "*"; None: the
    plan pays nothing for this event."""
    own = plan.get("overrides", {}).get(affiliate_id, {})
    events = plan.get("events", {})
    for rules in (own, events):
        if event in rules:
            return rules[event]
    for rules in (own, events):
        if ANY_EVENT in rules:
            return rules[ANY_EVENT]
    return None


def percent_of(amount_minor: int, percent: str | Decimal) -> int:
    """amount * percent / 100, rounded half up (away from zero) to a whole minor unit."""
    numerator, denominator = _ratio(str(percent))
    top, bottom = abs(amount_minor) * numerator, denominator * 100
    whole, rest = divmod(top, bottom)
    if 2 * rest >= bottom:
        whole += 1
    return -whole if amount_minor < 0 else whole


@lru_cache(maxsize=1024)
def _ratio(percent: str) -> tuple[int, int]:
    return Decimal(percent).as_integer_ratio()


def _minor(money: Mapping[str, str], currency: str) -> int | None:
    return to_minor(Decimal(money[currency]), currency) if currency in money else None


def rule_amount(
    rule: Mapping,
    amount_minor: int,
    currency: str,
    *,
    month_count: int = 1,
    month_amount_minor: int | None = None,
) -> int | None:
    """One commission in minor units of `currency`; None when the rule has no fixed amount
    in that currency. Tiers choose by `month_count` (approved conversions this calendar
    month, this one included) or `month_amount_minor` (their amounts, same currency)."""
    if rule["type"] == "tiered":
        if rule["basis"] == "count":
            value = Decimal(month_count)
        else:
            so_far = month_amount_minor if month_amount_minor is not None else amount_minor
            value = from_minor(so_far, currency)
        chosen = rule["tiers"][0]  # validation makes the first tier start at 0 (or 1)
        for tier in rule["tiers"]:
            if value >= Decimal(tier["from"]):
                chosen = tier
        result = rule_amount(chosen, amount_minor, currency)
        return None if result is None else _clamp(rule, result, currency)
    total = 0
    if "fixed" in rule:
        fixed = _minor(rule["fixed"], currency)
        if fixed is None:
            return None
        total += fixed
    if "percent" in rule:
        total += percent_of(amount_minor, rule["percent"])
    return _clamp(rule, total, currency)


def _clamp(rule: Mapping, value: int, currency: str) -> int:
    low = _minor(rule.get("min", {}), currency)
    high = _minor(rule.get("max", {}), currency)
    if low is not None and value < low:
        value = low
    if high is not None and value > high:
        value = high
    return value


def level_amounts(
    levels: Sequence[Mapping], commission_minor: int, amount_minor: int, max_levels: int
) -> list[int]:
    """Override commissions of the referrers (level 2, 3, ...), each a percent of the
    level-1 commission or of the conversion's amount; at most `max_levels` levels in all."""
    depth = max(0, min(max_levels, MAX_LEVELS) - 1)
    return [
        percent_of(
            commission_minor if level["of"] == "commission" else amount_minor, level["percent"]
        )
        for level in list(levels)[:depth]
    ]


def revenue_amount(
    revenue: Mapping, event: str, amount_minor: int, currency: str, payout_minor: int
) -> int | None:
    """What the advertiser owes for one conversion; the payout when no rule applies."""
    rules = revenue.get("events", {})
    rule = rules.get(event) or rules.get(ANY_EVENT)
    if rule is None:
        return payout_minor
    return rule_amount(rule, amount_minor, currency)
