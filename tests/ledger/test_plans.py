"""Commission plans as pure functions: each type at its boundaries."""

from __future__ import annotations

import pytest

from tracker.ledger import plans
from tracker.ledger.plans import PlanError, parse_plan, parse_rule, rule_amount


def rule(data):
    return parse_rule(data, "rule")


def test_fixed_per_currency():
    r = rule({"type": "fixed", "fixed": {"USD": "5.00", "JPY": "700"}})
    assert rule_amount(r, 12_345, "USD") == 500
    assert rule_amount(r, 0, "USD") == 500  # a lead without an amount still pays
    assert rule_amount(r, 99, "JPY") == 700  # JPY has no minor unit
    assert rule_amount(r, 100, "EUR") is None  # no rate in that currency


def test_percent_rounds_half_up_to_the_cent():
    r = rule({"type": "percent", "percent": "10"})
    assert rule_amount(r, 1_005, "USD") == 101  # 100.5 cents -> 101
    assert rule_amount(r, 1_004, "USD") == 100  # 100.4 -> 100
    assert rule_amount(r, 0, "USD") == 0
    assert rule_amount(rule({"type": "percent", "percent": "2.5"}), 1_999, "KWD") == 50  # 49.975


def test_fixed_plus_percent_with_min_and_max():
    r = rule(
        {
            "type": "fixed_percent",
            "fixed": {"USD": "1.00"},
            "percent": "5",
            "min": {"USD": "2.00"},
            "max": {"USD": "10.00"},
        }
    )
    assert rule_amount(r, 1_000, "USD") == 200  # 1.00 + 0.50 = 1.50 -> raised to min 2.00
    assert rule_amount(r, 2_000, "USD") == 200  # 1.00 + 1.00 = exactly min
    assert rule_amount(r, 4_000, "USD") == 300
    assert rule_amount(r, 18_000, "USD") == 1_000  # 1.00 + 9.00 = exactly max
    assert rule_amount(r, 18_002, "USD") == 1_000  # capped at max


def test_min_max_only_in_their_currencies():
    r = rule({"type": "percent", "percent": "10", "max": {"USD": "1.00"}})
    assert rule_amount(r, 5_000, "USD") == 100
    assert rule_amount(r, 5_000, "EUR") == 500  # no max in EUR


def test_tiers_by_count_at_their_edges():
    r = rule(
        {
            "type": "tiered",
            "basis": "count",
            "tiers": [
                {"from": "1", "type": "percent", "percent": "5"},
                {"from": "101", "type": "percent", "percent": "7"},
                {"from": "501", "type": "fixed", "fixed": {"USD": "9"}},
            ],
        }
    )
    assert rule_amount(r, 10_000, "USD", month_count=1) == 500
    assert rule_amount(r, 10_000, "USD", month_count=100) == 500
    assert rule_amount(r, 10_000, "USD", month_count=101) == 700  # the 101st is in tier 2
    assert rule_amount(r, 10_000, "USD", month_count=500) == 700
    assert rule_amount(r, 10_000, "USD", month_count=501) == 900


def test_tiers_by_amount_this_month_including_this_one():
    r = rule(
        {
            "type": "tiered",
            "basis": "amount",
            "tiers": [
                {"from": "0", "type": "percent", "percent": "5"},
                {"from": "1000.00", "type": "percent", "percent": "10"},
            ],
            "max": {"USD": "50"},
        }
    )
    assert rule_amount(r, 10_000, "USD", month_amount_minor=99_999) == 500
    assert rule_amount(r, 10_000, "USD", month_amount_minor=100_000) == 1_000
    assert rule_amount(r, 90_000, "USD", month_amount_minor=190_000) == 5_000  # max


def test_rule_for_prefers_the_affiliates_override_then_the_event_then_any():
    plan = parse_plan(
        {
            "events": {
                "sale": {"type": "percent", "percent": "10"},
                "*": {"type": "fixed", "fixed": {"USD": "1"}},
            },
            "overrides": {"vip": {"sale": {"type": "percent", "percent": "15"}}},
        }
    )
    assert plans.rule_for(plan, "sale", "vip")["percent"] == "15"
    assert plans.rule_for(plan, "sale", "other")["percent"] == "10"
    assert plans.rule_for(plan, "lead", "vip")["type"] == "fixed"
    assert plans.rule_for(parse_plan({"events": {}}), "sale", "x") is None


def test_levels_of_commission_or_amount_and_the_cap():
    levels = [{"percent": "10", "of": "commission"}, {"percent": "1", "of": "amount"}]
    assert plans.level_amounts(levels, 1_000, 50_000, max_levels=3) == [100, 500]
    assert plans.level_amounts(levels, 1_000, 50_000, max_levels=2) == [100]
    assert plans.level_amounts(levels, 1_000, 50_000, max_levels=1) == []
    assert plans.level_amounts(levels, 1_000, 50_000, max_levels=9) == [100, 500]  # never > 3


def test_revenue_defaults_to_the_payout():
    assert plans.revenue_amount({}, "sale", 10_000, "USD", 700) == 700
    revenue = plans.parse_revenue({"events": {"sale": {"type": "percent", "percent": "15"}}})
    assert plans.revenue_amount(revenue, "sale", 10_000, "USD", 700) == 1_500


@pytest.mark.parametrize(
    "data",
    [
        {"events": {"sale": {"type": "bogus"}}},
        {"events": {"sale": {"type": "percent", "percent": "101"}}},
        {"events": {"sale": {"type": "percent", "percent": 1.5}}},  # a float: refused
        {"events": {"sale": {"type": "fixed", "fixed": {"USD": "1.001"}}}},
        {"events": {"sale": {"type": "fixed", "fixed": {"XXX": "1"}}}},
        {
            "events": {
                "sale": {
                    "type": "percent",
                    "percent": "5",
                    "min": {"USD": "3"},
                    "max": {"USD": "2"},
                }
            }
        },
        {
            "events": {
                "sale": {
                    "type": "tiered",
                    "tiers": [{"from": "5", "type": "percent", "percent": "1"}],
                }
            }
        },
        {
            "events": {
                "sale": {
                    "type": "tiered",
                    "tiers": [
                        {"from": "1", "type": "percent", "percent": "1"},
                        {"from": "1", "type": "percent", "percent": "2"},
                    ],
                }
            }
        },
        {"events": {"Sale!": {"type": "percent", "percent": "1"}}},
        {"levels": [{"percent": "1"}, {"percent": "1"}, {"percent": "1"}]},
        {"levels": [{"percent": "1", "of": "profit"}]},
        {"surprise": 1},
    ],
)
def test_invalid_plans_are_refused(data):
    with pytest.raises(PlanError):
        parse_plan(data)
