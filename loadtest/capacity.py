"""Capacity figures for sizing: Redis bytes per click, ClickHouse bytes per click row.

    python -m loadtest.capacity [--clicks 100000] [--rows 1000000] [--out FILE]

Redis: starts its own redis-server (AOF, as in production) on a free loopback port and
writes realistic clicks through the edge's real `EventWriter` (one script call per batch of
`writer.batch_max_events`): the stream entry, the click record and the visitor's path
entry in the hot window's per-hour hashes (tracker/hot.py; a visitor's first click has the
visitor's id, as the edge makes it, and no path entry). INFO `used_memory` is read
before, after the writes, after the batch markers are gone (they expire after
`redis.dedup_ttl_seconds`) and after the stream was emptied the way the sink empties it
(XREADGROUP, XACK, XDEL). So:

* persistent = what stays for the hot window (click records + visitor paths);
* stream     = the transient share of a stream entry while the sink has not read it.

It does this twice, with one click per visitor and with four clicks per visitor: the first
gives a click record's bytes (a first click has no path entry), the second a path field's
(per visitor with later clicks and hour), each later click 16 bytes in it.

ClickHouse: applies the real migrations to a temporary chDB folder, inserts realistic,
enriched click rows as JSONEachRow through `ClickHouse.insert_jsonl` (chunks of 100,000
rows, one dedup token each, as the sink does), runs OPTIMIZE FINAL and reads
`system.parts` (bytes on disk, compressed and uncompressed bytes, rows) and the largest
columns from `system.columns`.

Prints one JSON summary (and writes it to --out when given).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import string
import sys
import tempfile
import time
from itertools import accumulate
from pathlib import Path

import orjson

from loadtest.cpu import process_cpu
from tracker import config, migrations, redis_connection
from tracker import redis_keys as K
from tracker.clickhouse import ClickHouse
from tracker.edge.spool import Spool
from tracker.edge.writer import EventWriter
from tracker.ids import uuid7
from tracker.links import Link
from tracker.macros import render
from tracker.records import RequestMeta, click_record, click_row, parse_query
from tracker.testing import RedisServer
from tracker.timefmt import now_ms

TOKEN = "capacity-token-0123456789"
ALNUM = string.ascii_letters + string.digits
B64URL = ALNUM + "-_"

UA_TEMPLATES = [
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/{major}.0.{build}.{patch} Safari/537.36",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/{major}.0.{build}.{patch} Safari/537.36 Edg/{major}.0.{build}.{patch}",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) "
    "Version/{minor}.{patch} Safari/605.1.15",
    "Mozilla/5.0 (iPhone; CPU iPhone OS {ios} like Mac OS X) AppleWebKit/605.1.15 (KHTML, like "
    "Gecko) Version/{minor}.0 Mobile/15E148 Safari/604.1",
    "Mozilla/5.0 (iPhone; CPU iPhone OS {ios} like Mac OS X) AppleWebKit/605.1.15 (KHTML, like "
    "Gecko) Mobile/21F90 Instagram {build}.0.0.{patch} (iPhone15,3; iOS {ios}; en_US; en; "
    "scale=3.00; 1290x2796; {patch}) NW/3",
    "Mozilla/5.0 (Linux; Android {android}; SM-S{model}B) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/{major}.0.{build}.{patch} Mobile Safari/537.36",
    "Mozilla/5.0 (Linux; Android {android}; SM-A{model}F Build/UP1A.231005.007; wv) "
    "AppleWebKit/537.36 (KHTML, like Gecko) Version/4.0 Chrome/{major}.0.{build}.{patch} Mobile "
    "Safari/537.36 [FBAN/EMA;FBLC/en_US;FBAV/{build}.0.0.{patch};]",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:{major}.0) Gecko/20100101 Firefox/{major}.0",
    "Mozilla/5.0 (Linux; Android {android}) AppleWebKit/537.36 (KHTML, like Gecko) "
    "SamsungBrowser/{minor}.0 Chrome/{major}.0.0.0 Mobile Safari/537.36",
    "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)",
]
LANGUAGES = [
    "en-US,en;q=0.9",
    "en-GB,en;q=0.9",
    "de-DE,de;q=0.9,en;q=0.8",
    "fr-FR,fr;q=0.9,en-US;q=0.8,en;q=0.7",
    "es-ES,es;q=0.9",
    "pt-BR,pt;q=0.9,en;q=0.8",
    "it-IT,it;q=0.9",
    "nl-NL,nl;q=0.9,en;q=0.8",
    "pl-PL,pl;q=0.9",
    "ja-JP,ja;q=0.9",
    "",
]
COUNTRIES = [
    "US",
    "DE",
    "GB",
    "FR",
    "BR",
    "IN",
    "ES",
    "IT",
    "NL",
    "PL",
    "CA",
    "AU",
    "MX",
    "JP",
    "TR",
    "SE",
    "ID",
    "PH",
    "VN",
    "ZA",
]
UTM_SOURCES = [
    "facebook",
    "google",
    "instagram",
    "tiktok",
    "newsletter",
    "bing",
    "taboola",
    "outbrain",
    "twitter",
    "pinterest",
]
UTM_MEDIUMS = ["cpc", "affiliate", "email", "social", "display", "native"]


def token(rng: random.Random, n: int, alphabet: str = ALNUM) -> str:
    return "".join(rng.choices(alphabet, k=n))


class Clicks:
    """Realistic clicks: 2,000 links (200 campaigns, 500 affiliates, 50 advertisers) with
    skewed popularity, varied user agents, sub ids, UTM and ad click ids, long URLs."""

    def __init__(self, seed: int) -> None:
        self.rng = rng = random.Random(seed)
        self.links = []
        for i in range(2000):
            affiliate = f"aff-{rng.randrange(500):04d}"
            template = (
                f"https://www.shop{i % 97}.example/products/item-{rng.randrange(10**5)}"
                f"?utm_source=affiliate&utm_medium=cpa&aff={{affiliate_id}}"
                f"&click_id={{click_id}}&s1={{sub1}}"
            )
            self.links.append(
                Link(
                    f"l{i:04d}-{token(rng, 6).lower()}",
                    template,
                    f"camp-{rng.randrange(200):03d}",
                    affiliate,
                    f"adv-{rng.randrange(50):02d}",
                )
            )
        self.link_weights = list(accumulate(1 / (i + 1) ** 0.8 for i in range(len(self.links))))
        self.placements = [token(rng, 10).lower() for _ in range(5000)]
        self.campaign_names = [f"spring_{token(rng, 5).lower()}_{i}" for i in range(200)]
        self.publishers = [f"https://{token(rng, 8).lower()}.example" for _ in range(500)]
        self.agents = [self._agent() for _ in range(3000)]
        self.agent_weights = list(accumulate(1 / (i + 1) ** 0.7 for i in range(len(self.agents))))

    def _agent(self) -> str:
        rng = self.rng
        return rng.choice(UA_TEMPLATES).format(
            major=rng.randint(118, 132),
            minor=rng.randint(15, 18),
            build=rng.randint(5000, 6900),
            patch=rng.randint(0, 250),
            ios=f"{rng.randint(16, 18)}_{rng.randint(0, 6)}",
            android=rng.randint(11, 15),
            model=rng.randint(100, 999),
        )

    def ip(self) -> str:
        rng = self.rng
        if rng.random() < 0.12:
            return "2a02:" + ":".join(f"{rng.randrange(65536):x}" for _ in range(7))
        a, b = rng.randint(1, 223), rng.randrange(256)
        return f"{a}.{b}.{rng.randrange(256)}.{rng.randint(1, 254)}"

    def query(self) -> str:
        rng = self.rng
        q = []
        if rng.random() < 0.7:
            q.append(f"sub1={token(rng, rng.randint(16, 24))}")
        if rng.random() < 0.5:
            q.append(f"sub2={rng.choice(self.placements)}")
        if rng.random() < 0.15:
            q.append(f"sub3={rng.randrange(100)}")
        if rng.random() < 0.6:
            q += [
                f"utm_source={rng.choice(UTM_SOURCES)}",
                f"utm_medium={rng.choice(UTM_MEDIUMS)}",
                f"utm_campaign={rng.choice(self.campaign_names)}",
            ]
            if rng.random() < 0.3:
                q.append(f"utm_content=ad_{rng.randrange(400)}")
            if rng.random() < 0.1:
                q.append(f"utm_term=kw+{token(rng, 6).lower()}")
        r = rng.random()
        if r < 0.10:
            q.append(f"gclid=Cj0KCQ{token(rng, rng.randint(80, 90), B64URL)}")
        elif r < 0.20:
            q.append(f"fbclid=IwAR{token(rng, 58, B64URL)}")
        elif r < 0.22:
            q.append(f"msclkid={token(rng, 32, '0123456789abcdef')}")
        return "&".join(q)

    def click(self, ms: int, click_id: str, visitor_id: str, new: bool) -> dict:
        """One click row as the edge builds it (real click_row, parse_query, render)."""
        rng = self.rng
        link = rng.choices(self.links, cum_weights=self.link_weights)[0]
        raw_query = self.query()
        params = parse_query(raw_query, 8192)
        referer = (
            f"{rng.choice(self.publishers)}/{token(rng, rng.randint(8, 40)).lower()}"
            if rng.random() < 0.8
            else ""
        )
        agent = rng.choices(self.agents, cum_weights=self.agent_weights)[0]
        meta = RequestMeta(
            ip=self.ip(),
            user_agent=agent,
            referer=referer,
            accept_language=rng.choice(LANGUAGES),
            url=f"/c/{link.slug}" + (f"?{raw_query}" if raw_query else ""),
            method="GET",
        )
        destination = render(
            link.destination,
            {
                "click_id": click_id,
                "visitor_id": visitor_id,
                "campaign_id": link.campaign_id,
                "affiliate_id": link.affiliate_id,
                **{f"sub{i}": params.get(f"sub{i}", "") for i in range(1, 6)},
            },
        )
        return click_row(
            ms=ms,
            click_id=click_id,
            visitor_id=visitor_id,
            new_visitor=new,
            link=link,
            params=params,
            meta=meta,
            destination=destination,
        )

    def enrich(self, row: dict) -> dict:
        """The columns the sink adds (geo country, device, bot flag, fraud flags)."""
        rng = self.rng
        ua = row["user_agent"]
        mobile = "Mobile" in ua or "iPhone" in ua
        bot = "bot" in ua
        row.update(
            {
                "country": rng.choice(COUNTRIES),
                "device_type": "bot" if bot else ("mobile" if mobile else "desktop"),
                "os": "iOS"
                if "iPhone" in ua
                else "Android"
                if "Android" in ua
                else ("Mac OS X" if "Mac OS" in ua else "Windows"),
                "browser": ua.rsplit(" ", 1)[-1].split("/")[0][:20],
                "is_bot": int(bot),
                "bot_reason": "user_agent" if bot else "",
                "fraud_flags": ["duplicate_click"] if rng.random() < 0.01 else [],
            }
        )
        return row


# -- Redis ----------------------------------------------------------------------------------


def memory(client) -> int:
    """used_memory without the clients' buffers (connection noise, not data).

    Redis refreshes its per-client figures in a timer, so right after a large reply
    `mem_clients_normal` still counts buffers already freed: wait until two readings agree.
    """
    last = None
    for _ in range(40):
        time.sleep(0.3)
        info = client.info("memory")
        reading = (int(info["used_memory"]), int(info.get("mem_clients_normal", 0)))
        if reading == last:
            break
        last = reading
    return reading[0] - reading[1]


async def write_clicks(
    settings, url: str, spool: Path, clicks: Clicks, count: int, per_visitor: int
) -> dict:
    """`count` clicks through the real EventWriter, in edge batches of batch_max_events."""
    client = redis_connection.async_client(url, settings.redis.timeout_seconds)
    writer = EventWriter(
        client,
        Spool(spool),
        batch_max_events=settings.writer.batch_max_events,
        batch_max_delay_ms=settings.writer.batch_max_delay_ms,
        lookback_seconds=settings.lookback_seconds,
        timeout_seconds=settings.redis.timeout_seconds,
        dedup_ttl_seconds=settings.redis.dedup_ttl_seconds,
        hot_hours=settings.tracking.hot_hours,
    )
    await writer.start()
    visitors = [uuid7() for _ in range(-(-count // per_visitor))]
    batch = settings.writer.batch_max_events
    json_bytes = 0
    for start in range(0, count, batch):
        for i in range(start, min(count, start + batch)):
            ms = now_ms()
            visitor = visitors[i % len(visitors)]
            new = i < len(visitors)
            # a new visitor's first click has the visitor's id, as the edge makes it
            row = clicks.click(ms, visitor if new else uuid7(ms), visitor, new=new)
            json_bytes += len(orjson.dumps(row))
            writer.add_click(row, click_record(row, ms), ms)
        # one full batch per script call, as a busy edge sends them
        while writer.flushed_batches + writer.spooled_batches < start // batch + 1:
            await asyncio.sleep(0.0002)
    await writer.close()
    await client.aclose()
    if writer.spooled_batches:
        raise RuntimeError("Redis did not take every batch; the measurement is void")
    return {
        "batches": writer.flushed_batches,
        "visitors": len(visitors),
        "json_bytes_per_click_row": round(json_bytes / count),
    }


def drain_stream(client, read_entries: int) -> int:
    """Empty the stream as the sink does: read through the group, XACK, XDEL."""
    drained = 0
    while True:
        reply = client.xreadgroup(
            K.SINK_GROUP, "capacity", {K.EVENTS_STREAM: ">"}, count=read_entries
        )
        if not reply or not reply[0][1]:
            return drained
        ids = [entry_id for entry_id, _ in reply[0][1]]
        pipe = client.pipeline(transaction=False)
        pipe.xack(K.EVENTS_STREAM, K.SINK_GROUP, *ids)
        pipe.xdel(K.EVENTS_STREAM, *ids)
        pipe.execute()
        drained += len(ids)


def redis_run(
    settings, server: RedisServer, work: Path, clicks: Clicks, count: int, per_visitor: int
) -> dict:
    client = server.client()
    client.flushall()
    client.xgroup_create(K.EVENTS_STREAM, K.SINK_GROUP, id="0", mkstream=True)
    base = memory(client)
    started, cpu_start = time.perf_counter(), process_cpu(server.proc.pid)
    wrote = asyncio.run(
        write_clicks(
            settings, server.url, work / f"edge-{per_visitor}.spool", clicks, count, per_visitor
        )
    )
    seconds, cpu_write = time.perf_counter() - started, process_cpu(server.proc.pid) - cpu_start
    after_write = memory(client)
    stream_entries = client.xlen(K.EVENTS_STREAM)
    sample = [key for _, key in zip(range(2000), client.scan_iter(count=1000), strict=False)]
    usage: dict[str, list[int]] = {"click_hash_per_field": [], "path_hash_per_field": []}
    for key in sample:
        kind = (
            "path_hash_per_field"
            if key.startswith(b"trk:paths:")
            else "click_hash_per_field"
            if key.startswith(b"trk:clicks:")
            else None
        )
        if kind:
            fields = max(1, client.hlen(key))
            usage[kind].append(client.memory_usage(key, samples=0) // fields)
    markers = list(client.scan_iter(match=K.batch_marker_key("*"), count=1000))
    marker_bytes = sum(client.memory_usage(key, samples=0) for key in markers)
    client.delete(*markers)  # they expire after redis.dedup_ttl_seconds
    after_markers = memory(client)
    cpu_start = process_cpu(server.proc.pid)
    drained = drain_stream(client, settings.sink.read_entries)
    cpu_drain = process_cpu(server.proc.pid) - cpu_start
    after_drain = memory(client)
    keys = client.dbsize() - 2  # the (now empty) stream key and the `since` mark stay
    return {
        "clicks": count,
        "clicks_per_visitor": per_visitor,
        **wrote,
        "write_seconds": round(seconds, 1),
        "stream_entries": stream_entries,
        "stream_entries_drained": drained,
        "persistent_keys": keys,
        "used_memory": {
            "before": base,
            "after_write": after_write,
            "after_markers_expired": after_markers,
            "after_stream_drained": after_drain,
        },
        "bytes_per_click": {
            "persistent_record_and_path": round((after_drain - base) / count, 1),
            "stream_entry_share": round((after_markers - after_drain) / count, 1),
            "batch_marker_share": round(marker_bytes / count, 2),  # MEMORY USAGE
        },
        "memory_usage_command_average_bytes": {
            kind: round(sum(values) / len(values)) for kind, values in usage.items() if values
        },
        # redis-server's own CPU (all threads, AOF included), per click
        "redis_cpu_microseconds_per_click": {
            "edge_batch_script": round(cpu_write * 1e6 / count, 2),
            "sink_read_ack_delete": round(cpu_drain * 1e6 / count, 2),
        },
    }


def steady_gb(clicks_per_day: int, bytes_per_click: float, hot_hours: int) -> float:
    """Redis GB once the hot window is full: the window, the hour being written, and the
    expiry slack (tracker/hot.py)."""
    hours = hot_hours + 1 + 600 / 3600
    return round(clicks_per_day * hours / 24 * bytes_per_click / 1e9, 2)


def measure_redis(settings, work: Path, count: int, seed: int) -> dict:
    server = RedisServer(work / "redis")
    server.start()
    try:
        version = server.client().info("server")["redis_version"]
        runs = [redis_run(settings, server, work, Clicks(seed + k), count, k) for k in (1, 4)]
    finally:
        server.stop()
    # memory = clicks * record + per visitor with later clicks: a path field (its key and
    # overhead) and 16 bytes per later click. With one click per visitor there are records
    # only: a first click has the visitor's id and no path entry.
    (m1, _), (m4, v4) = (
        (r["used_memory"]["after_stream_drained"] - r["used_memory"]["before"], r["visitors"])
        for r in runs
    )
    record = m1 / count
    field = (m4 - record * count) / v4 - 16 * 3  # each visitor's 3 later clicks: 16 B each
    stream = sum(r["bytes_per_click"]["stream_entry_share"] for r in runs) / len(runs)
    cpu = sum(sum(r["redis_cpu_microseconds_per_click"].values()) for r in runs) / len(runs)
    return {
        "redis_version": version,
        "runs": runs,
        "model": {
            "bytes_per_click_record": round(record, 1),
            "bytes_per_visitor_path_field": round(field, 1),
            "persistent_bytes_per_click_1_click_per_visitor": round(record, 1),
            "persistent_bytes_per_click_2_clicks_per_visitor": round(record + (field + 16) / 2, 1),
            "persistent_bytes_per_click_4_clicks_per_visitor": round(m4 / count, 1),
            "stream_bytes_per_click_until_drained": round(stream, 1),
            "redis_cpu_microseconds_per_click_write_and_drain": round(cpu, 2),
            "redis_clicks_per_second_per_core_ceiling": round(1e6 / cpu),
        },
        "steady_state_gb_1_click_per_visitor": {
            f"{n:,}_clicks_per_day": steady_gb(n, record, settings.tracking.hot_hours)
            for n in (1_000_000, 100_000_000, 1_000_000_000)
        },
    }


# -- ClickHouse -----------------------------------------------------------------------------


def measure_clickhouse(settings, work: Path, rows: int, seed: int, chunk: int = 100_000) -> dict:
    ch = ClickHouse(f"chdb://{work / 'chdb'}", settings.clickhouse.database)
    db = settings.clickhouse.database
    try:
        migrations.apply(ch, settings)
        clicks = Clicks(seed)
        rng = random.Random(seed)
        day_start = now_ms() - 86_400_000
        span = 86_400_000 * chunk // rows + 1
        recent: list[str] = []  # 30% of clicks come from a returning visitor
        json_bytes = 0
        generate = insert = 0.0
        for start in range(0, rows, chunk):
            n = min(chunk, rows - start)
            t0 = time.perf_counter()
            # one day of clicks in time order, chunk after chunk, as the sink inserts them
            window = day_start + span * (start // chunk)
            times = sorted(window + rng.randrange(span) for _ in range(n))
            lines = []
            for ms in times:
                new = not recent or rng.random() >= 0.3
                visitor = uuid7(ms) if new else rng.choice(recent)
                if new:
                    recent.append(visitor)
                    if len(recent) > 50_000:
                        recent = recent[25_000:]
                click_id = visitor if new else uuid7(ms)  # a first click: the visitor's id
                row = clicks.enrich(clicks.click(ms, click_id, visitor, new=new))
                lines.append(orjson.dumps(row))
            payload = b"\n".join(lines)
            json_bytes += len(payload)
            t1 = time.perf_counter()
            ch.insert_jsonl("clicks", payload, token=f"capacity-{start}")
            insert += time.perf_counter() - t1
            generate += t1 - t0
            print(f"clickhouse: {start + n:,} rows", file=sys.stderr, flush=True)
        t2 = time.perf_counter()
        ch.command(f"OPTIMIZE TABLE {db}.clicks FINAL")
        optimize = time.perf_counter() - t2
        _, parts = ch.query(
            "SELECT count(), sum(rows), sum(bytes_on_disk), sum(data_compressed_bytes), "
            "sum(data_uncompressed_bytes), sum(secondary_indices_compressed_bytes) "
            f"FROM system.parts WHERE database = '{db}' AND table = 'clicks' AND active"
        )
        n_parts, n_rows, on_disk, compressed, uncompressed, indexes = parts[0]
        _, columns = ch.query(
            "SELECT name, data_compressed_bytes, data_uncompressed_bytes FROM system.columns "
            f"WHERE database = '{db}' AND table = 'clicks' ORDER BY data_compressed_bytes DESC "
            "LIMIT 8"
        )
        _, version = ch.query("SELECT version()")
    finally:
        ch.close()
    return {
        "engine": f"chDB {version[0][0]}",
        "rows": int(n_rows),
        "active_parts_after_optimize": int(n_parts),
        "bytes_on_disk_per_row": round(on_disk / n_rows, 1),
        "compressed_bytes_per_row": round(compressed / n_rows, 1),
        "skip_index_bytes_per_row": round(indexes / n_rows, 1),  # click/visitor lookups
        "uncompressed_bytes_per_row": round(uncompressed / n_rows, 1),
        "json_bytes_per_row": round(json_bytes / rows, 1),
        "compression_ratio": round(uncompressed / compressed, 2),
        "largest_columns_compressed_bytes_per_row": {
            name: round(c / n_rows, 1) for name, c, _ in columns
        },
        "seconds": {
            "generate_rows": round(generate, 1),
            "insert": round(insert, 1),
            "optimize_final": round(optimize, 1),
        },
        "insert_rows_per_second": round(rows / insert),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--clicks", type=int, default=100_000, help="clicks per Redis run")
    p.add_argument("--rows", type=int, default=1_000_000, help="click rows into ClickHouse")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--out", type=Path, help="also write the JSON summary here")
    args = p.parse_args()
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="capacity-") as tmp:
        work = Path(tmp)
        settings = config.load(
            env={"TRACKER_DATA_DIR": str(work / "data"), "TRACKER_ADMIN_TOKEN": TOKEN}
        )
        redis = measure_redis(settings, work, args.clicks, args.seed)
        print("redis: " + json.dumps(redis["model"]), file=sys.stderr, flush=True)
        clickhouse = measure_clickhouse(settings, work, args.rows, args.seed)
    summary = {
        "measured_on": {
            "cpus": os.cpu_count(),
            "command": "python -m loadtest.capacity " + " ".join(sys.argv[1:]),
        },
        "settings": {
            "lookback_days": settings.tracking.lookback_days,
            "hot_hours": settings.tracking.hot_hours,
            "retention_days": settings.clickhouse.retention_days,
            "writer_batch_max_events": settings.writer.batch_max_events,
        },
        "redis": redis,
        "clickhouse": clickhouse,
        "seconds": round(time.perf_counter() - started, 1),
    }
    text = json.dumps(summary, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
