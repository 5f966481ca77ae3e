"""Routing rules as pure functions: each condition, first-match order, sticky weighted
splits, validation and cycles."""

from __future__ import annotations

import random
from collections import Counter
from datetime import UTC, datetime

import pytest

from tracker.ids import uuid7
from tracker.routing.rules import (
    NO_RULE,
    RoutingError,
    Visit,
    compile_routing,
    decide,
    find_cycle,
)

A = {"url": "https://a.example/"}


def ms(text: str) -> int:
    return int(datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp() * 1000)


def one(when: dict) -> object:
    router = compile_routing({"rules": [{"id": "r", "when": when, "to": A}]}, "s")
    return lambda **visit: decide(router, Visit(**{"params": {}, **visit}), "s", "v", 0).rule == "r"


@pytest.mark.parametrize(
    ("when", "yes", "no"),
    [
        ({"country": ["fr", "BE"]}, {"country": "FR"}, {"country": "DE"}),
        ({"region": ["IDF"]}, {"region": "IDF"}, {"region": "PAC"}),
        (
            {"device_type": ["mobile", "tablet"]},
            {"device_type": "tablet"},
            {"device_type": "desktop"},
        ),
        ({"os": ["iOS"]}, {"os": "iOS"}, {"os": "Android"}),
        ({"browser": ["firefox"]}, {"browser": "Firefox"}, {"browser": "Chrome"}),
        (
            {"language": ["fr"]},
            {"accept_language": "fr-CH, en;q=0.8"},
            {"accept_language": "de-DE"},
        ),
        ({"language": ["pt-br"]}, {"accept_language": "pt-BR"}, {"accept_language": "pt-PT"}),
        ({"asn": [3215]}, {"asn": 3215}, {"asn": 16509}),
        ({"bot": True}, {"is_bot": True}, {"is_bot": False}),
        ({"bot": False}, {"is_bot": False}, {"is_bot": True}),
        ({"param_equals": {"src": "fb"}}, {"params": {"src": "fb"}}, {"params": {"src": "g"}}),
        ({"param_present": ["gclid"]}, {"params": {"gclid": ""}}, {"params": {}}),
        # Paris office hours (UTC+1 in winter): 08:30 UTC is 09:30 there, on a Monday
        (
            {"time": {"tz": "Europe/Paris", "days": ["mon"], "from": "09:00", "to": "18:00"}},
            {"now_ms": ms("2026-11-30T08:30:00")},
            {"now_ms": ms("2026-11-30T07:30:00")},
        ),
        (  # the day is the zone's: Monday 23:30 UTC is Tuesday in Tokyo
            {"time": {"tz": "Asia/Tokyo", "days": ["tue"]}},
            {"now_ms": ms("2026-11-30T23:30:00")},
            {"now_ms": ms("2026-11-30T12:00:00")},
        ),
        (  # a night window spans midnight: Saturday 02:00 belongs to Friday's night
            {"time": {"tz": "UTC", "days": ["fri"], "from": "22:00", "to": "06:00"}},
            {"now_ms": ms("2026-12-05T02:00:00")},
            {"now_ms": ms("2026-12-06T02:00:00")},
        ),
        (
            {"country": ["FR"], "all": [{"device_type": ["mobile"]}, {"param_present": ["x"]}]},
            {"country": "FR", "device_type": "mobile", "params": {"x": "1"}},
            {"country": "FR", "device_type": "mobile", "params": {}},
        ),
    ],
)
def test_each_condition(when, yes, no):
    matches = one(when)
    assert matches(**yes)
    assert not matches(**no)


def test_all_conditions_of_a_rule_must_hold():
    matches = one({"country": ["FR"], "device_type": ["mobile"]})
    assert matches(country="FR", device_type="mobile")
    assert not matches(country="FR", device_type="desktop")
    assert not matches(country="DE", device_type="mobile")
    assert one({})()  # no condition: every click


def test_first_match_decides_and_no_match_keeps_the_link():
    router = compile_routing(
        {
            "rules": [
                {
                    "id": "fr-mobile",
                    "when": {"country": ["FR"], "device_type": ["mobile"]},
                    "to": {"url": "https://m.example/"},
                },
                {"id": "fr", "when": {"country": ["FR"]}, "to": {"url": "https://fr.example/"}},
                {"id": "other-link", "when": {"param_equals": {"p": "1"}}, "to": {"link": "other"}},
            ]
        },
        "s",
    )
    assert router.needs == frozenset({"geo", "device"}) and router.links == {"other"}

    def go(**visit):
        return decide(router, Visit(**{"params": {}, **visit}), "s", "v", 0)

    assert go(country="FR", device_type="mobile").target.url == "https://m.example/"
    assert go(country="FR", device_type="desktop").rule == "fr"
    assert go(country="FR", params={"p": "1"}).rule == "fr"  # earlier rule wins
    assert go(country="DE", params={"p": "1"}).target.link == "other"
    assert go(country="DE") is NO_RULE


def test_sticky_split_holds_its_weights_over_10000_visitors():
    router = compile_routing(
        {
            "rules": [
                {
                    "id": "ab",
                    "to": {
                        "split": [
                            {"variant": "a", "weight": 50, "url": "https://a.example/"},
                            {"variant": "b", "weight": 30, "url": "https://b.example/"},
                            {"variant": "c", "weight": 20, "link": "c-link"},
                        ]
                    },
                }
            ]
        },
        "s",
    )
    visitors = [uuid7() for _ in range(10_000)]
    first = {v: decide(router, Visit(params={}), "s", v, 0).variant for v in visitors}
    shares = Counter(first.values())
    for name, weight in (("a", 0.5), ("b", 0.3), ("c", 0.2)):
        assert abs(shares[name] / 10_000 - weight) < 0.02, shares
    # every returning visitor sees the same variant, whatever the draw
    rng = random.Random(1)
    assert all(
        decide(router, Visit(params={}), "s", v, rng.getrandbits(64)).variant == first[v]
        for v in visitors
    )
    # the same visitor on another link is placed independently
    other = Counter(decide(router, Visit(params={}), "t", v, 0).variant for v in visitors)
    moved = sum(decide(router, Visit(params={}), "t", v, 0).variant != first[v] for v in visitors)
    assert moved > 3000 and abs(other["a"] / 10_000 - 0.5) < 0.02
    # no-track visitors: placed by the caller's random draw, with the same weights
    draws = Counter(
        decide(router, Visit(params={}), "s", None, rng.getrandbits(64)).variant
        for _ in range(10_000)
    )
    assert abs(draws["a"] / 10_000 - 0.5) < 0.02


@pytest.mark.parametrize(
    ("routing", "reason"),
    [
        ({"rules": [{"id": "r", "to": A, "colour": 1}]}, "unknown field 'colour'"),
        ({"rules": [], "extra": 1}, "unknown field 'extra'"),
        ({"rules": [{"id": "r", "when": {"planet": ["mars"]}, "to": A}]}, "unknown condition"),
        ({"rules": [{"id": "r", "when": {"country": "FR"}, "to": A}]}, "list"),
        ({"rules": [{"id": "r", "when": {"device_type": ["phablet"]}, "to": A}]}, "device type"),
        ({"rules": [{"id": "r", "when": {"asn": ["x"]}, "to": A}]}, "AS numbers"),
        ({"rules": [{"id": "r", "when": {"time": {"tz": "Mars/Olympus"}}, "to": A}]}, "time zone"),
        (
            {
                "rules": [
                    {
                        "id": "r",
                        "when": {"time": {"tz": "UTC", "from": "9:00", "to": "18:00"}},
                        "to": A,
                    }
                ]
            },
            "HH:MM",
        ),
        (
            {"rules": [{"id": "r", "when": {"time": {"tz": "UTC", "days": ["funday"]}}, "to": A}]},
            "days",
        ),
        ({"rules": [{"id": "r", "to": {"url": "javascript:alert(1)"}}]}, "http"),
        ({"rules": [{"id": "r", "to": {"url": "https://{sub1}.example/"}}]}, "host"),
        ({"rules": [{"id": "r", "to": {"url": "https://a.example/", "link": "x"}}]}, "exactly one"),
        ({"rules": [{"id": "r", "to": {"link": "s"}}]}, "itself"),
        ({"rules": [{"id": "r", "to": A}, {"id": "r", "to": A}]}, "twice"),
        (
            {
                "rules": [
                    {
                        "id": "r",
                        "to": {
                            "split": [{"variant": "a", "weight": 1, "url": "https://a.example/"}]
                        },
                    }
                ]
            },
            "2 to",
        ),
        (
            {
                "rules": [
                    {
                        "id": "r",
                        "to": {
                            "split": [
                                {"variant": "a", "weight": 0, "url": "https://a.example/"},
                                {"variant": "b", "weight": 1, "url": "https://b.example/"},
                            ]
                        },
                    }
                ]
            },
            "weight",
        ),
        (
            {
                "rules": [
                    {
                        "id": "r",
                        "to": {
                            "split": [
                                {"variant": "a", "weight": 1.5, "url": "https://a.example/"},
                                {"variant": "b", "weight": 1, "url": "https://b.example/"},
                            ]
                        },
                    }
                ]
            },
            "weight",
        ),
        (
            {
                "rules": [
                    {
                        "id": "r",
                        "to": {
                            "split": [
                                {"variant": "a", "weight": -5, "url": "https://a.example/"},
                                {"variant": "b", "weight": 1, "url": "https://b.example/"},
                            ]
                        },
                    }
                ]
            },
            "weight",
        ),
        (
            {
                "rules": [
                    {
                        "id": "r",
                        "to": {
                            "split": [
                                {"variant": "a", "weight": 1, "url": "https://a.example/"},
                                {"variant": "a", "weight": 1, "url": "https://b.example/"},
                            ]
                        },
                    }
                ]
            },
            "distinct",
        ),
    ],
)
def test_invalid_routing_says_why(routing, reason):
    with pytest.raises(RoutingError, match=reason):
        compile_routing(routing, "s")


def test_cycles_are_found():
    graph = {
        "a": frozenset({"b"}),
        "b": frozenset({"c"}),
        "c": frozenset({"a"}),
        "d": frozenset({"a"}),
    }
    assert find_cycle("a", graph) == ["a", "b", "c", "a"]
    assert find_cycle("d", graph) is None  # leads into a cycle that does not include it
    assert find_cycle("a", {"a": frozenset({"b"}), "b": frozenset()}) is None


def test_ab_report_statistics():
    from tracker.reports import ab

    low, high = ab.wilson(50, 1000)
    assert 0.038 < low < 0.040 and 0.065 < high < 0.066  # textbook values for 5% of 1000
    assert ab.wilson(0, 0) == (0.0, 1.0)
    # a clearly better arm is almost surely best; equal arms split the chance
    clear = ab.p_best([(50, 1000), (100, 1000)])
    assert clear[1] > 0.99 and abs(sum(clear) - 1) < 1e-9
    even = ab.p_best([(50, 1000), (50, 1000)])
    assert abs(even[0] - 0.5) < 0.03
    results = ab.assemble(
        [["ab", "a", 1000], ["ab", "b", 1000], ["other", "x", 10], ["other", "y", 10]],
        [["ab", "a", 50], ["ab", "b", 100], ["other", "x", 1]],
    )
    by = {(r.rule, r.variant): r for r in results}
    assert by[("ab", "b")].cvr == 0.1 and by[("ab", "b")].p_best > 0.99
    assert by[("other", "y")].conversions == 0
    assert abs(by[("other", "x")].p_best + by[("other", "y")].p_best - 1) < 1e-9
    with pytest.raises(ab.AbError):
        ab.queries("tracker", "x' OR 1=1 --")
