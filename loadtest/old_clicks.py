"""Postbacks for clicks older than Redis's hot window, at a fixed rate while clicks flow.

    python -m loadtest.old_clicks [--rate 100] [--click-rate 500] [--seconds 30]
                                  [--old-clicks 200000] [--out FILE]

Fills a fresh chDB folder with `--old-clicks` click rows spread over the last 30 days
(none in the last 48 hours, so none is in Redis), then starts the service (Redis, one
sink, one edge) on it. For `--seconds` it sends `--click-rate` clicks/s through the
tracking link and `--rate` postbacks/s, half naming an old click (the reply says
`"attribution": "deferred"`; the sink looks the click up in ClickHouse) and half a click
made during the run (attributed online). Each postback's reply time is measured from the
client (p50/p99 by kind), then it waits until every conversion is stored and checks that
each old one was attributed to its click by the sink, and reports how long after the
reply the attributed row was queryable (p50/p99).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import orjson

from tracker import config, migrations
from tracker.clickhouse import ClickHouse
from tracker.testing import RedisServer, Service, click_id_at, wait_until
from tracker.timefmt import format_ms

ADV_TOKEN = "old-clicks-token-0123456789"
DAY = 86_400_000


def fill_clickhouse(folder: Path, count: int, seed: int) -> list[str]:
    """`count` old clicks (2 to 30 days old) straight into the service's chDB folder."""
    settings = config.load(env={"TRACKER_DATA_DIR": str(folder / "data")})
    ch = ClickHouse(settings.clickhouse_dsn, settings.clickhouse.database)
    rng = random.Random(seed)
    now = int(time.time() * 1000)
    ids = []
    try:
        migrations.apply(ch, settings)
        for start in range(0, count, 100_000):
            rows = []
            for _ in range(min(100_000, count - start)):
                ms = now - rng.randint(2 * DAY + 3_600_000, 30 * DAY - 3_600_000)
                click_id = click_id_at(ms)
                ids.append(click_id)
                rows.append(
                    {
                        "event_time": format_ms(ms),
                        "click_id": click_id,
                        "visitor_id": click_id_at(ms - rng.randint(0, DAY)),
                        "link_slug": "old",
                        "campaign_id": f"camp-{rng.randrange(50)}",
                        "affiliate_id": f"aff-{rng.randrange(20)}",
                        "advertiser_id": "shop",
                        "user_agent": "Mozilla/5.0",
                        "request_url": "/c/old",
                    }
                )
            ch.insert_jsonl("clicks", b"\n".join(map(orjson.dumps, rows)), f"old-{start}")
            print(f"clickhouse: {start + len(rows):,} old clicks", file=sys.stderr, flush=True)
    finally:
        ch.close()
    return ids


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000, 1)


async def run(svc: Service, old: list[str], args) -> dict:
    rng = random.Random(args.seed)
    fresh: list[str] = []
    timings: dict[str, list[float]] = {"deferred": [], "online": []}
    replied: dict[str, float] = {}  # txid of an old-click postback -> reply time
    expected: dict[str, str] = {}  # txid -> the old click it named
    answers: dict[str, int] = {}
    accepted: list[str] = []
    conn = aiohttp.TCPConnector(limit=256)
    async with aiohttp.ClientSession(connector=conn) as session:

        async def click() -> None:
            async with session.get(f"{svc.base_url}/c/now", allow_redirects=False) as r:
                fresh.append(r.headers["Location"].rsplit("click_id=", 1)[1])

        async def postback(n: int) -> None:
            kind = "online" if n % 2 and fresh else "deferred"
            click_id = rng.choice(fresh[-2000:]) if kind == "online" else rng.choice(old)
            txid = f"t{n}"
            query = {"advertiser": "shop", "token": ADV_TOKEN, "click_id": click_id, "txid": txid}
            started = time.perf_counter()
            async with session.get(f"{svc.base_url}/postback", params=query) as r:
                body = await r.json()
            timings[kind].append(time.perf_counter() - started)
            attribution = body.get("attribution") or body.get("reason") or "?"
            answers[attribution] = answers.get(attribution, 0) + 1
            if body["status"] != "accepted":  # e.g. 503 when the edge ran out of connections
                return
            accepted.append(txid)
            if kind == "deferred":
                replied[txid] = time.time()
                expected[txid] = click_id

        async def paced(rate: float, make) -> None:
            tasks, start, n = [], time.perf_counter(), 0
            while time.perf_counter() - start < args.seconds:
                due = start + n / rate
                delay = due - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                tasks.append(asyncio.create_task(make(n)))
                n += 1
            await asyncio.gather(*tasks)

        await asyncio.gather(
            paced(args.click_rate, lambda n: click()),
            paced(args.rate, postback),
        )
    total = sum(len(v) for v in timings.values())
    wait_until(lambda: svc.count("conversions") >= len(accepted), 600, "every conversion stored")
    stored = {
        row["txid"]: row
        for row in svc.sql(
            "SELECT txid, attributed, toString(click_id) AS click_id, "
            "toUnixTimestamp64Milli(inserted_at) AS at FROM tracker.conversions"
        )
    }
    wrong = [
        t for t, c in expected.items() if (stored[t]["attributed"], stored[t]["click_id"]) != (1, c)
    ]
    lag = [stored[t]["at"] / 1000 - replied[t] for t in expected]
    return {
        "postbacks": total,
        "accepted": len(accepted),
        "clicks": len(fresh),
        "replies_by_attribution": answers,
        "reply_ms": {
            kind: {"p50": pct(v, 0.5), "p99": pct(v, 0.99), "n": len(v)}
            for kind, v in timings.items()
            if v
        },
        "old_clicks_attributed_by_the_sink": len(expected) - len(wrong),
        "old_clicks_wrong": len(wrong),
        "deferred_reply_to_stored_row_ms": {"p50": pct(lag, 0.5), "p99": pct(lag, 0.99)},
        "mean_reply_ms": round(statistics.fmean(x for v in timings.values() for x in v) * 1000, 2),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rate", type=float, default=100, help="postbacks per second")
    p.add_argument("--click-rate", type=float, default=500, help="clicks per second")
    p.add_argument("--seconds", type=float, default=30)
    p.add_argument("--old-clicks", type=int, default=200_000)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--out", type=Path)
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="old-clicks-") as tmp:
        folder = Path(tmp)
        old = fill_clickhouse(folder, args.old_clicks, args.seed)
        redis = RedisServer(folder / "redis")
        redis.start()
        svc = Service(folder, redis, TRACKER_WORKERS="1")
        try:
            svc.start_sink()
            svc.start_edges(1)
            svc.wait_ready()
            status, body = svc.api("POST", "/api/advertisers", {"id": "shop", "token": ADV_TOKEN})
            assert status == 201, body
            svc.add_link("now", campaign_id="camp-now", advertiser_id="shop")
            result = asyncio.run(run(svc, old, args))
        except BaseException:
            print(svc.log_text()[-4000:], file=sys.stderr)
            raise
        finally:
            svc.stop_all()
            redis.stop()
    summary = {
        "measured_on": {
            "cpus": os.cpu_count(),
            "load_average": os.getloadavg(),
            "command": "python -m loadtest.old_clicks " + " ".join(sys.argv[1:]),
        },
        "settings": {
            "postbacks_per_second": args.rate,
            "clicks_per_second": args.click_rate,
            "seconds": args.seconds,
            "old_clicks_in_clickhouse": args.old_clicks,
        },
        **result,
    }
    text = json.dumps(summary, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
