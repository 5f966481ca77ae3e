"""The standing fault suite: real processes on loopback, bounded load, one table.

    python -m loadtest.chaos [--only NAME ...] [--quick]     (or `make chaos`)

Each scenario starts its own redis-server and `tracker serve` (2 edge processes and the
sink, the harness of tracker/testing.py) in a fresh folder, sends clicks from a few
clients at a bounded rate (`CLIENTS` clients, a pause between requests) while the fault
happens, then waits for ClickHouse to hold every answered click. For each it reports:

* sent: clicks requested; answered: 302s received (a request to a killed process fails);
* rows: click rows in ClickHouse for the scenario's link;
* lost: answered clicks (their click id, from the redirect) missing from ClickHouse;
* duplicated: rows beyond one per click id;
* recover: seconds from the end of the fault until every answered click was stored.

Scenarios: Redis SIGKILL; Redis down 30 s; sink SIGKILL x3 mid-batch; one edge SIGKILL;
SIGTERM of the whole service under load; the spool's disk full, then read-only, during a
Redis outage (a small tmpfs: needs root; skipped with the reason otherwise); ClickHouse
server down 60 s (a loopback proxy in front of the server named by
TRACKER_CHAOS_CLICKHOUSE_URL; skipped with the reason otherwise). `--quick` shortens every
wait (the CI tests run single scenarios that way).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import signal
import sys
import tempfile
import time
import urllib.parse
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

from tracker.testing import (
    BROWSER_UA,
    RedisServer,
    Service,
    can_mount,
    fill_disk,
    free_port,
    remount,
    small_disk,
)

CLIENTS = 8
PAUSE = 0.005  # between one client's requests: ~1,000 clicks/s at most in all
SLUG = "chaos"


@dataclass
class Result:
    scenario: str
    sent: int = 0
    answered: int = 0
    rows: int = 0
    lost: int = 0
    duplicated: int = 0
    recover: float | None = None
    note: str = ""
    lost_requested: list[float] = field(default_factory=list)  # when each lost click was asked
    fault_at: float | None = None  # when the fault struck (the scenarios that say)


class Load:
    """Clicks from `CLIENTS` clients until stopped; keeps the click ids it was given."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.sent = 0
        self.ids: list[str] = []
        # when each answered click was requested: the test process's event loop may read a
        # reply late (it blocks while a fault is switched off), so an answer's own arrival
        # time can fall after the fault although the edge recorded the click during it
        self.requested: list[float] = []
        self._stop = asyncio.Event()
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        self._stop.set()
        if self._task:
            await self._task

    async def _run(self) -> None:
        connector = aiohttp.TCPConnector(limit=CLIENTS, force_close=False)
        timeout = aiohttp.ClientTimeout(total=10)
        async with aiohttp.ClientSession(
            connector=connector, timeout=timeout, headers={"User-Agent": BROWSER_UA}
        ) as session:
            await asyncio.gather(*(self._client(session) for _ in range(CLIENTS)))

    async def _client(self, session: aiohttp.ClientSession) -> None:
        while not self._stop.is_set():
            self.sent += 1
            began = time.time()
            try:
                async with session.get(self.url, allow_redirects=False) as r:
                    await r.read()
                    if r.status == 302:
                        self.ids.append(r.headers["Location"].rsplit("click_id=", 1)[1])
                        self.requested.append(began)
            except (aiohttp.ClientError, ConnectionError, TimeoutError):
                await asyncio.sleep(0.05)  # the edge is away: do not spin
            await asyncio.sleep(PAUSE)


class Chaos:
    """One scenario's service, in its own folder."""

    def __init__(self, name: str, quick: bool, **env: str) -> None:
        self.name = name
        self.quick = quick
        self.folder = Path(tempfile.mkdtemp(prefix=f"chaos-{name}-"))
        self.redis = RedisServer(self.folder / "redis")
        self.redis.start()
        self.service = Service(self.folder / "svc", self.redis, **env)
        self.load: Load | None = None

    def wait(self, seconds: float) -> float:
        return max(0.5, seconds / 6) if self.quick else seconds

    async def start(self) -> None:
        self.service.serve()
        self.service.add_link(SLUG, campaign_id=SLUG)
        self.load = Load(f"{self.service.base_url}/c/{SLUG}")
        self.load.start()
        await asyncio.sleep(self.wait(3))

    def children(self, kind: str) -> list[int]:
        """Process ids of the supervisor's children running `tracker <kind>`."""
        parent = self.service.procs["serve"].pid
        found = []
        for stat in Path("/proc").glob("[0-9]*/stat"):
            with contextlib.suppress(OSError):
                fields = stat.read_text().rsplit(")", 1)[1].split()
                cmdline = (stat.parent / "cmdline").read_bytes().split(b"\0")
                if int(fields[1]) == parent and kind.encode() in cmdline:
                    found.append(int(stat.parent.name))
        return sorted(found)

    async def finish(
        self, fault_end: float, note: str = "", timeout: float = 120, losing: bool = False
    ) -> Result:
        """Stop the load, wait until every answered click is stored (`losing`: every click
        requested after the fault; the others may have been dropped) or `timeout`."""
        assert self.load is not None
        await asyncio.sleep(self.wait(2))  # clicks after the fault, too
        await self.load.stop()
        answered = set(self.load.ids)
        awaited = answered
        if losing:
            awaited = {
                i for i, t in zip(self.load.ids, self.load.requested, strict=True) if t > fault_end
            }
        recover = None
        deadline = time.monotonic() + timeout
        counts: dict[str, int] = {}
        while time.monotonic() < deadline:
            with contextlib.suppress(Exception):
                counts = self.stored()
                if awaited <= counts.keys():
                    recover = time.time() - fault_end
                    break
            await asyncio.sleep(0.25)
        await asyncio.sleep(1.5)  # late duplicates would show now
        with contextlib.suppress(Exception):
            counts = self.stored()
        asked = dict(zip(self.load.ids, self.load.requested, strict=True))
        return Result(
            self.name,
            sent=self.load.sent,
            answered=len(self.load.ids),
            rows=sum(counts.values()),
            lost=len(answered - counts.keys()),
            lost_requested=sorted(asked[i] for i in answered - counts.keys()),
            duplicated=sum(n - 1 for n in counts.values()),
            recover=recover,
            note=note,
        )

    def stored(self) -> dict[str, int]:
        rows = self.service.sql(
            "SELECT toString(click_id) AS c, count() AS n FROM tracker.clicks "
            f"WHERE link_slug = '{SLUG}' GROUP BY c"
        )
        return {r["c"]: r["n"] for r in rows}

    def close(self) -> None:
        self.service.stop_all()
        self.redis.stop()
        shutil.rmtree(self.folder, ignore_errors=True)


# -- the scenarios ------------------------------------------------------------------------


async def redis_sigkill(c: Chaos) -> Result:
    await c.start()
    assert c.redis.proc is not None
    c.redis.proc.kill()  # no AOF flush: what Redis held for under a second may go
    c.redis.proc.wait()
    await asyncio.sleep(c.wait(3))
    c.redis.start()
    return await c.finish(time.time(), "AOF everysec: up to 1 s of Redis writes at risk")


async def redis_down_30s(c: Chaos) -> Result:
    await c.start()
    c.redis.stop()
    await asyncio.sleep(c.wait(30))
    c.redis.start()
    return await c.finish(time.time())


async def sink_sigkill_x3(c: Chaos) -> Result:
    await c.start()
    for _ in range(3):
        for pid in c.children("sink"):
            os.kill(pid, signal.SIGKILL)
        await asyncio.sleep(c.wait(6))  # the supervisor restarts it (after 1, 2, 3 s)
    return await c.finish(
        time.time(), "sink.read_entries = 5 (kills land mid-batch): the backlog drains slowly"
    )


async def edge_sigkill(c: Chaos) -> Result:
    await c.start()
    edges = c.children("edge")
    killed = time.time()
    os.kill(edges[0], signal.SIGKILL)
    await asyncio.sleep(c.wait(3))  # restarted by the supervisor
    # what the killed edge held unflushed is lost: recovered once every click after is stored
    result = await c.finish(
        time.time(), "a killed edge loses what it held (<= 20 ms of clicks)", losing=True
    )
    result.fault_at = killed
    return result


async def sigterm_under_load(c: Chaos) -> Result:
    await c.start()
    proc = c.service.procs["serve"]
    proc.send_signal(signal.SIGTERM)
    await asyncio.to_thread(proc.wait, 60)
    await asyncio.sleep(c.wait(2))
    c.service.serve()  # the same data: a fresh service answers for it
    return await c.finish(time.time())


async def spool_full_then_read_only(c: Chaos) -> Result:
    spool = c.service.folder / "data" / "spool"
    with small_disk(spool, size_kb=2048):
        await c.start()
        c.redis.stop()
        filler = fill_disk(spool)
        await asyncio.sleep(c.wait(5))  # Redis away, the disk full: clicks dropped, counted
        filler.unlink()
        remount(spool, read_only=True)
        await asyncio.sleep(c.wait(5))  # read-only now
        remount(spool, read_only=False)
        c.redis.start()
        result = await c.finish(time.time(), losing=True)
    result.note = (
        "lost = dropped and counted (tracker_events_dropped_total); recover: until the"
        " clicks after the fault are stored"
    )
    return result


class TcpProxy:
    """A loopback TCP proxy that can go away (and come back) as a server would."""

    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        self.port = free_port()
        self.server: asyncio.Server | None = None
        self.writers: set[asyncio.StreamWriter] = set()

    async def up(self) -> None:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)

    async def down(self) -> None:
        if self.server:
            self.server.close()
            await self.server.wait_closed()
        for writer in list(self.writers):
            writer.close()

    async def _serve(self, reader, writer) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.close()
            return
        self.writers |= {writer, up_writer}

        async def pipe(src, dst) -> None:
            with contextlib.suppress(Exception):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            dst.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
        self.writers -= {writer, up_writer}


async def run_clickhouse_down(quick: bool, url: str) -> Result:
    parts = urllib.parse.urlsplit(url)
    proxy = TcpProxy(parts.hostname or "127.0.0.1", parts.port or 8123)
    await proxy.up()
    netloc = parts.netloc.rsplit("@", 1)
    auth = netloc[0] + "@" if len(netloc) == 2 else ""
    dsn = urllib.parse.urlunsplit(parts._replace(netloc=f"{auth}127.0.0.1:{proxy.port}"))
    c = Chaos(
        "clickhouse_down_60s",
        quick,
        TRACKER_CLICKHOUSE_DSN=dsn,
        TRACKER_CLICKHOUSE_DATABASE=f"chaos_{uuid.uuid4().hex[:8]}",
    )
    try:
        await c.start()
        await proxy.down()
        await asyncio.sleep(c.wait(60))
        await proxy.up()
        return await c.finish(time.time())
    finally:
        c.close()
        await proxy.down()


# name -> (scenario, the service's settings); ClickHouse down runs its own way (a proxy)
SCENARIOS: dict[str, tuple[Callable[[Chaos], Awaitable[Result]] | None, dict[str, str]]] = {
    "redis_sigkill": (redis_sigkill, {}),
    "redis_down_30s": (redis_down_30s, {}),
    # small sink reads, so that the kills land between inserts and acknowledgements
    "sink_sigkill_x3": (sink_sigkill_x3, {"TRACKER_SINK_READ_ENTRIES": "5"}),
    "edge_sigkill": (edge_sigkill, {}),
    "sigterm_under_load": (sigterm_under_load, {}),
    "spool_full_then_read_only": (spool_full_then_read_only, {"TRACKER_WORKERS": "1"}),
    "clickhouse_down_60s": (None, {}),
}


def skip_reason(name: str) -> str | None:
    if name == "spool_full_then_read_only" and not can_mount():
        return "needs root to mount a small tmpfs"
    if name == "clickhouse_down_60s" and not os.environ.get("TRACKER_CHAOS_CLICKHOUSE_URL"):
        return "set TRACKER_CHAOS_CLICKHOUSE_URL to a ClickHouse server to run it"
    return None


async def run(name: str, quick: bool = False) -> Result:
    if name == "clickhouse_down_60s":
        return await run_clickhouse_down(quick, os.environ["TRACKER_CHAOS_CLICKHOUSE_URL"])
    scenario, env = SCENARIOS[name]
    assert scenario is not None
    chaos = Chaos(name, quick, **env)
    try:
        return await scenario(chaos)
    finally:
        chaos.close()


def table(results: list[Result], skipped: dict[str, str]) -> str:
    lines = [
        "| scenario | clicks sent | answered | rows | lost | duplicated | recover (s) | note |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for r in results:
        recover = f"{r.recover:.1f}" if r.recover is not None else "not within 120 s"
        lines.append(
            f"| {r.scenario} | {r.sent} | {r.answered} | {r.rows} | {r.lost} | "
            f"{r.duplicated} | {recover} | {r.note} |"
        )
    for name, why in skipped.items():
        lines.append(f"| {name} | | | | | | | skipped: {why} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--only", nargs="+", choices=list(SCENARIOS), help="these scenarios only")
    p.add_argument("--quick", action="store_true", help="every wait a sixth as long")
    args = p.parse_args(argv)
    results, skipped = [], {}
    for name in args.only or list(SCENARIOS):
        why = skip_reason(name)
        if why:
            print(f"{name}: skipped ({why})", file=sys.stderr, flush=True)
            skipped[name] = why
            continue
        print(f"{name}: running", file=sys.stderr, flush=True)
        results.append(asyncio.run(run(name, args.quick)))
    print(table(results, skipped))
    return 0


if __name__ == "__main__":
    sys.exit(main())
