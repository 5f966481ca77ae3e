"""The money side's figures: commissions booked per second by the sink, and a payout run
over a ledger of 1,000,000 entries, on SQLite and on PostgreSQL.

    python -m loadtest.ledger_bench [--conversions 20000] [--entries 1000000]
                                    [--stores sqlite,postgres]

Sink: a fresh redis-server's events stream gets `--conversions` postbacks (one entry
each, as the edge appends them), then the same conversions approved; the real sink drains
it into a fresh chDB with the commission step on (3-level plan), and once more with it
off on a copy of the same stream: the difference is the commission step's own cost.

Payout run: `--entries` approved, available entries over 10,000 affiliates are written
straight into the ledger (the fill is not timed), then one payout run pays them all.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
import uuid
from pathlib import Path

import orjson
from sqlalchemy import insert

from tracker import config, migrations
from tracker import redis_keys as K
from tracker.clickhouse import ClickHouse
from tracker.ledger import payouts, records
from tracker.ledger import schema as T
from tracker.ledger.commissions import Engine
from tracker.ledger.store import Store
from tracker.sink.consumer import Sink
from tracker.testing import PostgresServer, RedisServer
from tracker.timefmt import format_ms, now_ms

PLAN = {
    "events": {"sale": {"type": "percent", "percent": "10"}},
    "levels": [{"percent": "10", "of": "commission"}, {"percent": "1", "of": "amount"}],
}


def programme(store: Store, affiliates: int, depth: int = 3) -> None:
    for i in range(affiliates):
        parent = f"a{i - affiliates // depth}" if i >= affiliates // depth else None
        records.create_affiliate(
            store,
            {"id": f"a{i}", "parent_id": parent, "min_payout": "1"},
            max_levels=3,
            min_payout="1",
        )
    records.create_campaign(store, {"id": "c1", "advertiser_id": "shop", "plan": PLAN})


def fill_stream(redis, conversions: int) -> None:
    pipe = redis.pipeline(transaction=False)
    ms = now_ms()
    ids = [str(uuid.uuid4()) for _ in range(conversions)]
    for status, previous in (("pending", ""), ("approved", "pending")):
        for i, cid in enumerate(ids):
            row = {
                "event_time": format_ms(ms + (status == "approved")),
                "conversion_id": cid,
                "advertiser_id": "shop",
                "txid": f"t{i}",
                "event": "sale",
                "status": status,
                "previous_status": previous,
                "amount": "49.90",
                "currency": "USD",
                "click_id": str(uuid.uuid4()),
                "visitor_id": str(uuid.uuid4()),
                "campaign_id": "c1",
                "affiliate_id": f"a{i % 300}",
                "attributed": 1,
                "source": "postback",
            }
            pipe.xadd(
                K.EVENTS_STREAM,
                {K.BATCH_ID_FIELD: str(uuid.uuid4()), "conversions": orjson.dumps(row)},
            )
            if i % 1000 == 999:
                pipe.execute()
    pipe.execute()


def drain(redis, ch, engine: Engine | None) -> float:
    sink = Sink(
        redis,
        ch,
        consumer="bench",
        read_entries=200,
        block_ms=10,
        reclaim_idle_ms=60_000,
        commissions=engine,
    )
    sink.ensure_group()
    started = time.perf_counter()
    while sink.step(block=False):
        pass
    return time.perf_counter() - started


def sink_figures(tmp: Path, conversions: int, dsn: str) -> dict:
    redis_server = RedisServer(tmp / "redis")
    redis_server.start()
    redis = redis_server.client()
    settings = config.load(env={"TRACKER_DATA_DIR": str(tmp / "data")})
    ch = ClickHouse(f"chdb://{tmp / 'ch'}", "tracker")
    try:
        migrations.apply(ch, settings)
        store = Store(dsn)
        programme(store, 300)
        engine = Engine(store, max_levels=3)
        results = {}
        for name, with_engine in (("without_commissions", None), ("with_commissions", engine)):
            redis.flushall()
            fill_stream(redis, conversions)
            results[name] = drain(redis, ch, with_engine)
        store.close()
    finally:
        ch.close()
        redis_server.stop()
    steps = 2 * conversions
    step_cost = results["with_commissions"] - results["without_commissions"]
    return {
        "conversion_steps": steps,
        "sink_seconds_without_commissions": round(results["without_commissions"], 2),
        "sink_seconds_with_commissions": round(results["with_commissions"], 2),
        "steps_per_s_through_the_sink": round(steps / results["with_commissions"]),
        "commission_steps_per_s_of_the_step_alone": round(steps / step_cost)
        if step_cost > 0
        else None,
    }


def fill_ledger(store: Store, entries: int, affiliates: int = 10_000) -> None:
    now = store.now_ms()
    with store.begin() as conn:
        conn.execute(
            insert(T.affiliates),
            [
                {
                    "id": f"p{i}",
                    "name": f"p{i}",
                    "status": "active",
                    "parent_id": None,
                    "currency": "USD",
                    "min_payout_minor": 100,
                    "created_at": now,
                    "updated_at": now,
                }
                for i in range(affiliates)
            ],
        )
    chunk = 50_000
    for start in range(0, entries, chunk):
        rows = [
            {
                "entry_id": f"e{n}:1:p{n % affiliates}:approve",
                "commission_id": f"e{n}:1:p{n % affiliates}",
                "conversion_id": f"e{n}",
                "campaign_id": "c1",
                "affiliate_id": f"p{n % affiliates}",
                "level": 1,
                "kind": "approve",
                "state": "approved",
                "amount_minor": 250 + n % 1000,
                "currency": "USD",
                "available_at": now - 86_400_000,
                "plan_version": 1,
                "created_at": now - 40 * 86_400_000,
            }
            for n in range(start, min(start + chunk, entries))
        ]
        with store.begin() as conn:
            conn.execute(insert(T.entries), rows)


def payout_figures(dsn: str, entries: int, export: Path) -> dict:
    store = Store(dsn)
    try:
        started = time.perf_counter()
        fill_ledger(store, entries)
        filled = time.perf_counter() - started
        started = time.perf_counter()
        run = payouts.run(store, export_dir=export)
        seconds = time.perf_counter() - started
        again = time.perf_counter()
        rerun = payouts.run(store)
        rerun_seconds = time.perf_counter() - again
    finally:
        store.close()
    return {
        "entries": entries,
        "fill_seconds": round(filled, 1),
        "payouts": len(run.payouts),
        "run_seconds": round(seconds, 2),
        "entries_per_s": round(entries / seconds),
        "rerun_payouts": len(rerun.payouts),
        "rerun_seconds": round(rerun_seconds, 2),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--conversions", type=int, default=20_000)
    p.add_argument("--entries", type=int, default=1_000_000)
    p.add_argument("--stores", default="sqlite,postgres")
    args = p.parse_args()
    out: dict = {}
    pg = PostgresServer() if "postgres" in args.stores else None
    if pg:
        pg.start()
    tmp = Path(tempfile.mkdtemp(prefix="ledger-bench-"))
    try:
        for store_name in args.stores.split(","):

            def dsn(name: str, store_name: str = store_name) -> str:
                if store_name == "sqlite":
                    return f"sqlite:///{tmp / (name + '.sqlite3')}"
                assert pg is not None
                return pg.create_database(name)

            if args.conversions:
                out[f"sink_{store_name}"] = sink_figures(
                    tmp / f"sink-{store_name}", args.conversions, dsn("sinkbench")
                )
                print(json.dumps({f"sink_{store_name}": out[f"sink_{store_name}"]}), flush=True)
            if args.entries:
                out[f"payout_run_{store_name}"] = payout_figures(
                    dsn("payoutbench"), args.entries, tmp / "csv"
                )
                print(
                    json.dumps({f"payout_run_{store_name}": out[f"payout_run_{store_name}"]}),
                    flush=True,
                )
    finally:
        if pg:
            pg.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
