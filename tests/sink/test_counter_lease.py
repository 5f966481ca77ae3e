"""One sink keeps the fraud counts in its memory (tracker/sink/counter_lease.py): a second
sink under another name is refused, clearly, against real Redis and through `tracker sink`."""

from __future__ import annotations

import subprocess
import sys
import threading

import pytest

from tracker import redis_keys as K
from tracker.sink import counter_lease
from tracker.sink.counter_lease import CounterLease, LeaseHeld
from tracker.testing import wait_until


@pytest.fixture
def r(redis_server):
    client = redis_server.client()
    client.delete(K.FRAUD_COUNTER_LEASE)
    return client


def test_a_second_sink_is_refused_and_the_first_takes_its_lease_back(r):
    CounterLease(r, "sink-a").take()
    with pytest.raises(LeaseHeld, match="'sink-a'.*fraud.counters = \"redis\""):
        CounterLease(r, "sink-b").take()
    CounterLease(r, "sink-a").take()  # restarted under its own name
    assert 0 < r.ttl(K.FRAUD_COUNTER_LEASE) <= counter_lease.TTL_S
    r.delete(K.FRAUD_COUNTER_LEASE)  # sink-a died and its lease ran out
    CounterLease(r, "sink-b").take()
    assert r.get(K.FRAUD_COUNTER_LEASE) == b"sink-b"


def test_a_lease_that_runs_out_goes_to_one_sink_only(r, redis_server):
    # Two sinks reach for a lease as it runs out: each round exactly one may hold it.
    clients = [redis_server.client(), redis_server.client()]
    for round in range(200):
        r.set(K.FRAUD_COUNTER_LEASE, "sink-old", px=1 + round % 3)  # about to run out
        won: list[str] = []
        start = threading.Barrier(2)

        def reach(name: str, client, start: threading.Barrier, won: list[str]) -> None:
            start.wait()
            while True:
                try:
                    CounterLease(client, name).take()
                except LeaseHeld as exc:
                    if "'sink-old'" in str(exc):
                        continue  # not run out yet: try again
                    return
                won.append(name)
                return

        threads = [
            threading.Thread(target=reach, args=(f"sink-{i}", c, start, won))
            for i, c in enumerate(clients)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(10)
        assert len(won) == 1, (round, won)
        assert r.get(K.FRAUD_COUNTER_LEASE) == won[0].encode()


def test_a_sink_that_lost_its_lease_to_another_stops(r, monkeypatch):
    monkeypatch.setattr(counter_lease, "RENEW_S", 0.05)
    stop = threading.Event()
    CounterLease(r, "sink-a").hold(stop)
    wait_until(lambda: r.ttl(K.FRAUD_COUNTER_LEASE) > 0, 5, "the lease")
    assert not stop.wait(0.2)  # renewed, still running
    r.set(K.FRAUD_COUNTER_LEASE, "sink-b")  # cut off past the lease; another sink took it
    assert stop.wait(5)


def test_tracker_sink_refuses_to_start_beside_another(r, redis_server, tmp_path):
    r.set(K.FRAUD_COUNTER_LEASE, "sink-elsewhere", ex=60)
    env = {
        "PATH": "/usr/bin:/bin",
        "TRACKER_DATA_DIR": str(tmp_path),
        "TRACKER_ADMIN_TOKEN": "test-token-0123456789",
        "TRACKER_REDIS_URL": redis_server.url,
        "TRACKER_SINK_CONSUMER": "sink-here",
    }
    done = subprocess.run(
        [sys.executable, "-m", "tracker", "sink"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1
    assert "'sink-elsewhere' keeps the fraud counts in its memory" in done.stderr
    assert not (tmp_path / "clickhouse").exists()  # refused before it opened ClickHouse
