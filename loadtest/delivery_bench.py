"""Delivery throughput: N postbacks through the real worker (its own event loop, as in
`tracker deliver`) to a receiver in another process answering 200 at once, Redis on this
machine. Prints deliveries per second.

    python -m loadtest.delivery_bench [N]
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tracker import redis_keys as K
from tracker.config import DeliverySettings
from tracker.delivery import queue
from tracker.delivery import targets as T
from tracker.delivery.worker import Worker
from tracker.redis_connection import async_client
from tracker.testing import RedisServer, free_port

RECEIVER = """
import sys
from aiohttp import web
async def ok(request):
    return web.Response(text="ok")
app = web.Application()
app.router.add_get("/{tail:.*}", ok)
web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), print=None)
"""


async def run(count: int, url: str, redis_url: str) -> float:
    client = async_client(redis_url, timeout=5.0)
    settings = DeliverySettings(allowed_networks=["127.0.0.0/8"], concurrency=64)
    worker = Worker(client, settings, consumer="bench")
    stop = asyncio.Event()
    started = time.perf_counter()
    task = asyncio.create_task(worker.run(stop))
    while True:
        await asyncio.sleep(0.05)
        if worker.attempts >= count:
            break
    elapsed = time.perf_counter() - started
    stop.set()
    await task
    await client.aclose()
    return elapsed


def main() -> None:
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 5000
    with tempfile.TemporaryDirectory() as folder:
        redis = RedisServer(Path(folder))
        redis.start()
        port = free_port()
        receiver = subprocess.Popen([sys.executable, "-c", RECEIVER, str(port)])
        try:
            time.sleep(1.0)
            sync = redis.client()
            target = T.validate(
                {
                    "id": "b",
                    "kind": "postback",
                    "affiliate_id": "a",
                    "url": f"http://127.0.0.1:{port}/pb?t={{txid}}",
                }
            )
            T.create(sync, target)
            jobs = [
                {
                    "id": f"job-{n}",
                    "target_id": "b",
                    "kind": "postback",
                    "trigger": "accepted",
                    "conversion_id": "0190a0b0-0000-7000-8000-000000000001",
                    "method": "GET",
                    "url": f"http://127.0.0.1:{port}/pb?t={n}",
                    "body": "",
                    "attempt": 0,
                    "created_ms": 0,
                }
                for n in range(count)
            ]
            for start in range(0, count, 1000):
                queue.enqueue(sync, jobs[start : start + 1000])
            elapsed = asyncio.run(run(count, target.url, redis.url))
            assert sync.xlen(K.DELIVERY_STREAM) == 0
            print(f"{count} deliveries in {elapsed:.2f}s: {count / elapsed:.0f}/s")
        finally:
            receiver.terminate()
            redis.stop()


if __name__ == "__main__":
    main()
