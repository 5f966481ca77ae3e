"""Paid by attribution model: the payout split among the credited clicks' affiliates by
the model's weights, to the cent (largest remainder)."""

from __future__ import annotations

import pytest

from attribution import Touch
from tests.ledger.helpers import conversion
from tracker.ledger import accounts, records
from tracker.ledger.commissions import Engine

DAY = 86_400_000


@pytest.fixture
def split_store(store, clock):
    for aff in ("ref", "a", "b", "c"):
        records.create_affiliate(
            store,
            {"id": aff, "parent_id": "ref" if aff == "c" else None},
            max_levels=2,
            min_payout="1",
        )
    records.create_affiliate(
        store, {"id": "gone", "status": "banned"}, max_levels=2, min_payout="1"
    )
    return store


def touches(clock) -> list[Touch]:
    now = clock.ms
    return [
        Touch("00000000-0000-7000-8000-000000000001", now - 9 * DAY, "c1", "a"),
        Touch("00000000-0000-7000-8000-000000000002", now - 5 * DAY, "other", "b"),  # not c1
        Touch("00000000-0000-7000-8000-000000000003", now - 4 * DAY, "c1", "gone"),  # banned
        Touch("00000000-0000-7000-8000-000000000004", now - 3 * DAY, "c1", "b"),
        Touch("00000000-0000-7000-8000-000000000005", now - 1 * DAY, "c1", "c"),
    ]


def amounts(store, clock) -> dict[str, str]:
    with store.read() as conn:
        out = {}
        for (aff, _), parts in accounts.balance_minor(conn, None, clock.ms).items():
            out[aff] = parts["pending"]
    return out


@pytest.mark.parametrize(
    ("model", "expected"),
    [
        ("linear", {"a": 334, "b": 333, "c": 333, "ref": 33}),
        ("first_click", {"a": 1000}),
        ("last_click", {"c": 1000, "ref": 100}),
        ("position_based", {"a": 400, "b": 200, "c": 400, "ref": 40}),
    ],
)
def test_model_splits_sum_to_the_cent(split_store, clock, model, expected):
    records.create_campaign(
        split_store,
        {
            "id": "c1",
            "advertiser_id": "shop",
            "pay_model": model,
            "plan": {
                "events": {"sale": {"type": "percent", "percent": "10"}},
                "levels": [{"percent": "10", "of": "commission"}],
            },
        },
    )
    engine = Engine(split_store, path=lambda visitor, ms: touches(clock))
    row = conversion(clock, affiliate="c", amount="100.00")
    row["click_id"] = "00000000-0000-7000-8000-000000000005"
    engine.process([row])
    got = amounts(split_store, clock)
    assert {k: v for k, v in got.items() if v} == expected
    assert sum(v for k, v in got.items() if k != "ref") == 1000  # level 1 adds up exactly


def test_time_decay_split_of_an_odd_amount_adds_up(split_store, clock):
    records.create_campaign(
        split_store,
        {
            "id": "c1",
            "advertiser_id": "shop",
            "pay_model": "time_decay",
            "plan": {"events": {"sale": {"type": "fixed", "fixed": {"USD": "0.07"}}}},
        },
    )
    engine = Engine(split_store, path=lambda visitor, ms: touches(clock))
    row = conversion(clock, affiliate="c")
    row["click_id"] = "00000000-0000-7000-8000-000000000005"
    engine.process([row])
    got = amounts(split_store, clock)
    # weights 0.20 / 0.36 / 0.44 of 7 cents: 1.39, 2.53, 3.08 -> 1, 2, 3 and the cent
    # left over goes to the largest remainder (b)
    assert got == {"a": 1, "b": 3, "c": 3}  # no levels in this plan
