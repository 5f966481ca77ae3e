"""Report API latency at scale: 10,000,000 clicks and 300,000 conversions over 30 days.

    python -m loadtest.report_bench [--clicks 10000000] [--conversions 300000]
                                    [--requests 50] [--folder DIR]

1. A subprocess fills a fresh chDB folder with SQL: ClickHouse makes the rows itself
   (numbers(), hashes), a million per INSERT, into the raw tables the sink writes, so the
   materialized views fill the rollups exactly as they do in service. 2,000 links over
   50 campaigns, 400 affiliates and 10 advertisers; 3,000,000 visitors; 20 countries and
   3 device types (skewed); 2% bot and 1% flagged clicks; conversions 80% approved, with
   their commissions (revenue and payout).
2. The service starts on that folder (`tracker serve`, its own redis-server).
3. Two 30-day reports through `GET /api/reports`, `--requests` times each, one at a time
   after 3 warm-up requests: by day x campaign (clicks, unique clicks, conversions, CVR,
   amount, revenue, payout, EPC) and by affiliate x country (clicks, unique clicks,
   conversions, CVR, amount). Prints p50 / p99 and the rollups' sizes beside the raw
   tables' (system.parts).

The figures depend on the machine: say how many cores it had and what else ran.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiohttp

from tracker.testing import ROOT, TOKEN, RedisServer, Service

DAY_MS = 86_400_000
COUNTRIES = "['US','US','US','US','DE','DE','GB','GB','FR','IN','BR','CA','ES','IT','NL','PL'," + (
    "'JP','AU','MX','SE']"
)
DEVICES = "['desktop','desktop','mobile','mobile','mobile','tablet']"
CHUNK = 1_000_000


def fill_sql(db: str, clicks: int, conversions: int, start_ms: int) -> list[str]:
    """The INSERTs that make the data set (the rollups fill through their views)."""
    span = 30 * DAY_MS

    def link(n: str) -> str:
        return f"intHash32({n}) % 2000"

    def visitor(n: str) -> str:
        return (
            f"toUUID(concat('00000000-0000-4000-8000-', leftPad(toString({n} % 3000000), 12, '0')))"
        )

    out = []
    for offset in range(0, clicks, CHUNK):
        size = min(CHUNK, clicks - offset)
        out.append(
            f"""INSERT INTO {db}.clicks (event_time, click_id, visitor_id, link_slug, campaign_id,
    affiliate_id, advertiser_id, country, device_type, is_bot, bot_reason, fraud_flags)
SELECT fromUnixTimestamp64Milli(toInt64({start_ms} + intDiv(number * {span}, {clicks})), 'UTC'),
       generateUUIDv4(number), {visitor("number")},
       concat('l', toString(l)), concat('c', toString(l % 50)), concat('a', toString(l % 400)),
       concat('v', toString(l % 10)),
       {COUNTRIES}[intHash32(number * 7) % 20 + 1], {DEVICES}[intHash32(number * 11) % 6 + 1],
       intHash32(number * 13) % 50 = 0, if(intHash32(number * 13) % 50 = 0, 'user_agent', ''),
       if(intHash32(number * 17) % 100 = 0, ['ip_rate'], [])
FROM (SELECT number, {link("number")} AS l FROM numbers({offset}, {size}))"""
        )
    conv = f"""SELECT number, {link("number * 31")} AS l,
           fromUnixTimestamp64Milli(toInt64({start_ms} + intDiv(number * {span}, {conversions})),
                                    'UTC') AS t,
           if(number % 5 = 0, 'pending', 'approved') AS st,
           toDecimal64(10 + number % 200, 3) AS amount
    FROM numbers({conversions})"""
    out.append(
        f"""INSERT INTO {db}.conversions (event_time, conversion_id, advertiser_id, txid, status,
    amount, currency, visitor_id, link_slug, campaign_id, affiliate_id, attributed, country,
    device_type)
SELECT t, generateUUIDv4(number), concat('v', toString(l % 10)), toString(number), st, amount,
       'USD', {visitor("number * 7")}, concat('l', toString(l)), concat('c', toString(l % 50)),
       concat('a', toString(l % 400)), 1, {COUNTRIES}[intHash32(number * 7) % 20 + 1],
       {DEVICES}[intHash32(number * 11) % 6 + 1]
FROM ({conv})"""
    )
    out.append(
        f"""INSERT INTO {db}.commissions (event_time, conversion_id, commission_id, advertiser_id,
    campaign_id, affiliate_id, level, step, status, payout, revenue, currency)
SELECT t, toUUID(concat('00000000-0000-4000-9000-', leftPad(toString(number), 12, '0'))),
       concat(toString(number), ':', toString(level)), concat('v', toString(l % 10)),
       concat('c', toString(l % 50)), concat('a', toString(l % 400)), level, st, st,
       if(level = 1, amount / 10, 0), if(level = 0, amount / 5, 0), 'USD'
FROM ({conv}) ARRAY JOIN [0, 1] AS level"""
    )
    return out


FILL_SCRIPT = """
import json, os, sys, time
from tracker import config, migrations
from tracker.clickhouse import ClickHouse
job = json.load(sys.stdin)
settings = config.load(env={"TRACKER_DATA_DIR": job["data"]})
ch = ClickHouse(settings.clickhouse_dsn, settings.clickhouse.database)
migrations.apply(ch, settings)
for sql in job["sql"]:
    started = time.monotonic()
    ch.command(sql)
    print(f"  {sql.split()[2]}: {time.monotonic() - started:.1f} s", flush=True)
ch.close()
os._exit(0)
"""


def fill(folder: Path, clicks: int, conversions: int, start_ms: int) -> float:
    data = folder / "svc" / "data"
    data.mkdir(parents=True, exist_ok=True)
    job = {"data": str(data), "sql": fill_sql("tracker", clicks, conversions, start_ms)}
    started = time.monotonic()
    subprocess.run(
        [sys.executable, "-c", FILL_SCRIPT],
        input=json.dumps(job),
        text=True,
        check=True,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    return time.monotonic() - started


async def timed(session: aiohttp.ClientSession, url: str, runs: int) -> tuple[list[float], dict]:
    headers = {"Authorization": f"Bearer {TOKEN}"}
    body: dict = {}
    for _ in range(3):  # warm-up: caches, the first query's parsing
        async with session.get(url, headers=headers) as r:
            body = await r.json()
            assert r.status == 200, body
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        async with session.get(url, headers=headers) as r:
            body = await r.json()
            assert r.status == 200, body
        times.append((time.perf_counter() - started) * 1000)
    return times, body


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


async def measure(service: Service, start: datetime, runs: int) -> list[dict]:
    frm, to = start.date(), (start + timedelta(days=30)).date()
    money = "clicks,conversions,cvr,amount,revenue,payout,epc"
    reports = {
        "day x campaign": f"metrics={money}&group_by=day,campaign",
        "affiliate x country": "metrics=clicks,conversions,cvr,amount&group_by=affiliate,country",
        # distinct visitors: merged from the rollups' uniq states, and a totals query
        "day x campaign + unique": f"metrics={money},unique_clicks&group_by=day,campaign",
        "affiliate x country + unique": "metrics=clicks,unique_clicks,conversions,cvr,amount"
        "&group_by=affiliate,country",
    }
    out = []
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as session:
        for name, query in reports.items():
            url = f"{service.base_url}/api/reports?{query}&from={frm}&to={to}&limit=10000"
            times, body = await timed(session, url, runs)
            out.append(
                {
                    "report": name,
                    "rows": body["row_count"],
                    "sources": body["sources"],
                    "clicks": body["totals"]["clicks"],
                    "p50_ms": round(statistics.median(times), 1),
                    "p99_ms": round(percentile(times, 0.99), 1),
                    "max_ms": round(max(times), 1),
                }
            )
    return out


def sizes(service: Service) -> list[dict]:
    return service.sql(
        "SELECT table, sum(rows) AS rows, count() AS parts, "
        "round(sum(bytes_on_disk) / 1048576, 1) AS mib FROM system.parts "
        "WHERE database = 'tracker' AND active GROUP BY table ORDER BY table"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clicks", type=int, default=10_000_000)
    parser.add_argument("--conversions", type=int, default=300_000)
    parser.add_argument("--requests", type=int, default=50)
    parser.add_argument("--folder", help="work folder (default: a temporary one)")
    parser.add_argument(
        "--reuse", action="store_true", help="the folder holds a filled data set: measure only"
    )
    args = parser.parse_args()
    folder = Path(args.folder or tempfile.mkdtemp(prefix="report-bench-"))
    start = (datetime.now(UTC) - timedelta(days=30)).replace(
        hour=0, minute=0, second=0, microsecond=0
    )
    stamp = folder / "start.txt"
    if args.reuse and stamp.exists():
        start = datetime.fromisoformat(stamp.read_text().strip())
    else:
        print(f"filling {args.clicks:,} clicks and {args.conversions:,} conversions in {folder}")
        took = fill(folder, args.clicks, args.conversions, int(start.timestamp() * 1000))
        stamp.write_text(start.isoformat())
        print(f"filled in {took:.0f} s")
    redis_server = RedisServer(folder / "redis")
    redis_server.start()
    service = Service(folder / "svc", redis_server, TRACKER_WORKERS="1")
    try:
        service.serve()
        results = asyncio.run(measure(service, start, args.requests))
        table_sizes = sizes(service)
    finally:
        service.stop_all()
        redis_server.stop()
    print(f"\n{args.requests} requests each, one at a time, {os.cpu_count()} cores seen:")
    for r in results:
        print(
            f"  {r['report']:<29} p50 {r['p50_ms']:>7} ms  p99 {r['p99_ms']:>7} ms  "
            f"({r['rows']} rows, clicks {r['clicks']:,}, from {r['sources']})"
        )
    print("\ntable sizes:")
    for row in table_sizes:
        print(
            f"  {row['table']:<22} {int(row['rows']):>11,} rows {row['parts']:>4} parts "
            f"{row['mib']:>8} MiB"
        )
    print(json.dumps({"results": results, "sizes": table_sizes}, default=str))


if __name__ == "__main__":
    main()
