"""The click pipeline on a real 3-master Redis Cluster, end to end, with exact counts."""

from __future__ import annotations

import shutil
import signal
import subprocess
from types import SimpleNamespace

import aiohttp
import pytest
import redis
from redis.cluster import RedisCluster

from tracker import redis_keys as K
from tracker.redis_connection import HiredisPacking, async_client
from tracker.testing import BROWSER_UA, Service, hit_many, wait_until


def cluster_port(taken: list[int]) -> int:
    """A free port whose cluster bus port (port + 10000) is free and valid too."""
    import socket

    for port in range(20000, 45000, 7):
        if port in taken:
            continue
        try:
            with socket.socket() as a, socket.socket() as b:
                a.bind(("127.0.0.1", port))
                b.bind(("127.0.0.1", port + 10000))
            return port
        except OSError:
            continue
    raise RuntimeError("no free port pair for a cluster node")


@pytest.fixture
def redis_cluster(tmp_path):
    binary, cli = shutil.which("redis-server"), shutil.which("redis-cli")
    assert binary and cli, "redis-server and redis-cli are needed (make test installs them)"
    ports: list[int] = []
    for _ in range(3):
        ports.append(cluster_port(ports))
    nodes: dict[int, subprocess.Popen] = {}

    def start(port: int) -> None:
        """Start (or restart, with its nodes.conf and AOF) the node on `port`."""
        folder = tmp_path / f"node-{port}"
        folder.mkdir(exist_ok=True)
        nodes[port] = subprocess.Popen(
            [
                binary,
                "--port",
                str(port),
                "--bind",
                "127.0.0.1",
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                "nodes.conf",
                "--dir",
                str(folder),
                "--appendonly",
                "yes",
                "--save",
                "",
                "--loglevel",
                "warning",
            ],
            stdout=subprocess.DEVNULL,
        )

    def stop(port: int) -> None:
        nodes[port].terminate()
        nodes[port].wait(10)

    try:
        for port in ports:
            start(port)

        def answers(port):
            return (
                subprocess.run(
                    [cli, "-p", str(port), "ping"], capture_output=True, text=True
                ).stdout.strip()
                == "PONG"
            )

        for port in ports:
            wait_until(lambda p=port: answers(p), 10, f"redis node {port}")
        subprocess.run(
            [
                cli,
                "--cluster",
                "create",
                *[f"127.0.0.1:{p}" for p in ports],
                "--cluster-replicas",
                "0",
                "--cluster-yes",
            ],
            check=True,
            capture_output=True,
            timeout=60,
        )

        def ready():
            return all(
                "cluster_state:ok"
                in subprocess.run(
                    [cli, "-p", str(p), "cluster", "info"], capture_output=True, text=True
                ).stdout
                for p in ports
            )

        wait_until(ready, 30, "the cluster to be ready")
        yield SimpleNamespace(
            url=f"redis+cluster://127.0.0.1:{ports[0]}/",
            ports=ports,
            client=lambda: RedisCluster(host="127.0.0.1", port=ports[0]),
            stop=stop,
            start=start,
            answers=answers,
            ready=ready,
        )
    finally:  # also when setting up failed half-way
        for node in nodes.values():
            node.terminate()
        for node in nodes.values():
            node.wait(10)


async def test_clicks_and_conversions_through_a_redis_cluster(tmp_path, redis_cluster):
    service = Service(tmp_path / "svc", redis_cluster, TRACKER_REDIS_STREAM_SHARDS="3")
    try:
        service.start_edges(2)
        service.start_sink()
        service.add_link("cl", "https://shop.example/?c={click_id}", campaign_id="cl")
        assert (
            service.api(
                "POST", "/api/advertisers", {"id": "shop", "token": "adv-token-0123456789abcdef"}
            )[0]
            == 201
        )
        statuses = await hit_many(f"{service.base_url}/c/cl?sub1=cluster", 3000, concurrency=32)
        assert statuses.count(302) == 3000

        # the sink is killed mid-way and restarted: still exactly once
        wait_until(lambda: service.count("clicks") > 0, 30, "the first rows")
        service.signal("sink", signal.SIGKILL)
        service.procs["sink"].wait(10)
        statuses = await hit_many(f"{service.base_url}/c/cl?sub1=cluster", 1000, concurrency=16)
        assert statuses.count(302) == 1000
        service.start_sink()
        assert service.wait_count("clicks", 4000, "sub1 = 'cluster'", timeout=60) == 4000

        # a conversion, attributed from records spread over the nodes
        async with aiohttp.ClientSession(headers={"User-Agent": BROWSER_UA}) as session:
            async with session.get(f"{service.base_url}/c/cl", allow_redirects=False) as r:
                click_id = r.headers["Location"].rsplit("c=", 1)[1]
            async with session.get(
                f"{service.base_url}/postback?advertiser=shop&token=adv-token-0123456789abcdef"
                f"&click_id={click_id}&txid=cluster-1&amount=12.50"
            ) as r:
                body = await r.json()
        assert body["status"] == "accepted" and body["attributed"], body
        service.wait_count("attribution_credits", 5, f"conversion_id = '{body['conversion_id']}'")

        # the keys are spread over the three masters, and every shard carried events
        per_node = [redis.Redis(port=p).dbsize() for p in redis_cluster.ports]
        assert all(n > 0 for n in per_node), per_node
        client = redis_cluster.client()
        for shard in range(3):
            groups = client.xinfo_groups(K.events_stream(shard))
            assert groups and groups[0]["entries-read"] > 0
    finally:
        service.stop_all()


async def test_cluster_outage_spools_and_replays_exactly_once(tmp_path, redis_cluster):
    """Every master of the cluster goes away under load: the clicks still redirect, go
    to the spool, and are replayed once the cluster is back, each stored once."""
    service = Service(tmp_path / "svc", redis_cluster, TRACKER_REDIS_STREAM_SHARDS="3")
    try:
        service.start_edges(2)
        service.start_sink()
        service.add_link("out", campaign_id="out")
        before = await hit_many(f"{service.base_url}/c/out", 500, concurrency=16)
        for port in redis_cluster.ports:
            redis_cluster.stop(port)
        during = await hit_many(f"{service.base_url}/c/out", 1500, concurrency=16)
        folder = service.folder / "data" / "spool"
        wait_until(
            lambda: sum(p.stat().st_size for p in folder.glob("*.spool")) > 0,
            10,
            "clicks in the spool",
        )
        for port in redis_cluster.ports:
            redis_cluster.start(port)
        for port in redis_cluster.ports:
            wait_until(lambda p=port: redis_cluster.answers(p), 10, f"redis node {port}")
        wait_until(redis_cluster.ready, 30, "the cluster to be ready again")
        after = await hit_many(f"{service.base_url}/c/out", 500, concurrency=16)
        assert before.count(302) + during.count(302) + after.count(302) == 2500
        assert service.wait_count("clicks", 2500, "link_slug = 'out'", timeout=120) == 2500
        assert service.sql(
            "SELECT uniqExact(click_id) AS n FROM tracker.clicks WHERE link_slug = 'out'"
        ) == [{"n": 2500}]
        wait_until(
            lambda: all(p.stat().st_size == 0 for p in folder.glob("*.spool")),
            30,
            "the spools replayed",
        )
    finally:
        service.stop_all()


async def test_cluster_connections_pack_with_hiredis(redis_cluster):
    """The edge's cluster client packs commands in C too, on every node it discovers."""
    client = async_client(redis_cluster.url, 5.0)
    try:
        for n in range(30):  # keys in many slots: every master is reached
            await client.set(f"k{n}", f"välue {n}")
        pipe = client.pipeline()
        for n in range(30):
            pipe.get(f"k{n}")
        assert await pipe.execute() == [f"välue {n}".encode() for n in range(30)]
        nodes = client.get_nodes()
        assert len(nodes) == 3
        connections = [c for node in nodes for c in node._connections]
        assert connections and all(isinstance(c, HiredisPacking) for c in connections)
    finally:
        await client.aclose()
