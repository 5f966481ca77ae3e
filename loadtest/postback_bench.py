"""Server-to-server postbacks at saturation, on this machine.

    python -m loadtest.postback_bench [--duration 8] [--rounds 3] [--connections 32]
                                      [--processes 2] [--clicks 5000]

Starts on loopback the full tracker (N edge processes, its own redis-server with AOF, the
sink, chDB) as shipped behind a proxy (`bench.product_settings`), creates an advertiser and
links of it, makes real clicks (so every postback is attributed to a click of the hot
window), then drives `GET /postback` with wrk (`postbacks.lua`: the advertiser's token, a
unique txid per request, click ids of those clicks, amounts in several currencies).
Prints per round: postbacks/s, p50/p99, CPU µs per postback of each process, and Redis
commands per postback (INFO commandstats); then Redis round trips and top-level commands of
one postback (MONITOR over sequential postbacks); and after the sink drained, that every
postback answered 200 is a row of `tracker.conversions`, attributed, and none twice.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import statistics
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request
from pathlib import Path

import aiohttp
import redis

from loadtest import wrk_output
from loadtest.bench import product_settings, tracker_pids
from loadtest.cpu import cpu_seconds
from tracker.config import TrackingSettings
from tracker.testing import RedisServer, Service

HERE = Path(__file__).resolve().parent
WRK_SCRIPT = HERE / "postbacks.lua"
ADVERTISER = "shop"
LINKS = 20


async def make_clicks(base_url: str, count: int, concurrency: int = 32) -> list[str]:
    """`count` real clicks through the edges; their ids (from the redirect)."""
    ids: list[str] = []
    todo = iter(range(count))

    async def client(session: aiohttp.ClientSession) -> None:
        for i in todo:
            url = f"{base_url}/c/pb-{i % LINKS + 1}?sub1=s{i}"
            headers = {"X-Forwarded-For": f"10.{i % 200}.{i // 200 % 250}.{i % 250 + 1}"}
            async with session.get(url, allow_redirects=False, headers=headers) as r:
                query = urllib.parse.urlparse(r.headers["Location"]).query
                ids.append(urllib.parse.parse_qs(query)["c"][0])

    async with aiohttp.ClientSession() as session:
        await asyncio.gather(*(client(session) for _ in range(concurrency)))
    return ids


def wrk(url: str, args, ids_file: Path, token: str, tag: str) -> dict:
    run = wrk_output.run(
        url,
        WRK_SCRIPT,
        duration=args.duration,
        connections=args.connections,
        threads=args.threads,
        script_args=(str(ids_file), ADVERTISER, token, tag),
    )
    return {
        **{k: run[k] for k in ("rps", "requests", "errors", "p50_ms", "p99_ms")},
        "ok": run["requests"] - run["refused"],
    }


def command_calls(client: redis.Redis) -> dict[str, int]:
    return {
        name.removeprefix("cmdstat_"): stats["calls"]
        for name, stats in client.info("commandstats").items()
    }


def round_trips(client: redis.Redis, base_url: str, token: str, ids: list[str], n: int) -> dict:
    """Send `n` postbacks one after another while MONITOR watches Redis; the edges'
    top-level commands and round trips per postback. The edges' connections are those
    that named a probe transaction; commands of one connection less than 100 µs apart are
    one round trip (a pipeline), a postback's separate round trips are further apart."""
    lines: list[str] = []
    stop = threading.Event()
    started = threading.Event()

    def watch() -> None:
        with client.monitor() as m:
            started.set()
            conn = m.connection
            while not stop.is_set():
                if conn.can_read(timeout=0.05):
                    lines.append(conn.read_response().decode("utf-8", "replace"))

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    started.wait(5)
    time.sleep(0.3)
    for i in range(n):
        query = urllib.parse.urlencode(
            {
                "advertiser": ADVERTISER,
                "token": token,
                "click_id": ids[i % len(ids)],
                "txid": f"probe-{i}",
                "amount": "10.00",
                "currency": "EUR",
            }
        )
        with urllib.request.urlopen(f"{base_url}/postback?{query}", timeout=10) as r:
            assert r.status == 200
        time.sleep(0.02)
    time.sleep(0.3)
    stop.set()
    thread.join(5)
    parsed = []
    for line in lines:
        m = re.match(r"([\d.]+) \[\d+ ([^\]]+)\] (.*)", line)
        if m:
            parsed.append((float(m.group(1)), m.group(2), m.group(3)))
    edges = {addr for _, addr, cmd in parsed if "probe-" in cmd and addr != "lua"}
    mine = [(t, addr, cmd) for t, addr, cmd in parsed if addr in edges]
    trips, last = 0, {}
    for t, addr, _ in mine:
        if addr not in last or t - last[addr] > 100e-6:
            trips += 1
        last[addr] = t
    names: dict[str, int] = {}
    for _, _, cmd in mine:
        name = cmd.split(" ", 1)[0].strip('"').lower()
        names[name] = names.get(name, 0) + 1
    return {
        "round_trips_per_postback": round(trips / n, 2),
        "commands_per_postback": round(len(mine) / n, 2),
        "commands": {k: round(v / n, 2) for k, v in sorted(names.items())},
        "inside_scripts_per_postback": round(
            sum(1 for _, addr, cmd in parsed if addr == "lua") / n, 2
        ),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--duration", type=int, default=8, help="seconds per wrk run")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--connections", type=int, default=32)
    p.add_argument("--threads", type=int, default=2, help="wrk threads")
    p.add_argument("--processes", type=int, default=2, help="edge processes")
    p.add_argument("--clicks", type=int, default=5000, help="clicks the postbacks name")
    args = p.parse_args(argv)
    for tool in ("wrk", "redis-server"):
        if not shutil.which(tool):
            print(f"postback_bench: {tool} is missing (make bench installs it)", file=sys.stderr)
            return 2

    work = Path(tempfile.mkdtemp(prefix="tracker-pb-bench-"))
    server = RedisServer(work / "redis")
    server.start()
    svc = Service(work / "tracker", server, **product_settings(args.processes))
    client = server.client()
    result: dict = {
        "machine": {
            "cores": os.cpu_count(),
            "edge_processes": args.processes,
            "connections": args.connections,
            "wrk_threads": args.threads,
            "duration_s": args.duration,
        }
    }
    try:
        svc.serve()
        status, body = svc.api("POST", "/api/advertisers", {"id": ADVERTISER})
        assert status == 201, body
        token = body["token"]
        for i in range(1, LINKS + 1):
            status, body = svc.api(
                "POST",
                "/api/links",
                {
                    "slug": f"pb-{i}",
                    "campaign_id": f"campaign-{i % 7}",
                    "affiliate_id": f"aff-{i % 13}",
                    "advertiser_id": ADVERTISER,
                    "destination": "https://shop.example/landing?c={click_id}&s={sub1}",
                },
            )
            assert status == 201, body
        time.sleep(TrackingSettings().link_refresh_seconds + 1)  # every edge knows them
        ids = asyncio.run(make_clicks(svc.base_url, args.clicks))
        ids_file = work / "click_ids.txt"
        ids_file.write_text("\n".join(ids) + "\n")
        svc.wait_count("clicks", len(ids), timeout=300)  # in Redis's hot window, and stored
        pids = tracker_pids(svc.procs["serve"].pid)
        pids["redis"] = server.proc.pid

        rounds = []
        url = f"{svc.base_url}/postback"
        for n in range(args.rounds):
            load = os.getloadavg()[0]
            cpu_before, calls_before = cpu_seconds(pids), command_calls(client)
            run = wrk(url, args, ids_file, token, f"r{n}")
            cpu_after, calls_after = cpu_seconds(pids), command_calls(client)
            per = 1 / max(run["ok"], 1)
            run["cpu_us_per_postback"] = {
                name: round((cpu_after[name] - cpu_before[name]) * 1e6 * per, 1)
                for name in cpu_after
                if name in cpu_before
            }
            delta = {
                k: v - calls_before.get(k, 0)
                for k, v in calls_after.items()
                if v - calls_before.get(k, 0)
            }
            run["redis_commands_per_postback"] = round(sum(delta.values()) * per, 2)
            run["redis_calls_per_postback"] = {
                k: round(v * per, 2) for k, v in sorted(delta.items(), key=lambda kv: -kv[1])
            }
            run["load_average_1m"] = round(load, 2)
            rounds.append(run)
            print(
                f"round {n + 1}: {run['rps']:,.0f} postbacks/s ({run['ok']:,} answered 200 "
                f"of {run['requests']:,}), p50 {run['p50_ms']:.1f} ms, p99 "
                f"{run['p99_ms']:.1f} ms, Redis {run['redis_commands_per_postback']} "
                f"commands/postback, load {load:.1f}; CPU µs/postback "
                f"{run['cpu_us_per_postback']}",
                flush=True,
            )
        result["rounds"] = rounds
        result["postbacks_per_s"] = statistics.median(r["rps"] for r in rounds)
        result["p50_ms"] = statistics.median(r["p50_ms"] for r in rounds)
        result["p99_ms"] = statistics.median(r["p99_ms"] for r in rounds)
        result["load_average_1m"] = [r["load_average_1m"] for r in rounds]
        result["cpu_us_per_postback"] = {
            name: statistics.median(r["cpu_us_per_postback"].get(name, 0.0) for r in rounds)
            for name in rounds[0]["cpu_us_per_postback"]
        }
        result["redis_commands_per_postback"] = statistics.median(
            r["redis_commands_per_postback"] for r in rounds
        )
        result["one_postback"] = round_trips(client, svc.base_url, token, ids, 50)
        print(f"one postback: {result['one_postback']}", flush=True)

        answered = sum(r["ok"] for r in rounds) + 50
        sent = sum(r["requests"] for r in rounds) + 50
        where = f"advertiser_id = '{ADVERTISER}'"
        rows = svc.wait_count("conversions", answered, where, timeout=600)
        check = svc.sql(
            "SELECT count() AS rows, uniqExact(txid) AS txids, "
            "uniqExact(conversion_id) AS conversion_ids, countIf(attributed = 1) AS attributed "
            f"FROM tracker.conversions WHERE {where}"
        )[0]
        result["check"] = {"answered_200": answered, "sent": sent, **check}
    finally:
        svc.stop_all()
        server.stop()
    # wrk does not count what was in flight when it stopped (one per connection a round):
    # those postbacks may have been recorded
    in_flight = args.connections * args.rounds
    ok = (
        answered <= rows <= sent + in_flight
        and check["txids"] == check["conversion_ids"] == rows
        and check["attributed"] == rows
    )
    result["nothing_lost_no_duplicates"] = ok
    out_dir = HERE / "results"
    out_dir.mkdir(exist_ok=True)
    out = out_dir / f"postback-bench-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.write_text(json.dumps(result, indent=2))
    summary = {
        k: result[k]
        for k in (
            "postbacks_per_s",
            "p50_ms",
            "p99_ms",
            "load_average_1m",
            "cpu_us_per_postback",
            "redis_commands_per_postback",
            "one_postback",
            "check",
            "nothing_lost_no_duplicates",
        )
    }
    print(json.dumps(summary, indent=2))
    print(f"written to {out}")
    shutil.rmtree(work, ignore_errors=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
