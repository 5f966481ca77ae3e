"""A link's routing: an ordered list of rules, the first that matches decides. Pure: no
I/O, no clock, no randomness of its own (the caller passes what the request is).

    "routing": {
      "rules": [
        {"id": "fr-mobile", "when": {"country": ["FR"], "device_type": ["mobile"]},
         "to": {"url": "https://m.shop.example/fr?c={click_id}"}},
        {"id": "office-hours", "when": {"time": {"tz": "Europe/Paris",
                                                 "days": ["mon", "tue", "wed", "thu", "fri"],
                                                 "from": "09:00", "to": "18:00"}},
         "to": {"link": "call-centre"}},
        {"id": "ab", "when": {},
         "to": {"split": [{"variant": "a", "weight": 50, "url": "https://a.example/"},
                          {"variant": "b", "weight": 50, "link": "landing-b"}]}}
      ]
    }

A rule's `when` holds conditions that must all hold (`{}` always matches; `"all": [...]`
nests further all-of groups). No rule matches: the link's own destination. A target is
a URL template (`url`, same macros and checks as a link's destination), another link
(`link`: that link's destination), or a weighted `split` of such targets; a visitor is
assigned to a variant by a hash of its visitor id and the link, so it sees the same
variant on every return (a no-track visitor draws at random).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from tracker.macros import DestinationError, normalize_destination

MAX_RULES = 100
MAX_VARIANTS = 20
MAX_LIST = 500
ID_RE = re.compile(r"\A[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}\Z")
SLUG_RE = re.compile(r"\A[A-Za-z0-9][A-Za-z0-9_.-]{0,63}\Z")
DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
DEVICE_TYPES = ("desktop", "mobile", "tablet", "tv", "console", "bot", "other")  # as device.py
LIST_CONDITIONS = ("country", "region", "device_type", "os", "browser", "language")
CONDITIONS = (*LIST_CONDITIONS, "asn", "bot", "param_equals", "param_present", "time", "all")
# what each condition needs looked up at the edge
NEEDS = {"country": "geo", "region": "geo", "asn": "geo", "device_type": "device"}
NEEDS.update(os="device", browser="device", bot="bot")


class RoutingError(ValueError):
    """Why a routing definition is refused (the message is the 400 reply's reason)."""


@dataclass(slots=True)
class Visit:
    """What a condition may look at. Fields a link's rules do not need stay empty."""

    params: Mapping[str, str]
    accept_language: str = ""
    now_ms: int = 0
    country: str = ""
    region: str = ""
    asn: int = 0
    device_type: str = ""
    os: str = ""
    browser: str = ""
    is_bot: bool = False


@dataclass(frozen=True, slots=True)
class Target:
    url: str = ""  # a destination template, or
    link: str = ""  # another link's slug


@dataclass(frozen=True, slots=True)
class Variant:
    name: str
    weight: int
    target: Target


@dataclass(slots=True)
class Rule:
    id: str
    test: Callable[[Visit], bool]
    target: Target | None  # or a split:
    variants: tuple[Variant, ...] = ()
    total_weight: int = 0


@dataclass(frozen=True, slots=True)
class Caps:
    """Click caps of a link (counted by the edges together, see tracker/edge/caps.py);
    past one, clicks go to `overflow` (None: the link's own destination, rules skipped).
    A campaign's caps may also count its accepted conversions (tracker/edge/caps.py's
    ConversionCounts), never a link's."""

    daily_clicks: int | None
    total_clicks: int | None
    overflow: Target | None
    daily_conversions: int | None = None
    total_conversions: int | None = None

    @property
    def counts_clicks(self) -> bool:
        return self.daily_clicks is not None or self.total_clicks is not None

    @property
    def counts_conversions(self) -> bool:
        return self.daily_conversions is not None or self.total_conversions is not None


CAP_DAILY = "cap:daily_clicks"  # the route_rule of a click sent to the overflow
CAP_TOTAL = "cap:total_clicks"
CAMPAIGN_CAP = {CAP_DAILY: "cap:campaign_daily_clicks", CAP_TOTAL: "cap:campaign_total_clicks"}
CAP_CONVERSIONS_DAILY = "cap:campaign_daily_conversions"
CAP_CONVERSIONS_TOTAL = "cap:campaign_total_conversions"
# every route_rule a cap may record (a closed set, like the reasons in tracker/reasons.py)
CAP_RULES = (
    CAP_DAILY,
    CAP_TOTAL,
    *CAMPAIGN_CAP.values(),
    CAP_CONVERSIONS_DAILY,
    CAP_CONVERSIONS_TOTAL,
)


def over_cap(caps: Caps, daily: int, total: int) -> str:
    """Which click cap the click counts have reached ("" for none)."""
    if caps.total_clicks is not None and total >= caps.total_clicks:
        return CAP_TOTAL
    if caps.daily_clicks is not None and daily >= caps.daily_clicks:
        return CAP_DAILY
    return ""


def over_conversion_cap(caps: Caps, daily: int, total: int) -> str:
    """Which conversion cap a campaign's accepted conversions (today's UTC day, all time)
    have reached ("" for none): reached at the cap itself, so the conversion that fills
    it is the last one the campaign's destinations are sent traffic for."""
    if caps.total_conversions is not None and total >= caps.total_conversions:
        return CAP_CONVERSIONS_TOTAL
    if caps.daily_conversions is not None and daily >= caps.daily_conversions:
        return CAP_CONVERSIONS_DAILY
    return ""


@dataclass(slots=True)
class Router:
    rules: list[Rule]
    needs: frozenset[str] = field(default_factory=frozenset)  # "geo", "device", "bot"
    links: frozenset[str] = field(default_factory=frozenset)  # slugs its targets name
    caps: Caps | None = None


@dataclass(frozen=True, slots=True)
class Decision:
    rule: str  # the rule id, "" when none matched
    variant: str  # the split's variant, "" when not a split
    target: Target | None  # None: the link's own destination


NO_RULE = Decision("", "", None)


# -- evaluation ---------------------------------------------------------------------------


def bucket(visitor_id: str, slug: str, rule_id: str) -> int:
    """A visitor's stable position (0 .. 2**64-1) in a link's split."""
    digest = hashlib.blake2b(f"{visitor_id}\n{slug}\n{rule_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def pick(variants: tuple[Variant, ...], total: int, position: int) -> Variant:
    point = position % total
    for variant in variants:
        if point < variant.weight:
            return variant
        point -= variant.weight
    return variants[-1]


def decide(router: Router, visit: Visit, slug: str, visitor_id: str | None, draw: int) -> Decision:
    """The first matching rule's target; `visitor_id` None (no-track): `draw` (a random
    number from the caller) places the visitor in a split."""
    for rule in router.rules:
        if rule.test(visit):
            if rule.target is not None:
                return Decision(rule.id, "", rule.target)
            position = bucket(visitor_id, slug, rule.id) if visitor_id else draw
            variant = pick(rule.variants, rule.total_weight, position)
            return Decision(rule.id, variant.name, variant.target)
    return NO_RULE


# -- validation and compilation -----------------------------------------------------------


def _strings(value: Any, what: str, normalize: Callable[[str], str] = str) -> frozenset[str]:
    if (
        not isinstance(value, list)
        or not 1 <= len(value) <= MAX_LIST
        or not all(isinstance(v, str) and 0 < len(v) <= 100 for v in value)
    ):
        raise RoutingError(f"{what} must be a list of 1 to {MAX_LIST} strings")
    return frozenset(normalize(v) for v in value)


def _minutes(value: Any, what: str) -> int:
    if not isinstance(value, str) or not re.fullmatch(r"([01][0-9]|2[0-3]):[0-5][0-9]", value):
        raise RoutingError(f"{what} must be a time of day HH:MM")
    return int(value[:2]) * 60 + int(value[3:])


def _primary_languages(header: str) -> set[str]:
    """`fr-CH, fr;q=0.9, en;q=0.8` -> {"fr-ch", "fr", "en"} (lower case, no weights)."""
    out = set()
    for part in header.split(","):
        tag = part.split(";", 1)[0].strip().lower()
        if tag:
            out.add(tag)
            out.add(tag.split("-", 1)[0])
    return out


def _condition(key: str, value: Any, path: str, needs: set[str]) -> Callable[[Visit], bool]:
    where = f"{path}.{key}"
    if key in NEEDS:
        needs.add(NEEDS[key])
    if key in ("country", "region"):
        wanted = _strings(value, where, str.upper)
        return lambda v: getattr(v, key) in wanted
    if key == "device_type":
        wanted = _strings(value, where, str.lower)
        unknown = sorted(wanted - set(DEVICE_TYPES))
        if unknown:
            raise RoutingError(f"{where}: unknown device type {unknown[0]!r}")
        return lambda v: v.device_type in wanted
    if key in ("os", "browser"):
        wanted = _strings(value, where, str.lower)
        return lambda v: getattr(v, key).lower() in wanted
    if key == "language":
        wanted = _strings(value, where, str.lower)
        return lambda v: not wanted.isdisjoint(_primary_languages(v.accept_language))
    if key == "asn":
        if (
            not isinstance(value, list)
            or not 1 <= len(value) <= MAX_LIST
            or not all(isinstance(n, int) and not isinstance(n, bool) and n > 0 for n in value)
        ):
            raise RoutingError(f"{where} must be a list of AS numbers")
        asns = frozenset(value)
        return lambda v: v.asn in asns
    if key == "bot":
        if not isinstance(value, bool):
            raise RoutingError(f"{where} must be true or false")
        return lambda v: v.is_bot is value
    if key == "param_equals":
        if (
            not isinstance(value, dict)
            or not value
            or not all(isinstance(k, str) and isinstance(x, str) for k, x in value.items())
        ):
            raise RoutingError(f"{where} must be an object of parameter name -> value")
        pairs = tuple(value.items())
        return lambda v: all(v.params.get(k) == x for k, x in pairs)
    if key == "param_present":
        names = _strings(value, where)
        return lambda v: all(n in v.params for n in names)
    if key == "time":
        return _time_condition(value, where)
    if key == "all":
        if not isinstance(value, list) or not value or not all(isinstance(w, dict) for w in value):
            raise RoutingError(f"{where} must be a list of condition objects")
        tests = [_when(w, f"{where}[{i}]", needs) for i, w in enumerate(value)]
        return lambda v: all(t(v) for t in tests)
    raise RoutingError(f"{where}: unknown condition (known: {', '.join(CONDITIONS)})")


def _time_condition(value: Any, where: str) -> Callable[[Visit], bool]:
    if not isinstance(value, dict) or not value.get("tz"):
        raise RoutingError(f"{where} needs tz (a time zone such as Europe/Paris)")
    unknown = sorted(set(value) - {"tz", "days", "from", "to"})
    if unknown:
        raise RoutingError(f"{where}: unknown field {unknown[0]!r}")
    try:
        zone = ZoneInfo(value["tz"]) if isinstance(value["tz"], str) else None
    except (ZoneInfoNotFoundError, ValueError):
        zone = None
    if zone is None:
        raise RoutingError(f"{where}.tz: unknown time zone")
    days = frozenset(range(7))
    if "days" in value:
        named = _strings(value["days"], f"{where}.days", str.lower)
        if not named <= set(DAYS):
            raise RoutingError(f"{where}.days: use {', '.join(DAYS)}")
        days = frozenset(DAYS.index(d) for d in named)
    if ("from" in value) != ("to" in value):
        raise RoutingError(f"{where}: from and to go together")
    start = _minutes(value.get("from", "00:00"), f"{where}.from")
    end = _minutes(value.get("to", "23:59"), f"{where}.to") if "to" in value else 24 * 60

    def test(v: Visit) -> bool:
        local = datetime.fromtimestamp(v.now_ms / 1000, UTC).astimezone(zone)
        minute = local.hour * 60 + local.minute
        if start <= end:  # 09:00-18:00
            return local.weekday() in days and start <= minute < end
        # 22:00-06:00 spans midnight: the early hours belong to the day before
        if minute >= start:
            return local.weekday() in days
        return minute < end and (local.weekday() - 1) % 7 in days

    return test


def _when(when: Any, path: str, needs: set[str]) -> Callable[[Visit], bool]:
    if not isinstance(when, dict):
        raise RoutingError(f"{path} must be an object of conditions")
    tests = [_condition(key, value, path, needs) for key, value in when.items()]
    if not tests:
        return lambda v: True
    if len(tests) == 1:
        return tests[0]
    return lambda v: all(t(v) for t in tests)


def _target(data: Any, path: str, slug: str) -> Target:
    if not isinstance(data, dict):
        raise RoutingError(f"{path} must be an object with url or link")
    if ("url" in data) == ("link" in data):
        raise RoutingError(f"{path} needs exactly one of url or link")
    if "url" in data:
        try:
            return Target(url=normalize_destination(data["url"]))
        except (DestinationError, TypeError) as exc:
            raise RoutingError(f"{path}.url: {exc}") from None
    other = data["link"]
    if not isinstance(other, str) or not SLUG_RE.match(other):
        raise RoutingError(f"{path}.link must be a link's slug")
    if other == slug:
        raise RoutingError(f"{path}.link: a link cannot route to itself")
    return Target(link=other)


def _keys(data: dict, allowed: set[str], path: str) -> None:
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise RoutingError(f"{path}: unknown field {unknown[0]!r}")


def compile_routing(data: Any, slug: str) -> Router:
    """A Router from a link's `routing` object; RoutingError says what is wrong."""
    if not isinstance(data, dict):
        raise RoutingError("routing must be an object")
    _keys(data, {"rules", "caps"}, "routing")
    rules_data = data.get("rules", [])
    if not isinstance(rules_data, list) or len(rules_data) > MAX_RULES:
        raise RoutingError(f"routing.rules must be a list of at most {MAX_RULES} rules")
    needs: set[str] = set()
    links: set[str] = set()
    rules: list[Rule] = []
    seen: set[str] = set()
    for i, raw in enumerate(rules_data):
        path = f"routing.rules[{i}]"
        if not isinstance(raw, dict):
            raise RoutingError(f"{path} must be an object")
        _keys(raw, {"id", "when", "to"}, path)
        rule_id = raw.get("id")
        if not isinstance(rule_id, str) or not ID_RE.match(rule_id):
            raise RoutingError(f"{path}.id must be 1-64 letters, digits, '-', '_', '.' or ':'")
        if rule_id in seen:
            raise RoutingError(f"{path}.id: {rule_id!r} is used twice")
        seen.add(rule_id)
        test = _when(raw.get("when", {}), f"{path}.when", needs)
        to = raw.get("to")
        if not isinstance(to, dict):
            raise RoutingError(f"{path}.to must be an object with url, link or split")
        if "split" not in to:
            target = _target(to, f"{path}.to", slug)
            links.update([target.link] if target.link else [])
            rules.append(Rule(rule_id, test, target))
            continue
        _keys(to, {"split"}, f"{path}.to")
        variants = _split(to["split"], f"{path}.to.split", slug)
        links.update(v.target.link for v in variants if v.target.link)
        rules.append(Rule(rule_id, test, None, variants, sum(v.weight for v in variants)))
    caps = _caps(data["caps"], slug) if "caps" in data else None
    if caps is not None and caps.overflow is not None and caps.overflow.link:
        links.add(caps.overflow.link)
    return Router(rules, frozenset(needs), frozenset(links), caps)


CLICK_CAPS = ("daily_clicks", "total_clicks")
CONVERSION_CAPS = ("daily_conversions", "total_conversions")  # a campaign's only


def _caps(data: Any, slug: str, path: str = "routing.caps", conversions: bool = False) -> Caps:
    if not isinstance(data, dict):
        raise RoutingError(f"{path} must be an object")
    names = CLICK_CAPS + CONVERSION_CAPS if conversions else CLICK_CAPS
    _keys(data, {*names, "overflow"}, path)
    counts: dict[str, int | None] = {}
    for key in names:
        value = data.get(key)
        if value is not None and (
            isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 10**12
        ):
            raise RoutingError(f"{path}.{key} must be a whole number >= 1, or null")
        counts[key] = value
    if all(value is None for value in counts.values()):
        raise RoutingError(f"{path} needs {' or '.join(names)}")
    overflow = _target(data["overflow"], f"{path}.overflow", slug) if "overflow" in data else None
    return Caps(
        counts["daily_clicks"],
        counts["total_clicks"],
        overflow,
        counts.get("daily_conversions"),
        counts.get("total_conversions"),
    )


def _split(data: Any, path: str, slug: str) -> tuple[Variant, ...]:
    if not isinstance(data, list) or not 2 <= len(data) <= MAX_VARIANTS:
        raise RoutingError(f"{path} must list 2 to {MAX_VARIANTS} variants")
    out = []
    names: set[str] = set()
    for i, raw in enumerate(data):
        where = f"{path}[{i}]"
        if not isinstance(raw, dict):
            raise RoutingError(f"{where} must be an object")
        _keys(raw, {"variant", "weight", "url", "link"}, where)
        name = raw.get("variant")
        if not isinstance(name, str) or not ID_RE.match(name) or name in names:
            raise RoutingError(f"{where}.variant must be a distinct name (letters, digits, -_.:)")
        names.add(name)
        weight = raw.get("weight")
        if isinstance(weight, bool) or not isinstance(weight, int) or not 0 < weight <= 10000:
            raise RoutingError(f"{where}.weight must be a whole number from 1 to 10000")
        target = _target({k: raw[k] for k in ("url", "link") if k in raw}, where, slug)
        out.append(Variant(name, weight, target))
    return tuple(out)


def find_cycle(slug: str, graph: Mapping[str, frozenset[str]]) -> list[str] | None:
    """A path of links that leads from `slug` back to itself through rule targets, or
    None. `graph`: slug -> the slugs its rules name (every link, with the change)."""
    stack = [(slug, [slug])]
    seen: set[str] = set()
    while stack:
        node, path = stack.pop()
        for nxt in sorted(graph.get(node, frozenset())):
            if nxt == slug:
                return [*path, nxt]
            if nxt not in seen:
                seen.add(nxt)
                stack.append((nxt, [*path, nxt]))
    return None
