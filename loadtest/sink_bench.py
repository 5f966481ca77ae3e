"""Sink throughput: stream -> (enrichment) -> ClickHouse, rows per second.

    python -m loadtest.sink_bench [--rows 1000000] [--enriched-rows 200000] [--python-gc]
        [--warm-rows 100000] [--geo FILE]

Fills the events stream of a fresh redis-server with realistic clicks, written as the edge
writes them (batches of 500 JSON rows, LZ4-compressed), then drains it with the real sink
into a fresh chDB folder: once with enrichment off (the insert path alone), once as the service runs
it (all enrichment steps, after an unmeasured warm-up of the same mix, so the user-agent
and address caches are those of a running sink). Prints rows/s, the sink's CPU per row
(all its threads, chDB's included; chDB's background merges also on their own) and rows
per CPU-second, the Redis CPU the sink caused per row (reads, acknowledgements, and the
enrichment's counters and marks) and its time per row in each command (INFO
commandstats), each step's share of the sink's time and its own CPU per row, and what
enriching adds to the sink's CPU per row, merges left out (they merge whatever is stored,
whenever chDB picks). The insert path gets enough rows for ten full reads, so the rate is
the steady one (reading ahead overlaps every read but the first)."""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import tempfile
import time
from pathlib import Path

import orjson

from geo import open_geo
from loadtest.cpu import process_cpu, redis_by_command, threads_cpu
from tracker import config, migrations
from tracker import redis_keys as K
from tracker.clickhouse import ClickHouse
from tracker.ids import uuid7
from tracker.links import Link
from tracker.records import RequestMeta, click_row
from tracker.redis_connection import sync_client
from tracker.sink import gc_tuning
from tracker.sink.attributor import Attributor
from tracker.sink.consumer import Sink
from tracker.sink.enrich import steps
from tracker.sink.enrich.pipeline import Pipeline
from tracker.stream_payload import pack
from tracker.testing import RedisServer
from tracker.timefmt import now_ms

AGENTS = [
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/131.0.0.0 Safari/537.36",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like "
    "Gecko) Version/17.5 Mobile/15E148 Safari/604.1",
    "Mozilla/5.0 (Linux; Android 14; SM-S918B) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/131.0.6778.81 Mobile Safari/537.36",
    "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)",
    "curl/8.5.0",
]


def fill(redis, rows: int, batch: int = 500, seed: int = 1) -> None:
    rng = random.Random(seed)
    links = [Link(f"l{i}", "https://x.example/", f"c{i % 7}", f"a{i % 13}") for i in range(50)]
    pipe = redis.pipeline(transaction=False)
    ms = now_ms()
    for start in range(0, rows, batch):
        lines = []
        for _ in range(min(batch, rows - start)):
            meta = RequestMeta(
                ip=f"203.0.{rng.randint(0, 255)}.{rng.randint(1, 254)}",
                user_agent=rng.choice(AGENTS) + f" build/{rng.randint(1, 2000)}",
                referer="https://news.example/a",
                accept_language="en",
                url="/c/l1?sub1=x",
                method="GET",
            )
            lines.append(
                orjson.dumps(
                    click_row(
                        ms=ms,
                        click_id=uuid7(),
                        visitor_id=uuid7(),
                        new_visitor=True,
                        link=rng.choice(links),
                        params={"sub1": str(rng.randint(1, 10**6))},
                        meta=meta,
                        destination="https://x.example/?c=1",
                    )
                )
            )
        payload = pack(b"\n".join(lines))  # compressed, as the edge's writer sends them
        pipe.xadd(K.EVENTS_STREAM, {K.BATCH_ID_FIELD: uuid7(), "clicks": payload})
        if len(pipe) >= 50:
            pipe.execute()
    pipe.execute()


# chDB's background merges (its "MergeMutate" threads) combine the parts of everything
# stored so far, whenever it picks: the insert-only run's million rows were often merged
# during the enriched run (10-11 µs per enriched row, and 0 in another run), so they are
# counted apart and left out of what enriching adds.
MERGE_THREADS = "MergeMutate"


def drain(settings, redis, redis_pid: int, ch, pipeline: Pipeline | None) -> dict:
    """Read the whole stream through a sink; its CPU and Redis's (forks included) per row."""
    if pipeline:
        pipeline.stats.clear()
    sink = Sink(
        redis,
        ch,
        consumer="bench",
        read_entries=settings.sink.read_entries,
        block_ms=10,
        reclaim_idle_ms=60_000,
        pipeline=pipeline,
        attributor=Attributor(redis, ["linear"], 86_400_000, 86_400_000),
    )
    sink.ensure_group()
    redis.config_resetstat()  # INFO commandstats from here
    redis_cpu = process_cpu(redis_pid)
    sink_cpu = time.process_time()  # every thread of this process: the sink's and chDB's
    merges = threads_cpu(os.getpid(), MERGE_THREADS)
    main_cpu = time.thread_time()  # the sink's loop: reading results, enriching, handing over
    started = time.perf_counter()
    while sink.step(block=False):
        pass
    seconds = time.perf_counter() - started
    sink_cpu = time.process_time() - sink_cpu
    merges = threads_cpu(os.getpid(), MERGE_THREADS) - merges
    main_cpu = time.thread_time() - main_cpu
    redis_cpu = process_cpu(redis_pid) - redis_cpu
    rows = sink.rows_inserted["clicks"]
    result = {
        "rows": rows,
        "seconds": round(seconds, 2),
        "rows_per_s": round(rows / seconds),
        "sink_cpu_us_per_row": round(sink_cpu / rows * 1e6, 1),
        "rows_per_sink_cpu_s": round(rows / sink_cpu),
        "sink_loop_cpu_us_per_row": round(main_cpu / rows * 1e6, 1),
        "chdb_merges_cpu_us_per_row": round(merges / rows * 1e6, 1),
        "sink_cpu_us_per_row_but_merges": round((sink_cpu - merges) / rows * 1e6, 1),
        "redis_cpu_us_per_row": round(redis_cpu / rows * 1e6, 1),
        "redis_us_per_row_by_command": redis_by_command(redis, rows),
    }
    if pipeline:
        result["steps_share_of_sink_time"] = {
            name: f"{100 * stat.seconds / seconds:.1f}%" for name, stat in pipeline.stats.items()
        }
        # the steps' own CPU (the sink's loop thread; Redis's time in their calls is not in it)
        result["steps_cpu_us_per_row"] = {
            name: round(stat.cpu_seconds / rows * 1e6, 2) for name, stat in pipeline.stats.items()
        }
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rows", type=int, default=1_000_000, help="clicks for the insert path")
    p.add_argument(
        "--enriched-rows", type=int, default=200_000, help="clicks for the enriched path"
    )
    p.add_argument(
        "--geo",
        action="append",
        default=[],
        help=".mmdb file for the geo step (e.g. from `python -m geo.fetch DIR`)",
    )
    p.add_argument(
        "--warm-rows",
        type=int,
        default=100_000,
        help="clicks of the same mix enriched first, unmeasured (0: measure a cold sink)",
    )
    p.add_argument(
        "--python-gc",
        action="store_true",
        help="keep Python's garbage collector at its defaults (the sink process tunes it)",
    )
    args = p.parse_args()
    if not args.python_gc:
        gc_tuning.tune()  # as the sink process runs
    work = Path(tempfile.mkdtemp(prefix="sink-bench-"))
    redis_server = RedisServer(work / "redis")
    redis_server.start()
    try:
        redis = sync_client(redis_server.url)  # as the sink process connects
        settings = config.load(
            env={
                "TRACKER_DATA_DIR": str(work / "data"),
                "TRACKER_ADMIN_TOKEN": "bench-token-0123456789",
            }
        )
        ch = ClickHouse(f"chdb://{work / 'chdb'}", "tracker")
        migrations.apply(ch, settings)
        results = {}
        redis.flushall()
        fill(redis, args.rows)
        results["insert_only"] = drain(settings, redis, redis_server.proc.pid, ch, None)
        print("insert_only", json.dumps(results["insert_only"]), flush=True)
        pipeline = steps.build(settings, redis, open_geo(args.geo))
        if args.warm_rows:  # a running sink's caches (user agents, addresses) are warm
            redis.flushall()
            fill(redis, args.warm_rows, seed=2)
            drain(settings, redis, redis_server.proc.pid, ch, pipeline)
        redis.flushall()
        fill(redis, args.enriched_rows)
        results["enriched"] = drain(settings, redis, redis_server.proc.pid, ch, pipeline)
        results["enriched"]["after_warm_up_rows"] = args.warm_rows
        print("enriched", json.dumps(results["enriched"]), flush=True)
        insert_us = results["insert_only"]["sink_cpu_us_per_row_but_merges"]
        enrich_us = results["enriched"]["sink_cpu_us_per_row_but_merges"] - insert_us
        results["enrichment_cpu_us_per_row"] = round(enrich_us, 1)  # what enriching adds
        results["enrichment_rows_per_cpu_s"] = round(1e6 / enrich_us) if enrich_us > 0 else None
        count = ch.query("SELECT count() FROM tracker.clicks")[1][0][0]
        results["rows_in_clickhouse"] = count  # with the warm-up's
        print(json.dumps(results, indent=2))
        ch.close()
    finally:
        redis_server.stop()
        shutil.rmtree(work, ignore_errors=True)  # a run leaves 1.1 GB of chDB and AOF


if __name__ == "__main__":
    main()
