"""The commission lifecycle in the ledger, on SQLite and PostgreSQL, with a moved clock:
pending -> approved -> hold over -> payout -> paid; reversal before and after payout;
a 3-level chain; caps; replayed steps."""

from __future__ import annotations

import pytest
from sqlalchemy import func, select

from tests.ledger.helpers import conversion, step
from tracker.ledger import accounts, payouts, records
from tracker.ledger import schema as T
from tracker.ledger.commissions import Engine

PLAN = {
    "events": {"sale": {"type": "percent", "percent": "10"}},
    "levels": [{"percent": "10", "of": "commission"}, {"percent": "1", "of": "amount"}],
}


@pytest.fixture
def programme(store):
    for aff, parent in (("root", None), ("mid", "root"), ("leaf", "mid")):
        records.create_affiliate(
            store,
            {"id": aff, "parent_id": parent, "min_payout": "0.50"},
            max_levels=3,
            min_payout="100",
        )
    records.create_campaign(
        store, {"id": "c1", "advertiser_id": "shop", "plan": PLAN, "hold_days": 7}
    )
    return Engine(store, max_levels=3)


def balance(store, affiliate):
    with store.read() as conn:
        rows = accounts.balance(conn, affiliate, store.now_ms())
    return {k: v for k, v in rows[0].items() if v != "0.00"} if rows else {}


def test_full_lifecycle_with_exact_amounts(store, clock, programme):
    row = conversion(clock)
    mirror = programme.process([row])
    assert balance(store, "leaf") == {"currency": "USD", "pending": "10.00", "total": "10.00"}
    assert balance(store, "mid")["pending"] == "1.00"  # 10% of the commission
    assert balance(store, "root")["pending"] == "1.00"  # 1% of the amount
    assert len(mirror) == 4  # three levels and the conversion's own row

    clock.advance(days=1)
    programme.process([step(row, clock, "approved")])
    assert balance(store, "leaf") == {"currency": "USD", "on_hold": "10.00", "total": "10.00"}

    clock.advance(days=7, ms=-1)
    assert payouts.run(store).payouts == []  # one ms before the hold ends
    clock.advance(ms=1)
    assert balance(store, "leaf") == {"currency": "USD", "available": "10.00", "total": "10.00"}
    run = payouts.run(store)
    amounts = {p["affiliate_id"]: p["amount"] for p in run.payouts}
    assert amounts == {"leaf": "10.00", "mid": "1.00", "root": "1.00"}
    assert run.csv.splitlines()[0] == ",".join(payouts.CSV_COLUMNS)
    assert any(line.endswith(",leaf,leaf,USD,10.00,1") for line in run.csv.splitlines())
    assert balance(store, "leaf") == {"currency": "USD", "in_payout": "10.00", "total": "10.00"}
    assert payouts.run(store).payouts == []  # a second run finds nothing left

    leaf = next(p for p in run.payouts if p["affiliate_id"] == "leaf")
    payouts.set_status(store, leaf["payout_id"], "processing")
    payouts.set_status(store, leaf["payout_id"], "paid", reference="bank-123")
    assert balance(store, "leaf") == {"currency": "USD", "paid": "10.00", "total": "10.00"}
    with store.read() as conn:
        [commission] = accounts.commissions(conn, "leaf", clock.ms)
    assert (commission["status"], commission["amount"]) == ("paid", "10.00")


def test_reversal_before_payout_cancels(store, clock, programme):
    row = conversion(clock, status="approved")
    programme.process([row])
    clock.advance(days=2)
    programme.process([step(row, clock, "reversed")])
    assert balance(store, "leaf") == {"currency": "USD"}  # every part is zero
    clock.advance(days=30)
    assert payouts.run(store).payouts == []
    with store.read() as conn:
        assert accounts.commissions(conn, "leaf", clock.ms)[0]["status"] == "reversed"


def test_reversal_after_payout_is_clawed_back_from_the_next(store, clock, programme):
    first = conversion(clock, status="approved")
    programme.process([first])
    clock.advance(days=8)
    [paid] = [p for p in payouts.run(store).payouts if p["affiliate_id"] == "leaf"]
    payouts.set_status(store, paid["payout_id"], "paid")
    programme.process([step(first, clock, "reversed")])
    assert balance(store, "leaf") == {
        "currency": "USD",
        "available": "-10.00",
        "paid": "10.00",
    }  # total 0.00
    # a new sale of 250.00 earns 25.00; the next payout is 25.00 - 10.00
    programme.process([conversion(clock, status="approved", amount="250.00")])
    clock.advance(days=8)
    [next_payout] = [p for p in payouts.run(store).payouts if p["affiliate_id"] == "leaf"]
    assert next_payout["amount"] == "15.00"
    with store.read() as conn:
        statuses = {c["status"] for c in accounts.commissions(conn, "leaf", clock.ms)}
    assert statuses == {"clawed_back", "in_payout"}


def test_rejected_pending_conversion_leaves_nothing(store, clock, programme):
    row = conversion(clock)
    programme.process([row])
    programme.process([step(row, clock, "rejected")])
    for aff in ("leaf", "mid", "root"):
        assert balance(store, aff) == {"currency": "USD"}


def test_failed_payout_returns_its_entries(store, clock, programme):
    programme.process([conversion(clock, status="approved")])
    clock.advance(days=8)
    [leaf] = [p for p in payouts.run(store).payouts if p["affiliate_id"] == "leaf"]
    payouts.set_status(store, leaf["payout_id"], "failed")
    assert balance(store, "leaf")["available"] == "10.00"
    with pytest.raises(payouts.PayoutError):
        payouts.set_status(store, leaf["payout_id"], "paid")
    [again] = [p for p in payouts.run(store).payouts if p["affiliate_id"] == "leaf"]
    assert again["amount"] == "10.00" and again["payout_id"] != leaf["payout_id"]


def test_minimum_payout_waits_for_enough(store, clock, programme):
    records.update_affiliate(store, "leaf", {"min_payout": "25.00"}, max_levels=3, min_payout="1")
    programme.process([conversion(clock, status="approved", amount="240.00")])
    clock.advance(days=8)
    assert "leaf" not in {p["affiliate_id"] for p in payouts.run(store).payouts}  # 24.00
    programme.process([conversion(clock, status="approved", amount="10.00")])
    clock.advance(days=8)
    [leaf] = [p for p in payouts.run(store).payouts if p["affiliate_id"] == "leaf"]
    assert (leaf["amount"], leaf["entries"]) == ("25.00", 2)


def test_max_levels_two_pays_one_referrer(store, clock):
    for aff, parent in (("root", None), ("mid", "root"), ("leaf", "mid")):
        records.create_affiliate(
            store, {"id": aff, "parent_id": parent}, max_levels=3, min_payout="1"
        )
    records.create_campaign(store, {"id": "c1", "advertiser_id": "shop", "plan": PLAN})
    Engine(store, max_levels=2).process([conversion(clock)])
    assert balance(store, "mid")["pending"] == "1.00"
    assert balance(store, "root") == {}


def test_chain_deeper_than_the_cap_or_a_cycle_is_refused(store, programme):
    with pytest.raises(records.Conflict):
        records.create_affiliate(
            store, {"id": "deeper", "parent_id": "leaf"}, max_levels=3, min_payout="1"
        )
    with pytest.raises(records.Conflict):
        records.update_affiliate(store, "root", {"parent_id": "leaf"}, max_levels=9, min_payout="1")
    records.create_affiliate(
        store, {"id": "side", "parent_id": "mid"}, max_levels=3, min_payout="1"
    )


def test_daily_cap_then_cap_reached(store, clock, programme):
    records.update_campaign(store, "c1", {"daily_cap": 2})
    rows = [conversion(clock) for _ in range(3)]
    mirror = programme.process(rows)
    assert balance(store, "leaf")["pending"] == "20.00"
    assert b'"reason":"cap_reached"' in mirror[-1]
    clock.advance(days=1)  # a new day: room again
    programme.process([conversion(clock)])
    assert balance(store, "leaf")["pending"] == "30.00"


def test_unknown_or_paused_affiliate_and_fraud_get_no_commission(store, clock, programme):
    records.update_affiliate(store, "mid", {"status": "paused"}, max_levels=3, min_payout="1")
    for row, reason in (
        (conversion(clock, affiliate="nobody"), b"unknown_affiliate"),
        (conversion(clock, affiliate="mid"), b"affiliate_paused"),
        (conversion(clock, flags=["click_flood"]), b"fraud"),
    ):
        mirror = programme.process([row])
        assert len(mirror) == 1 and reason in mirror[0]
        assert (b'"status":"rejected"' in mirror[0]) == (reason == b"fraud")
    assert balance(store, "leaf") == {}
    records.update_campaign(store, "c1", {"pay_flagged": True})
    programme.process([conversion(clock, flags=["click_flood"])])
    assert balance(store, "leaf")["pending"] == "10.00"


def test_plan_change_applies_to_conversions_approved_after_it(store, clock, programme):
    row = conversion(clock)
    programme.process([row])
    records.update_campaign(
        store, "c1", {"plan": {**PLAN, "events": {"sale": {"type": "percent", "percent": "20"}}}}
    )
    programme.process([step(row, clock, "approved")])
    with store.read() as conn:
        [commission] = accounts.commissions(conn, "leaf", clock.ms)
    assert (commission["amount"], commission["plan_version"]) == ("20.00", 2)


def test_advertiser_payout_only_where_the_campaign_allows_it(store, clock, programme):
    programme.process([conversion(clock, payout="3.00")])
    assert balance(store, "leaf")["pending"] == "10.00"  # the plan's 10%
    records.update_campaign(store, "c1", {"allow_advertiser_payout": True})
    programme.process([conversion(clock, payout="3.00")])
    assert balance(store, "leaf")["pending"] == "13.00"


def test_replayed_steps_create_nothing_twice(store, clock, programme):
    row = conversion(clock)
    approved = step(row, clock, "approved")
    first = programme.process([row, approved])
    again = programme.process([row, approved])
    assert first == again
    with store.read() as conn:
        entries = conn.execute(select(func.count()).select_from(T.entries)).scalar_one()
        steps = conn.execute(select(func.count()).select_from(T.conversion_steps)).scalar_one()
    assert (entries, steps) == (3 + 3 + 3, 2)  # accrue, unpend, approve per level
