"""Background loops stop for certain, even when a step swallows its cancellation."""

import asyncio
import contextlib

import pytest

from tracker.background import Beat


async def swallowing_step() -> None:
    """A step whose cancellation comes out as a TimeoutError, as on Python 3.11 when a
    cancellation races a timeout inside a client library."""
    try:
        await asyncio.sleep(3600)
    except asyncio.CancelledError:
        raise TimeoutError from None


async def test_a_loop_whose_step_swallows_the_cancellation_still_stops():
    beat = Beat()
    steps = 0

    async def loop() -> None:
        nonlocal steps
        while await beat.wait(0):
            steps += 1
            with contextlib.suppress(Exception):  # as every refresh loop does
                await swallowing_step()

    beat.start(loop())
    await asyncio.sleep(0.05)  # inside its first step
    await asyncio.wait_for(beat.stop(), 5)
    assert steps == 1 and beat.stopped


async def test_cancelling_such_a_loop_alone_never_returns():
    """Why Beat exists: the plain cancel-and-await of a `while True` loop hangs."""

    swallowing = True

    async def loop() -> None:
        while swallowing:
            await asyncio.sleep(0)
            with contextlib.suppress(Exception):
                await swallowing_step()

    task = asyncio.create_task(loop())
    await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(asyncio.shield(task), 0.5)
    assert not task.done()
    swallowing = False  # the test's own clean-up: the loop ends after this step
    task.cancel()
    await asyncio.wait_for(task, 5)


async def test_stop_wakes_a_long_sleep_at_once():
    beat = Beat()
    woke = asyncio.Event()

    async def loop() -> None:
        while await beat.wait(3600):
            pass
        woke.set()

    beat.start(loop())
    await asyncio.sleep(0.01)
    await asyncio.wait_for(beat.stop(), 5)
    assert woke.is_set()
