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

from tests.system.test_postbacks import ADV_TOKEN, browser, click, postback
from tracker import hot
from tracker import redis_keys as K
from tracker.ids import uuid7, uuid7_time_ms
from tracker.redis_connection import HiredisPacking, async_client, sync_client
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


def credited(service: Service, conversion_id: str) -> list[tuple[str, str]]:
    """(campaign, click) of a conversion's linear credits, oldest click first."""
    rows = service.sql(
        "SELECT campaign_id, toString(click_id) AS click FROM tracker.attribution_credits "
        f"WHERE conversion_id = '{conversion_id}' AND model = 'linear' "
        "ORDER BY click_time, toString(click_id)"
    )
    return [(r["campaign_id"], r["click"]) for r in rows]


async def test_cluster_emptied_loses_no_attribution_and_rebuild_hot_refills_it(
    tmp_path, redis_cluster
):
    """The hot window on a cluster: online attribution, every master's memory flushed
    (conversions deferred to the sink, which reads the clicks from ClickHouse), then
    `tracker rebuild-hot` refills the window and answers are online again, with the
    same credits."""
    service = Service(tmp_path / "svc", redis_cluster, TRACKER_REDIS_STREAM_SHARDS="3")
    try:
        service.start_sink()
        service.start_edges(1)
        assert service.api("POST", "/api/advertisers", {"id": "shop", "token": ADV_TOKEN})[0] == 201
        service.add_link("hc-a", campaign_id="ca", advertiser_id="shop")
        service.add_link("hc-b", campaign_id="cb", advertiser_id="shop")
        async with browser() as session:
            first = await click(session, service.base_url, "hc-a")
            second = await click(session, service.base_url, "hc-b")
            third = await click(session, service.base_url, "hc-a")
            status, body = await postback(session, service.base_url, click_id=third, txid="hc-0")
            assert (status, body["attributed"], body["attribution"]) == (200, True, "online")
            service.wait_count(
                "attribution_credits", 3, f"conversion_id = '{body['conversion_id']}'"
            )
            assert credited(service, body["conversion_id"]) == [
                ("ca", first),
                ("cb", second),
                ("ca", third),
            ]
            service.wait_count("clicks", 3, "link_slug LIKE 'hc-%'")

            # every master loses its memory
            for port in redis_cluster.ports:
                node = redis.Redis(port=port)
                # the running edge and sink write again at once (metrics, their group),
                # so the flush is checked by its reply and by the click records gone
                assert node.flushall()
            client = redis_cluster.client()
            assert hot.get(client, first) is None
            # the operator restores what is not click data (links stay cached in the edge)
            wait_until(
                lambda: (
                    service.api("POST", "/api/advertisers", {"id": "shop", "token": ADV_TOKEN})[0]
                    == 201
                ),
                30,
                "the advertiser stored again",
            )
            status, body = await postback(session, service.base_url, click_id=second, txid="hc-1")
            assert (status, body["status"], body["attribution"]) == (200, "accepted", "deferred")
            service.wait_count(
                "attribution_credits", 2, f"conversion_id = '{body['conversion_id']}'"
            )
            assert credited(service, body["conversion_id"]) == [("ca", first), ("cb", second)]
            [row] = service.sql(
                "SELECT attributed, toString(click_id) AS c, campaign_id FROM tracker.conversions "
                "WHERE txid = 'hc-1'"
            )
            assert row == {"attributed": 1, "c": second, "campaign_id": "cb"}
            # the sink made its consumer groups again and reads every shard
            for shard in range(3):
                groups = client.xinfo_groups(K.events_stream(shard))
                assert any(g["name"] in (K.SINK_GROUP, K.SINK_GROUP.encode()) for g in groups)
            assert hot.get(client, first) is None  # still not in Redis

            rebuilt = service.cli("rebuild-hot", timeout=120)
            assert rebuilt.returncode == 0, rebuilt.stderr
            assert "3 clicks" in rebuilt.stdout, rebuilt.stdout
            for click_id, campaign in ((first, "ca"), (second, "cb"), (third, "ca")):
                assert hot.get(client, click_id)["campaign_id"] == campaign
            assert int(client.get(K.HOT_SINCE)) <= uuid7_time_ms(first)

            status, body = await postback(session, service.base_url, click_id=second, txid="hc-2")
            assert (status, body["attributed"], body["attribution"]) == (200, True, "online")
            service.wait_count(
                "attribution_credits", 2, f"conversion_id = '{body['conversion_id']}'"
            )
            assert credited(service, body["conversion_id"]) == [("ca", first), ("cb", second)]
    finally:
        service.stop_all()


def test_hot_store_writes_records_and_paths_on_a_cluster(redis_cluster):
    """`hot.store` (rebuild-hot's writer) on a cluster: records and paths in many slots."""
    client = sync_client(redis_cluster.url)
    visitor = uuid7()
    records = [
        {"click_id": uuid7(), "visitor_id": visitor, "campaign_id": f"c{n}"} for n in range(40)
    ]
    hot.put(client, records)
    for n, record in enumerate(records):
        assert hot.get(client, record["click_id"])["campaign_id"] == f"c{n}"
    hours = sorted({hot.hour_of(r["click_id"]) for r in records})  # one, unless at :59
    path = [client.hget(hot.path_hash(h, visitor), hot.raw_id(visitor)) for h in hours]
    assert hot.paths_from(path) == [r["click_id"] for r in records]
    assert all(redis.Redis(port=p).dbsize() > 0 for p in redis_cluster.ports)
