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

from . import fastpath, tracking
from .app import HANDLER_ARGS, create_app
from .config import Settings

log = logging.getLogger(__name__)


async def serve(settings: Settings, worker_index: int, stop: asyncio.Event | None = None) -> None:
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    app = create_app(settings, worker_index)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=5, **HANDLER_ARGS)
    await runner.setup()
    fast = None
    if settings.http.fast_path:
        # aiohttp serves what the fast path hands over, on the same connection
        fast, connections = await fastpath.serve(
            app[tracking.EDGE], runner.server, settings.http.host, settings.http.port
        )
    else:
        site = web.TCPSite(
            runner, settings.http.host, settings.http.port, reuse_port=True, backlog=4096
        )
        await site.start()
    log.info("edge %d listening on %s:%d%s", worker_index, settings.http.host,
             settings.http.port, " (fast path)" if fast else "")
    await stop.wait()
    log.info("edge %d stopping", worker_index)
    app[tracking.EDGE].accepting = False  # from here on no click is answered
    if fast:
        fast.close()  # stop accepting; answers in flight are already written
        for connection in list(connections):
            connection.transport.close()
        await fast.wait_closed()
    await runner.cleanup()  # aiohttp's connections, then the writer flushes


def run(settings: Settings, worker_index: int) -> None:
    uvloop.run(serve(settings, worker_index))
