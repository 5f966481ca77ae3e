"""Nothing acknowledged is lost: outages and crashes, counted in ClickHouse."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time

import aiohttp
import pytest

from tests.system.test_metrics import scrape, value
from tracker.edge.spool import CHUNK_BYTES
from tracker.testing import (
    ROOT,
    Service,
    can_mount,
    fill_disk,
    free_port,
    get_status_location,
    hit_many,
    small_disk,
    wait_until,
)

DROPPED = r'tracker_events_dropped_total\{reason="no_storage"\}'


class Load:
    """Clicks from concurrent clients until stopped; counts the answers."""

    def __init__(self, url: str, clients: int = 16) -> None:
        self.url = url
        self.clients = clients
        self.statuses: list[int] = []
        self.errors = 0
        self._stop = asyncio.Event()

    async def run(self) -> None:
        async with aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=self.clients)
        ) as session:
            await asyncio.gather(*(self._client(session) for _ in range(self.clients)))

    async def _client(self, session: aiohttp.ClientSession) -> None:
        while not self._stop.is_set():
            try:
                async with session.get(self.url, allow_redirects=False) as r:
                    await r.read()
                    self.statuses.append(r.status)
            except (aiohttp.ClientError, ConnectionError):
                self.errors += 1
                await asyncio.sleep(0.01)

    def stop(self) -> None:
        self._stop.set()


async def test_redis_outage_every_click_redirects_and_lands_once(service: Service):
    service.serve()
    service.add_link("outage", campaign_id="outage")
    load = Load(f"{service.base_url}/c/outage")
    task = asyncio.create_task(load.run())
    await asyncio.sleep(1.0)

    service.redis.stop()
    before_outage = len(load.statuses)
    await asyncio.sleep(2.0)
    during_outage = len(load.statuses) - before_outage
    status, _ = await asyncio.to_thread(get_status_location, f"{service.base_url}/readyz")
    assert status == 503  # not ready while Redis is away...
    service.redis.start()
    await asyncio.sleep(1.5)
    load.stop()
    await task

    assert during_outage > 50  # ...but the redirects kept coming
    assert load.errors == 0
    assert set(load.statuses) == {302}
    sent = len(load.statuses)
    assert service.wait_count("clicks", sent, "link_slug = 'outage'", timeout=60) == sent
    unique = service.sql("SELECT uniqExact(click_id) AS n FROM tracker.clicks")[0]["n"]
    assert unique == sent
    # everything replayed: the spool files are empty again
    spools = list((service.folder / "data" / "spool").glob("*.spool"))
    assert spools and all(p.stat().st_size == 0 for p in spools)


async def test_edge_killed_while_redis_down_replays_spool_on_restart(service: Service):
    service.serve()
    service.add_link("spool", campaign_id="spool")
    service.stop("serve")

    service.start_sink()
    service.redis.stop()
    service.start_edges(1)
    statuses = await hit_many(f"{service.base_url}/c/spool", 500, concurrency=10)
    assert statuses.count(302) == 500
    spool = service.folder / "data" / "spool" / "edge-0.spool"
    wait_until(lambda: spool.exists() and spool.stat().st_size > 0, 5, "the spool file")
    time.sleep(0.2)  # let the last batch reach the spool (flush every 5 ms)
    service.signal("edge-0", signal.SIGKILL)  # a crash: nothing flushed on the way out
    service.procs["edge-0"].wait(10)

    service.redis.start()
    service.start_edges(1)  # the same worker index finds its spool and replays it
    assert service.wait_count("clicks", 500, "link_slug = 'spool'") == 500


async def test_sink_killed_mid_batch_then_restarted_counts_exactly(service: Service):
    # small batches so that the kill lands between inserts and acknowledgements
    service.env["TRACKER_SINK_READ_ENTRIES"] = "5"
    service.env["TRACKER_WRITER_BATCH_MAX_EVENTS"] = "20"
    service.start_edges(2)
    service.start_sink()
    service.add_link("crash", campaign_id="crash")
    # a backlog: clicks arrive while no sink runs
    service.stop("sink")
    statuses = await hit_many(f"{service.base_url}/c/crash", 6000, concurrency=50)
    assert statuses.count(302) == 6000

    for _ in range(3):  # three crashes at different points
        service.spawn("sink", "sink")
        wait_until(
            lambda: service._query_up() and service.count("clicks") > 0, 30, "the sink to insert"
        )
        service.signal("sink", signal.SIGKILL)
        service.procs["sink"].wait(10)
    service.start_sink()
    assert service.wait_count("clicks", 6000, "link_slug = 'crash'") == 6000
    assert service.sql("SELECT uniqExact(click_id) AS n FROM tracker.clicks")[0]["n"] == 6000


@pytest.mark.parametrize("stop_signal", [signal.SIGTERM, signal.SIGINT])
async def test_clean_stop_under_load_loses_nothing(service: Service, stop_signal):
    proc = service.serve()
    service.add_link("stop", campaign_id="stop")
    load = Load(f"{service.base_url}/c/stop", clients=32)
    task = asyncio.create_task(load.run())
    await asyncio.sleep(2.0)
    proc.send_signal(stop_signal)
    assert await asyncio.to_thread(proc.wait, 60) == 0
    load.stop()
    await task

    acknowledged = load.statuses.count(302)
    assert acknowledged > 100 and set(load.statuses) == {302}
    service.start_sink()  # the data is on disk: a fresh sink answers for it
    assert service.wait_count("clicks", acknowledged, "link_slug = 'stop'") == acknowledged
    assert service.redis.client().xlen("trk:events:{s0}") == 0  # drained before exit


@pytest.mark.skipif(not can_mount(), reason="mounting a tmpfs needs root (as in CI)")
async def test_full_spool_disk_during_redis_outage_is_counted_then_recovers(service: Service):
    """Redis down and the spool's disk full: clicks still redirect, the lost ones are
    counted, /readyz says why; once the disk has room and Redis is back, recording resumes
    in the same processes."""
    service.env["TRACKER_WORKERS"] = "1"
    # room for every click after the fault even if a slow Redis (a loaded machine) sends
    # some of them to the spool: 64 KB is less than one busy batch, which then was dropped
    with small_disk(service.folder / "data" / "spool", size_kb=2048) as disk:
        service.serve()
        service.add_link("full", campaign_id="full")
        filler = fill_disk(disk)
        service.redis.stop()
        statuses = await hit_many(f"{service.base_url}/c/full", 300, concurrency=10)
        assert statuses.count(302) == 300
        wait_until(
            lambda: value(scrape(f"{service.base_url}/metrics"), DROPPED) > 0, 10, "drops counted"
        )
        status, body = service.api("GET", "/readyz")
        assert status == 503 and any("events dropped" in p for p in body["problems"])

        filler.unlink()
        service.redis.start()
        wait_until(lambda: service.api("GET", "/readyz")[0] == 200, 30, "ready again")
        statuses = await hit_many(f"{service.base_url}/c/full", 200, concurrency=10)
        assert statuses.count(302) == 200
        time.sleep(1.5)  # the drop counter is published once a second
        dropped = int(value(scrape(f"{service.base_url}/metrics"), DROPPED))
        assert 0 < dropped <= 300
        kept = 500 - dropped
        assert service.wait_count("clicks", kept, "link_slug = 'full'") == kept
        service.stop_all()


async def test_edge_and_sink_stop_cleanly_on_sigint(service: Service):
    """Ctrl-C on a process started alone (`tracker edge`, `tracker sink`): the same clean
    stop as SIGTERM, nothing acknowledged lost."""
    service.start_edges(1)
    service.start_sink()
    service.add_link("int", campaign_id="int")
    load = Load(f"{service.base_url}/c/int", clients=8)
    task = asyncio.create_task(load.run())
    await wait_for(lambda: len(load.statuses) > 200, "clicks under load")
    service.signal("edge-0", signal.SIGINT)
    assert await asyncio.to_thread(service.wait_exit, "edge-0") == 0
    load.stop()
    await task
    acknowledged = load.statuses.count(302)
    assert acknowledged > 200 and set(load.statuses) == {302}
    service.signal("sink", signal.SIGINT)
    assert await asyncio.to_thread(service.wait_exit, "sink") == 0
    service.start_sink()
    assert service.wait_count("clicks", acknowledged, "link_slug = 'int'") == acknowledged


@pytest.mark.parametrize("fast_path", ["true", "false"])
async def test_an_edge_stops_reading_while_redis_takes_its_events_slower_than_they_come(
    service: Service, fast_path: str
):
    """Redis answers, but later than clicks arrive (here: frozen, under a long timeout, so
    nothing goes to the spool): the edge would pile up full batches in memory. Past
    `writer.max_waiting_batches` it stops reading requests (aiohttp's routes: its handlers
    wait), so the clients wait; once Redis takes the batches it reads again. Every click
    answered is stored."""
    batch, waiting = 5, 2
    service.env.update(
        TRACKER_WRITER_BATCH_MAX_EVENTS=str(batch),
        TRACKER_WRITER_MAX_WAITING_BATCHES=str(waiting),
        TRACKER_REDIS_TIMEOUT_SECONDS="60",
        TRACKER_HTTP_FAST_PATH=fast_path,
    )
    service.start_edges(1)
    service.start_sink()
    service.add_link("held", campaign_id="held")
    url = f"{service.base_url}/c/held"
    probes: list[int] = []  # until the edge knows the link (the probe's click is stored)
    wait_until(lambda: probes.append(get_status_location(url)[0]) or probes[-1] == 302, 30, "link")
    clients = 16
    load = Load(url, clients=clients)
    frozen_ms = int(time.time() * 1000)
    service.redis.proc.send_signal(signal.SIGSTOP)
    try:
        task = asyncio.create_task(load.run())
        await asyncio.sleep(1.5)
    finally:
        thawed_ms = int(time.time() * 1000)
        service.redis.proc.send_signal(signal.SIGCONT)
    await wait_for(lambda: len(load.statuses) > 200, "reading again")
    load.stop()
    await task
    assert set(load.statuses) == {302}
    answered = len(load.statuses) + probes.count(302)
    assert service.wait_count("clicks", answered, "link_slug = 'held'") == answered
    # what the edge took in while Redis was frozen (counted where it was stored): a batch
    # in flight, `waiting` + 1 full ones, one being filled, and at most a request per
    # client read meanwhile; without the hold, thousands a second
    [during] = service.sql(
        "SELECT count() AS n FROM tracker.clicks WHERE link_slug = 'held' AND event_time "
        f"BETWEEN fromUnixTimestamp64Milli({frozen_ms}) AND fromUnixTimestamp64Milli({thawed_ms})"
    )
    assert during["n"] <= batch * (waiting + 3) + clients
    await asyncio.sleep(1.5)  # the edge publishes its counters once a second
    assert value(scrape(f"{service.base_url}/metrics"), "tracker_edge_reads_held_total") >= 1


async def test_edge_killed_in_the_middle_of_a_replay_replays_the_rest_once(service: Service):
    """A spool of several chunks; Redis comes back and the replay starts; Redis freezes
    after the first chunk (so the replay is surely half-way) and the edge is killed. The
    restarted edge replays from its saved position: every click stored exactly once."""
    service.start_edges(1)
    service.start_sink()
    service.add_link("mid", campaign_id="mid")
    service.redis.stop()
    sent = 0
    spool = service.folder / "data" / "spool" / "edge-0.spool"
    position = spool.with_name(spool.name + ".pos")
    while not spool.exists() or spool.stat().st_size < 3 * CHUNK_BYTES:  # three chunks
        statuses = await hit_many(f"{service.base_url}/c/mid?sub1={'x' * 500}", 2000, 32)
        assert statuses.count(302) == 2000
        sent += 2000

    service.redis.start()
    await wait_for(
        lambda: position.exists() and int(position.read_text() or 0) > 0, "a chunk replayed", 60
    )
    service.redis.proc.send_signal(signal.SIGSTOP)  # the next chunk hangs half-sent
    try:
        saved = int(position.read_text())
        assert 0 < saved < spool.stat().st_size  # in the middle of the replay
        service.signal("edge-0", signal.SIGKILL)
        service.procs["edge-0"].wait(10)
    finally:
        service.redis.proc.send_signal(signal.SIGCONT)
    service.start_edges(1)  # same worker index: resumes at the saved position
    assert service.wait_count("clicks", sent, "link_slug = 'mid'", timeout=120) == sent
    assert service.sql(
        "SELECT uniqExact(click_id) AS n FROM tracker.clicks WHERE link_slug = 'mid'"
    ) == [{"n": sent}]
    wait_for_sync(lambda: spool.stat().st_size == 0, "the spool emptied")


async def wait_for(predicate, what: str, timeout: float = 30) -> None:
    await asyncio.to_thread(wait_until, predicate, timeout, what, 0.01)


def wait_for_sync(predicate, what: str, timeout: float = 30) -> None:
    wait_until(predicate, timeout, what)


def test_a_second_serve_on_the_same_data_folder_is_refused(service: Service):
    service.serve()
    second = dict(service.env, TRACKER_PORT=str(free_port()))
    run = subprocess.run(
        [sys.executable, "-m", "tracker", "serve"],
        env=second,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 1
    assert "is serving from" in run.stderr and str(service.folder / "data") in run.stderr
    assert service._edge_up()  # the first one is untouched


def test_sigusr1_writes_every_threads_stack_to_the_log_and_keeps_serving(service: Service):
    """How an operator (and the harness, for a process that does not stop) asks a
    process where it is: its stacks go to its log, and it goes on answering."""
    service.start_edges(1)
    service.signal("edge-0", signal.SIGUSR1)
    log = service.logs / "edge-0.log"
    wait_until(lambda: "asyncio tasks:" in log.read_text(errors="replace"), 10, "stacks")
    dump = log.read_text(errors="replace")
    assert "Current thread" in dump and "tracker/edge/server.py" in dump  # the threads
    assert "tracker/edge/writer.py" in dump  # and the tasks, the writer's among them
    assert service.api("GET", "/healthz")[0] == 200
    assert service.stop("edge-0") == 0
