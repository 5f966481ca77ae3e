"""A randomized run of 10,000 conversions through the engine and payout runs: the sum of
the ledger equals the sum of the balances, every commission is what its plan says, and
payouts hold exactly the paid-out entries."""

from __future__ import annotations

import random
from collections import defaultdict

from sqlalchemy import func, select

from tests.ledger.helpers import conversion, step
from tracker.ledger import accounts, payouts, records
from tracker.ledger import schema as T
from tracker.ledger.commissions import Engine

PLAN = {
    "events": {
        "sale": {"type": "percent", "percent": "7.5", "min": {"USD": "0.50"}},
        "lead": {"type": "fixed", "fixed": {"USD": "3.00", "EUR": "2.50", "JPY": "400"}},
        "*": {
            "type": "fixed_percent",
            "fixed": {"USD": "1", "EUR": "1", "JPY": "100"},
            "percent": "1",
        },
    },
    "levels": [{"percent": "10", "of": "commission"}, {"percent": "0.5", "of": "amount"}],
}


def test_ten_thousand_random_conversions_balance_to_the_ledger(store, clock):
    rng = random.Random(14)
    affiliates = [f"a{i}" for i in range(30)]
    for i, aff in enumerate(affiliates):
        parent = affiliates[i - 10] if i >= 10 else None
        records.create_affiliate(
            store,
            {"id": aff, "parent_id": parent, "min_payout": str(rng.choice([1, 20, 100]))},
            max_levels=3,
            min_payout="1",
        )
    records.create_campaign(
        store, {"id": "c1", "advertiser_id": "shop", "plan": PLAN, "hold_days": 5}
    )
    engine = Engine(store, max_levels=3)
    live: list[dict] = []
    failed_or_paid = 0
    for _ in range(40):  # 40 batches of 250 reports, a payout run now and then
        batch = []
        for _ in range(250):
            if live and rng.random() < 0.35:
                row = live.pop(rng.randrange(len(live)))
                nxt = {
                    "pending": rng.choice(["approved", "approved", "rejected"]),
                    "approved": "reversed",
                }
                batch.append(step(row, clock, nxt[row["status"]]))
                if batch[-1]["status"] == "approved":
                    live.append(batch[-1])
                continue
            currency, amount = rng.choice(
                [("USD", "19.99"), ("EUR", "250.00"), ("JPY", "1200"), ("USD", "0.01")]
            )
            row = conversion(
                clock,
                status=rng.choice(["pending", "pending", "approved"]),
                affiliate=rng.choice(affiliates + ["stranger"]),
                event=rng.choice(["sale", "lead", "signup"]),
                currency=currency,
                amount=amount,
            )
            batch.append(row)
            live.append(row)
        engine.process(batch)
        clock.advance(days=rng.random() * 2)
        if rng.random() < 0.3:
            for payout in payouts.run(store).payouts:
                status = rng.choice(["paid", "failed", "pending"])
                if status != "pending":
                    payouts.set_status(store, payout["payout_id"], status)
                    failed_or_paid += 1
    with store.read() as conn:
        ledger = accounts.ledger_total(conn)
        balances = accounts.balance_minor(conn, None, clock.ms)
        steps = conn.execute(select(func.count()).select_from(T.conversion_steps)).scalar_one()
        live_payouts = conn.execute(
            select(P.c.currency, func.sum(P.c.amount_minor))
            .where(P.c.status != "failed")
            .group_by(P.c.currency)
        ).all()
    assert steps == 10_000 and failed_or_paid > 0
    summed: dict[str, int] = defaultdict(int)
    held: dict[str, int] = defaultdict(int)
    for (_aff, currency), parts in balances.items():
        summed[currency] += sum(parts.values())
        held[currency] += parts["paid"] + parts["in_payout"]
    assert dict(summed) == ledger
    assert dict(held) == {cur: int(total) for cur, total in live_payouts if cur in held}
    assert set(ledger) == {"USD", "EUR", "JPY"}


P = T.payouts
