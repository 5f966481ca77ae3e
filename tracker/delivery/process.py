"""The sender worker process (`tracker deliver`). SIGTERM / SIGINT: stop taking new
deliveries, let calls in flight end, write the attempt log, exit 0."""

from __future__ import annotations

import asyncio
import logging
import signal
import socket

from tracker import stacks
from tracker.config import Settings
from tracker.delivery.worker import Worker
from tracker.redis_connection import async_client

log = logging.getLogger(__name__)


async def _main(settings: Settings) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    stacks.on_signal_dump_tasks(loop)
    redis = async_client(settings.redis.url, timeout=5.0)
    worker = Worker(redis, settings.deliveries, consumer=f"sender-{socket.gethostname()}")
    log.info("delivery worker %s running", worker.consumer)
    try:
        await worker.run(stop)
    finally:
        await redis.aclose()
        log.info("delivery worker stopped after %d attempts", worker.attempts)


def run(settings: Settings) -> None:
    asyncio.run(_main(settings))
