"""The current time, as one seam.

Code that decides by the clock (an event's time, a signature's age, a hold period's end)
takes a `Clock` and defaults to the system's, so a test can pin time at a minute or hour
boundary, or move it past a window, instead of hoping the run does not cross one.
"""

from __future__ import annotations

import time
from collections.abc import Callable

Clock = Callable[[], float]  # seconds since the epoch, UTC

system_clock: Clock = time.time


def clock_ms(clock: Clock) -> int:
    """The clock in integer milliseconds (event times are UTC with ms precision)."""
    return int(clock() * 1000)


class FixedClock:
    """A clock that stands still until told to move (tests, replays)."""

    def __init__(self, at: float) -> None:
        self.at = at

    def __call__(self) -> float:
        return self.at

    def advance(self, seconds: float) -> None:
        self.at += seconds
