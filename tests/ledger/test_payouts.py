"""Payout runs on both stores: two runs at once pay each affiliate once; cutoffs."""

from __future__ import annotations

import threading

from sqlalchemy import func, select

from tests.ledger.helpers import conversion
from tracker.ledger import accounts, payouts, records
from tracker.ledger import schema as T
from tracker.ledger.commissions import Engine
from tracker.ledger.store import Store

PLAN = {"events": {"*": {"type": "fixed", "fixed": {"USD": "2.50", "EUR": "2.00"}}}}


def setup_programme(store, affiliates: int) -> Engine:
    for i in range(affiliates):
        records.create_affiliate(
            store, {"id": f"a{i}", "min_payout": "1.00"}, max_levels=2, min_payout="1"
        )
    records.create_campaign(
        store, {"id": "c1", "advertiser_id": "shop", "plan": PLAN, "hold_days": 1}
    )
    return Engine(store)


def test_two_concurrent_runs_make_one_payout_per_affiliate_and_currency(store_dsn, store, clock):
    engine = setup_programme(store, 40)
    rows = [
        conversion(clock, status="approved", affiliate=f"a{i % 40}", currency=cur, amount="10")
        for i in range(400)
        for cur in ("USD", "EUR")
    ]
    engine.process(rows)
    clock.advance(days=2)
    results: list[payouts.Run] = []
    barrier = threading.Barrier(2)

    def one_run():
        own = Store(store_dsn, migrate=False, clock=clock)
        barrier.wait()
        results.append(payouts.run(own))
        own.close()

    threads = [threading.Thread(target=one_run) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    made = [p for run in results for p in run.payouts]
    assert len(made) == 80  # 40 affiliates x 2 currencies, whichever run made each
    assert len({(p["affiliate_id"], p["currency"]) for p in made}) == 80
    assert {p["amount"] for p in made} == {"25.00", "20.00"}
    with store.read() as conn:
        items = conn.execute(select(func.count()).select_from(T.payout_items)).scalar_one()
        held = conn.execute(
            select(func.count(func.distinct(T.payout_items.c.entry_seq)))
        ).scalar_one()
    assert items == held == 800  # no entry in two payouts
    assert payouts.run(store).payouts == []  # and a third run finds nothing


def test_cutoff_takes_entries_available_up_to_it(store, clock):
    engine = setup_programme(store, 1)
    engine.process([conversion(clock, status="approved", affiliate="a0")])
    early = clock.ms
    clock.advance(days=3)
    engine.process([conversion(clock, status="approved", affiliate="a0")])
    clock.advance(days=3)
    first = payouts.run(store, cutoff=early + 86_400_000)  # only the first is available by then
    assert [(p["amount"], p["entries"]) for p in first.payouts] == [("2.50", 1)]
    second = payouts.run(store)
    assert [(p["amount"], p["entries"]) for p in second.payouts] == [("2.50", 1)]
    with store.read() as conn:
        listed = payouts.listing(conn, affiliate_id="a0")
        [parts] = accounts.balance_minor(conn, "a0", clock.ms).values()
    assert len(listed) == 2 and parts["in_payout"] == 500
