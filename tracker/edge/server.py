"""One edge process: the aiohttp app on uvloop, sharing the port with its siblings.

SIGTERM / SIGINT: stop accepting, let requests in flight finish, then the cleanup
contexts flush the writer (to Redis, or the spool) before the process exits 0.
"""

from __future__ import annotations

import asyncio
import logging
import signal

import uvloop
from aiohttp import web

from tracker import stacks
from tracker.clock import Clock, system_clock
from tracker.config import Settings
from tracker.edge import fastpath
from tracker.edge.app import create_app
from tracker.edge.keys import CLICKS
from tracker.http_limits import MAX_FIELD, MAX_LINE

log = logging.getLogger(__name__)


async def serve(
    settings: Settings,
    worker_index: int,
    stop: asyncio.Event | None = None,
    clock: Clock = system_clock,
) -> None:
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    stacks.on_signal_dump_tasks(loop)
    app = create_app(settings, worker_index, clock)
    runner = web.AppRunner(
        app,
        access_log=None,
        shutdown_timeout=5,
        max_line_size=MAX_LINE,  # the fast path has the same bounds
        max_field_size=MAX_FIELD,
    )
    await runner.setup()
    site: web.BaseSite
    if settings.http.fast_path:
        # aiohttp serves what the fast path hands over, on the same connection
        site = fastpath.FastPathSite(runner, app[CLICKS], settings.http.host, settings.http.port)
    else:
        site = web.TCPSite(
            runner, settings.http.host, settings.http.port, reuse_port=True, backlog=4096
        )
    await site.start()
    log.info("edge %d listening on %s", worker_index, site.name)
    await stop.wait()
    log.info("edge %d stopping", worker_index)
    app[CLICKS].accepting = False  # from here on no click is answered
    # The runner stops its site (the fast path closes its connections), then aiohttp's
    # connections, then the cleanup contexts unwind: the writer flushes while Redis is open.
    await runner.cleanup()


def run(settings: Settings, worker_index: int, clock: Clock = system_clock) -> None:
    uvloop.run(serve(settings, worker_index, clock=clock))
