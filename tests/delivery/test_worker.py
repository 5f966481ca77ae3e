"""The sender worker against a real Redis and real HTTP receivers on this machine: each
delivery arrives, failures are retried with backoff, dead-lettered after the limit and
replayed; timeouts; SSRF refusals; signed webhooks; every attempt logged."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import replace

import orjson
import pytest
from aiohttp import web

from tracker import hot, signing
from tracker import redis_keys as K
from tracker.config import DeliverySettings
from tracker.delivery import queue
from tracker.delivery import targets as T
from tracker.delivery.enqueue import Enqueuer
from tracker.delivery.jobs import jobs_for
from tracker.delivery.worker import Worker
from tracker.ids import uuid7
from tracker.redis_connection import async_client
from tracker.testing import free_port

CONV = "0190a0b0-0000-7000-8000-000000000001"

FAST = DeliverySettings(
    timeout_seconds=1.0,
    max_attempts=3,
    backoff_base_seconds=0.05,
    backoff_max_seconds=0.2,
    concurrency=8,
    max_response_bytes=64,
    allowed_networks=["127.0.0.0/8"],
)


class Receiver:
    """An HTTP server whose answers a test scripts: `plan` is a list of actions taken in
    turn (an int status, "hang", or "slow"); the last one repeats."""

    def __init__(self, plan: list) -> None:
        self.plan = list(plan)
        self.requests: list[dict] = []
        self.release = asyncio.Event()
        self.port = free_port()

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        self.requests.append(
            {
                "at": time.monotonic(),
                "method": request.method,
                "path": request.path,
                "query": request.query_string,
                "url": str(request.rel_url),
                "headers": dict(request.headers),
                "body": body,
            }
        )
        action = self.plan.pop(0) if len(self.plan) > 1 else self.plan[0]
        if action == "hang":
            await self.release.wait()
            return web.Response(status=200)
        if action == "redirect":
            raise web.HTTPFound("http://127.0.0.1:1/elsewhere")
        return web.Response(status=action, text="x" * 10_000)

    async def __aenter__(self) -> Receiver:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self.handle)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", self.port).start()
        return self

    async def __aexit__(self, *exc) -> None:
        self.release.set()
        await self.runner.cleanup()


async def wait_for(predicate: Callable[[], object], timeout: float = 10, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


def row(**kw) -> dict:
    return {
        "conversion_id": CONV,
        "status": "pending",
        "previous_status": "",
        "txid": "t1",
        "event": "purchase",
        "amount": "10.00",
        "currency": "USD",
        "click_id": "",
        "campaign_id": "camp",
        "affiliate_id": "aff",
        **kw,
    }


@pytest.fixture
def sync_redis(redis_server):
    return redis_server.client()


async def run_worker(redis_server, settings: DeliverySettings):
    client = async_client(redis_server.url, timeout=5.0)
    worker = Worker(client, settings, consumer="test-sender")
    stop = asyncio.Event()
    task = asyncio.create_task(worker.run(stop))

    async def finish() -> None:
        stop.set()
        await asyncio.wait_for(task, 15)
        await client.aclose()

    return worker, finish


def add_target(redis, **data) -> T.Target:
    target = T.validate(data)
    assert T.create(redis, target)
    return target


def postback_target(redis, id: str, url: str) -> T.Target:
    """A postback target of affiliate `aff` (every affiliate here)."""
    return add_target(redis, id=id, kind="postback", affiliate_id="aff", url=url)


def logged(redis) -> list[dict]:
    rows = []
    for _, fields in redis.xrange(K.EVENTS_STREAM):
        if b"deliveries" in fields:
            rows += [orjson.loads(line) for line in fields[b"deliveries"].split(b"\n")]
    return rows


async def test_500_then_200_is_retried_with_backoff_and_delivered(redis_server, sync_redis):
    async with Receiver([500, 503, 200]) as rx:
        target = postback_target(
            sync_redis, "pb", f"http://127.0.0.1:{rx.port}/pb?tx={{txid}}&s={{status}}"
        )
        jobs = jobs_for([row()], [target], clicks={}, payouts={}, ms=1)
        assert queue.enqueue(sync_redis, jobs) == 1
        worker, finish = await run_worker(redis_server, FAST)
        try:
            await wait_for(lambda: len(rx.requests) == 3, what="three attempts")
            await wait_for(lambda: sync_redis.xlen(K.DELIVERY_STREAM) == 0, what="ack")
        finally:
            await finish()
    assert all(r["url"] == "/pb?tx=t1&s=pending" for r in rx.requests)
    assert {r["headers"]["Idempotency-Key"] for r in rx.requests} == {jobs[0]["id"]}
    gaps = [b["at"] - a["at"] for a, b in zip(rx.requests, rx.requests[1:], strict=False)]
    assert gaps[0] >= FAST.backoff_base_seconds / 2  # waited before retrying
    rows = logged(sync_redis)
    assert [(r["attempt"], r["outcome"], r["status_code"]) for r in rows] == [
        (1, "http_error", 500),
        (2, "http_error", 503),
        (3, "delivered", 200),
    ]
    assert rows[0]["next_attempt_at"] and rows[2]["next_attempt_at"] is None
    assert len(rows[0]["error"]) <= 300  # the reply was read only up to a bound
    assert sync_redis.zcard(K.DELIVERY_RETRY_ZSET) == 0
    assert sync_redis.hlen(K.DELIVERY_DEAD_HASH) == 0


async def test_dead_letter_after_the_limit_then_replay(redis_server, sync_redis):
    async with Receiver([500, 500, 500, 200]) as rx:
        target = postback_target(sync_redis, "pb", f"http://127.0.0.1:{rx.port}/x")
        jobs = jobs_for([row()], [target], clicks={}, payouts={}, ms=1)
        queue.enqueue(sync_redis, jobs)
        worker, finish = await run_worker(redis_server, FAST)
        try:
            await wait_for(lambda: sync_redis.hlen(K.DELIVERY_DEAD_HASH) == 1, what="dead letter")
            assert len(rx.requests) == FAST.max_attempts
            dead = queue.dead_letters(sync_redis)[0]
            assert dead["id"] == jobs[0]["id"] and dead["last_status"] == 500
            assert dead["attempt"] == FAST.max_attempts
            await asyncio.sleep(0.3)
            assert len(rx.requests) == FAST.max_attempts  # nothing more once dead
            assert queue.replay(sync_redis, jobs[0]["id"])
            assert not queue.replay(sync_redis, jobs[0]["id"])  # replayed once
            await wait_for(lambda: len(rx.requests) == FAST.max_attempts + 1, what="replay")
            await wait_for(lambda: sync_redis.xlen(K.DELIVERY_STREAM) == 0, what="ack")
        finally:
            await finish()
    outcomes = [(r["attempt"], r["outcome"]) for r in logged(sync_redis)]
    assert outcomes == [(1, "http_error"), (2, "http_error"), (3, "http_error"), (1, "delivered")]
    assert sync_redis.hlen(K.DELIVERY_DEAD_HASH) == 0


async def test_timeouts_and_refused_connections_are_retried(redis_server, sync_redis):
    closed = free_port()  # nothing listens there
    async with Receiver(["hang"]) as rx:
        hang = postback_target(sync_redis, "hang", f"http://127.0.0.1:{rx.port}/h")
        refused = postback_target(sync_redis, "closed", f"http://127.0.0.1:{closed}/c")
        settings = replace(FAST, timeout_seconds=0.3, max_attempts=2)
        queue.enqueue(sync_redis, jobs_for([row()], [hang, refused], clicks={}, payouts={}, ms=1))
        worker, finish = await run_worker(redis_server, settings)
        try:
            await wait_for(lambda: sync_redis.hlen(K.DELIVERY_DEAD_HASH) == 2, what="both dead")
        finally:
            await finish()
    by_target: dict[str, list] = {}
    for r in logged(sync_redis):
        by_target.setdefault(r["target_id"], []).append(r["outcome"])
    assert by_target == {"hang": ["timeout", "timeout"], "closed": ["connection_error"] * 2}


async def test_an_entry_read_again_while_in_flight_is_not_attempted_twice(redis_server, sync_redis):
    """After a Redis error the worker reads its own pending entries again (from "0"),
    and may claim entries back: one still in flight must not get a second attempt."""
    async with Receiver(["hang"]) as rx:
        hang = postback_target(sync_redis, "hang", f"http://127.0.0.1:{rx.port}/h")
        settings = replace(FAST, timeout_seconds=1.0, max_attempts=1)
        queue.enqueue(sync_redis, jobs_for([row()], [hang], clicks={}, payouts={}, ms=1))
        worker, finish = await run_worker(redis_server, settings)
        try:
            await wait_for(lambda: len(rx.requests) == 1, what="the first attempt in flight")
            await worker.take(await worker.read("0"))  # as after a Redis error
            await wait_for(lambda: sync_redis.hlen(K.DELIVERY_DEAD_HASH) == 1, what="dead")
        finally:
            await finish()
    assert len(rx.requests) == 1
    assert [r["outcome"] for r in logged(sync_redis)] == ["timeout"]


async def test_a_conversions_events_reach_a_target_in_order(redis_server, sync_redis):
    """Its first report and its approval, queued together: the approval waits for the
    first to be answered, so the partner never hears "approved" before "pending"."""
    async with Receiver(["hang", 200]) as rx:
        target = postback_target(sync_redis, "pb", f"http://127.0.0.1:{rx.port}/pb?st={{status}}")
        rows = [row(), row(status="approved", previous_status="pending")]
        queue.enqueue(sync_redis, jobs_for(rows, [target], clicks={}, payouts={}, ms=1))
        worker, finish = await run_worker(redis_server, FAST)
        try:
            await wait_for(lambda: len(rx.requests) == 1, what="the first report sent")
            await asyncio.sleep(0.3)  # time enough for a concurrent second call to arrive
            assert len(rx.requests) == 1
            rx.release.set()
            await wait_for(lambda: len(rx.requests) == 2, what="the approval sent")
        finally:
            await finish()
    assert [r["query"] for r in rx.requests] == ["st=pending", "st=approved"]


async def test_redirects_are_not_followed(redis_server, sync_redis):
    async with Receiver(["redirect"]) as rx:
        target = postback_target(sync_redis, "pb", f"http://127.0.0.1:{rx.port}/r")
        queue.enqueue(sync_redis, jobs_for([row()], [target], clicks={}, payouts={}, ms=1))
        worker, finish = await run_worker(redis_server, replace(FAST, max_attempts=1))
        try:
            await wait_for(lambda: sync_redis.hlen(K.DELIVERY_DEAD_HASH) == 1, what="dead")
        finally:
            await finish()
    assert len(rx.requests) == 1
    assert queue.dead_letters(sync_redis)[0]["last_status"] == 302


async def test_ssrf_destinations_are_refused_unless_allowed(redis_server, sync_redis):
    async with Receiver([200]) as rx:
        targets = [
            postback_target(sync_redis, "loop", f"http://127.0.0.1:{rx.port}/a"),
            postback_target(sync_redis, "name", f"http://localhost:{rx.port}/b"),
            postback_target(sync_redis, "meta", "http://169.254.169.254/latest/meta-data/"),
            add_target(sync_redis, id="v6", kind="webhook", url=f"http://[::1]:{rx.port}/c"),
        ]
        queue.enqueue(sync_redis, jobs_for([row()], targets, clicks={}, payouts={}, ms=1))
        strict = replace(FAST, allowed_networks=[])  # the default: nothing non-public
        worker, finish = await run_worker(redis_server, strict)
        try:
            await wait_for(lambda: sync_redis.hlen(K.DELIVERY_DEAD_HASH) == 4, what="refusals")
        finally:
            await finish()
        assert rx.requests == []  # nothing reached the receiver
        outcomes = {r["target_id"]: r["outcome"] for r in logged(sync_redis)}
        assert outcomes == dict.fromkeys(["loop", "name", "meta", "v6"], "blocked_address")
        # allowed by config (as the tests' loopback receivers are): delivered
        for dead in queue.dead_letters(sync_redis):
            queue.replay(sync_redis, dead["id"])
        worker, finish = await run_worker(redis_server, FAST)
        try:
            await wait_for(lambda: len(rx.requests) == 2, what="loopback deliveries")
        finally:
            await finish()
    with pytest.raises(T.TargetError, match="http"):
        T.validate({"id": "f", "kind": "webhook", "url": "file:///etc/passwd"})
    with pytest.raises(T.TargetError, match="http"):
        T.validate({"id": "g", "kind": "webhook", "url": "gopher://127.0.0.1:6379/_INFO"})


async def test_webhook_is_signed_and_idempotent(redis_server, sync_redis):
    async with Receiver([200]) as rx:
        hook = add_target(
            sync_redis, id="crm", kind="webhook", url=f"http://127.0.0.1:{rx.port}/hooks/in?src=trk"
        )
        jobs = jobs_for([row(status="approved")], [hook], clicks={}, payouts={}, ms=1)
        assert [j["trigger"] for j in jobs] == ["accepted", "approved"]
        queue.enqueue(sync_redis, jobs)
        assert queue.enqueue(sync_redis, jobs) == 0  # a replayed sink batch: enqueued once
        worker, finish = await run_worker(redis_server, FAST)
        try:
            await wait_for(lambda: len(rx.requests) == 2, what="two webhooks")
        finally:
            await finish()
    for request in rx.requests:
        headers = request["headers"]
        assert request["method"] == "POST" and headers["Content-Type"] == "application/json"
        refusal = signing.verify(
            hook.secret,
            headers[signing.SIGNATURE_HEADER],
            headers[signing.TIMESTAMP_HEADER],
            "POST",
            request["path"],
            request["query"],
            request["body"],
            now=time.time(),
            window=300,
        )
        assert refusal is None
        body = orjson.loads(request["body"])
        assert body["id"] == headers["Idempotency-Key"]
        assert body["data"]["conversion_id"] == CONV
    assert {orjson.loads(r["body"])["type"] for r in rx.requests} == {
        "conversion.accepted",
        "conversion.approved",
    }
    wrong = signing.verify(
        "another-secret-0123456789",
        rx.requests[0]["headers"][signing.SIGNATURE_HEADER],
        rx.requests[0]["headers"][signing.TIMESTAMP_HEADER],
        "POST",
        rx.requests[0]["path"],
        rx.requests[0]["query"],
        rx.requests[0]["body"],
        now=time.time(),
        window=300,
    )
    assert wrong is not None


async def test_a_worker_that_died_mid_delivery_leaves_it_to_the_next(redis_server, sync_redis):
    async with Receiver(["hang", 200]) as rx:
        target = postback_target(sync_redis, "pb", f"http://127.0.0.1:{rx.port}/p")
        queue.enqueue(sync_redis, jobs_for([row()], [target], clicks={}, payouts={}, ms=1))
        slow = replace(FAST, timeout_seconds=30)
        worker, finish = await run_worker(redis_server, slow)
        await wait_for(lambda: len(rx.requests) == 1, what="the first attempt")
        for task in list(worker.inflight):  # the process dies: nothing settled, no ack
            task.cancel()
        await finish()
        assert sync_redis.xpending(K.DELIVERY_STREAM, K.DELIVERY_GROUP)["pending"] == 1
        worker, finish = await run_worker(redis_server, FAST)  # same consumer restarts
        try:
            await wait_for(lambda: len(rx.requests) == 2, what="the delivery taken again")
            await wait_for(lambda: sync_redis.xlen(K.DELIVERY_STREAM) == 0, what="ack")
        finally:
            await finish()


def test_enqueuer_reads_targets_subs_and_payouts(redis_server, sync_redis):
    click_id = uuid7()
    hot.put(sync_redis, [{"click_id": click_id, "sub1": "aff-click-9"}])
    enqueue = Enqueuer(sync_redis, refresh=0)
    rows = [orjson.dumps(row(click_id=click_id))]
    assert enqueue(rows, []) == 0  # no targets: nothing, and no Redis reads of clicks
    postback_target(sync_redis, "pb", "https://p.example/?c={sub1}&p={payout}")
    commission = {
        "conversion_id": CONV,
        "level": 1,
        "affiliate_id": "aff",
        "status": "pending",
        "step": "pending",
        "payout": "1.500",
    }
    assert enqueue(rows, [orjson.dumps(commission)]) == 1
    assert enqueue(rows, [orjson.dumps(commission)]) == 0  # the same batch again
    _, fields = sync_redis.xrange(K.DELIVERY_STREAM)[0]
    job = orjson.loads(fields[b"job"])
    assert job["url"] == "https://p.example/?c=aff-click-9&p=1.500"
    assert enqueue([orjson.dumps(row(affiliate_id="other"))], []) == 0


class AnsweredTooLate:
    """The real Redis, but the first script call's answer never arrives: the command went
    out and ran, then the call timed out (or the stop cancelled the flush loop mid-call)."""

    def __init__(self, client) -> None:
        self.client = client
        self.cut = False

    def __getattr__(self, name):
        return getattr(self.client, name)

    async def eval(self, *args):
        reply = await self.client.eval(*args)
        if not self.cut:
            self.cut = True
            raise TimeoutError("the answer did not come in time")
        return reply


async def test_an_attempt_log_flush_cut_off_after_it_went_out_is_logged_once(
    redis_server, sync_redis
):
    sync_redis.delete(K.EVENTS_STREAM)
    client = async_client(redis_server.url, timeout=5.0)
    worker = Worker(AnsweredTooLate(client), FAST, consumer="test-sender")
    rows = [{"delivery_id": f"d{i}", "outcome": "delivered"} for i in range(3)]
    worker.log_rows = [orjson.dumps(r) for r in rows]
    with pytest.raises(TimeoutError):
        await worker.flush_log()
    worker.log_rows.append(orjson.dumps({"delivery_id": "d3", "outcome": "timeout"}))
    await worker.flush_log()  # the same chunk again, as itself, then the new row
    await client.aclose()
    assert [r["delivery_id"] for r in logged(sync_redis)] == ["d0", "d1", "d2", "d3"]
    assert sync_redis.xlen(K.EVENTS_STREAM) == 2  # the cut-off chunk once, then the new row
