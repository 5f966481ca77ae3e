"""A background loop that stops for certain.

Cancelling a task is not enough to stop a loop that catches `Exception` around its step:
on Python 3.11 a cancellation that races a timeout inside the step (`asyncio.wait_for`,
or a client library's own timeout) can come out as a `TimeoutError`, which the loop
catches and survives, and whoever awaits the cancelled task waits forever (an edge that
logged "stopping" and never exited). A `Beat` is the loop's sleep and its stop flag in
one: `while await beat.wait(seconds)` ends once `stop()` is called, cancellation
swallowed or not.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Coroutine
from typing import Any


class Beat:
    def __init__(self) -> None:
        self._stopped = asyncio.Event()
        self._task: asyncio.Task | None = None

    def start(self, loop: Coroutine[Any, Any, Any]) -> asyncio.Task:
        self._task = asyncio.create_task(loop)
        return self._task

    async def wait(self, seconds: float) -> bool:
        """Sleep up to `seconds`; False once stopped, so the loop ends."""
        if not self._stopped.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopped.wait(), seconds)
        return not self._stopped.is_set()

    @property
    def stopped(self) -> bool:
        return self._stopped.is_set()

    @property
    def task(self) -> asyncio.Task | None:
        """The loop's task while it runs (None before `start` and once it has ended)."""
        return self._task if self._task is not None and not self._task.done() else None

    async def stop(self) -> None:
        """End the loop: wake its sleep, cancel its step, and wait until it is over."""
        self._stopped.set()
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
