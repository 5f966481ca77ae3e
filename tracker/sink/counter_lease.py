"""One sink keeps the fraud counts in its memory (`fraud.counters = "memory"`): two would
each count their share of the stream and judge by half the clicks. The sink holding the
counts holds this lease in Redis, renewed while it runs; a second sink with another
consumer name is refused at start with a clear error (run several with
`fraud.counters = "redis"`). A sink restarted under its own name takes its lease back; one
that died frees it within `TTL_S`.
"""

from __future__ import annotations

import logging
import threading

from tracker import redis_keys as K
from tracker.redis_connection import UNREACHABLE, as_text
from tracker.types import SyncRedis

log = logging.getLogger(__name__)

TTL_S = 60
RENEW_S = 15
# Take or renew the lease unless another sink holds it, in one step: a GET then a SET
# left a gap in which a lease that had just run out could be taken by two sinks at once.
# Answers nil when this sink holds it now, else the holder's name.
TAKE = """
local holder = redis.call('GET', KEYS[1])
if holder and holder ~= ARGV[1] then
  return holder
end
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
return nil
"""


class LeaseHeld(Exception):
    """Another sink keeps the fraud counts in its memory."""


class CounterLease:
    def __init__(self, redis: SyncRedis, consumer: str) -> None:
        self.redis = redis
        self.consumer = consumer

    def take(self) -> None:
        """Hold the lease (again), or raise LeaseHeld naming the sink that holds it."""
        holder = self.redis.eval(TAKE, 1, K.FRAUD_COUNTER_LEASE, self.consumer, TTL_S)
        if holder is not None:
            raise LeaseHeld(
                f"sink {as_text(holder)!r} keeps the fraud counts in its memory; run one "
                'sink, or set fraud.counters = "redis" for several'
            )

    def hold(self, stop: threading.Event) -> None:
        """Take the lease, waiting for Redis while it is away (as the sink's loop would),
        then keep it (`keep`). Raises LeaseHeld."""
        backoff = 0.2
        while not stop.is_set():
            try:
                self.take()
                break
            except UNREACHABLE as exc:
                log.warning("redis unavailable for the fraud counts lease (%r)", exc)
                stop.wait(backoff)
                backoff = min(backoff * 2, 10.0)
        self.keep(stop)

    def keep(self, stop: threading.Event) -> threading.Thread:
        """Renew the lease every RENEW_S until `stop`; should another sink hold it by then
        (this one was cut off from Redis for longer than TTL_S), set `stop`."""

        def renew() -> None:
            while not stop.wait(RENEW_S):
                try:
                    self.take()
                except LeaseHeld as exc:
                    log.error("%s; this sink stops", exc)
                    stop.set()
                except UNREACHABLE as exc:  # Redis away: the sink's loop waits for it too
                    log.warning("fraud counts lease not renewed (%r)", exc)

        thread = threading.Thread(target=renew, name="fraud-counts-lease", daemon=True)
        thread.start()
        return thread
