"""The durable delivery queue in Redis: a stream of deliveries due now (read by the
sender worker through a consumer group, so a delivery taken by a worker that died is
taken again), a sorted set of deliveries waiting for their next attempt, and a hash of
dead letters. A delivery moves between them in one script or transaction, so it is
always in exactly one place (at least once, never lost).
"""

from __future__ import annotations

from typing import Any

import orjson

from tracker import redis_keys as K

JOB_FIELD = b"job"

# KEYS: stream, then one "seen" key per job; ARGV: ttl, then the jobs. A job whose seen
# key exists (a replayed sink batch) is not enqueued again.
ENQUEUE = """
local n = 0
for i = 2, #KEYS do
  if redis.call('SET', KEYS[i], '1', 'NX', 'EX', ARGV[1]) then
    redis.call('XADD', KEYS[1], '*', 'job', ARGV[i])
    n = n + 1
  end
end
return n
"""

# KEYS: retry zset, stream; ARGV: now ms, limit. Deliveries whose time has come go back
# into the stream.
MOVE_DUE = """
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, ARGV[2])
for _, job in ipairs(due) do
  redis.call('XADD', KEYS[2], '*', 'job', job)
  redis.call('ZREM', KEYS[1], job)
end
return #due
"""

# KEYS: dead hash, stream; ARGV: id, job. A dead letter back into the queue, once.
REPLAY = """
if redis.call('HDEL', KEYS[1], ARGV[1]) == 1 then
  redis.call('XADD', KEYS[2], '*', 'job', ARGV[2])
  return 1
end
return 0
"""


def enqueue(redis: Any, jobs: list[dict]) -> int:
    """Append deliveries to the queue (each delivery id once); how many were new."""
    if not jobs:
        return 0
    keys = [K.DELIVERY_STREAM] + [K.delivery_seen_key(job["id"]) for job in jobs]
    args = [K.DELIVERY_SEEN_TTL] + [orjson.dumps(job) for job in jobs]
    return int(redis.eval(ENQUEUE, len(keys), *keys, *args))


def dead_letters(redis: Any) -> list[dict]:
    jobs = [orjson.loads(raw) for raw in redis.hvals(K.DELIVERY_DEAD_HASH)]
    return sorted(jobs, key=lambda job: job.get("dead_ms", 0))


def replay(redis: Any, delivery_id: str) -> bool:
    """A dead letter back into the queue with a fresh attempt count; False if there is
    no such dead letter."""
    raw = redis.hget(K.DELIVERY_DEAD_HASH, delivery_id)
    if raw is None:
        return False
    job = orjson.loads(raw)
    for key in ("dead_ms", "last_outcome", "last_error", "last_status"):
        job.pop(key, None)
    job["attempt"] = 0
    job["replays"] = int(job.get("replays", 0)) + 1
    keys = [K.DELIVERY_DEAD_HASH, K.DELIVERY_STREAM]
    return bool(redis.eval(REPLAY, len(keys), *keys, delivery_id, orjson.dumps(job)))


def sizes(redis: Any) -> dict[str, int]:
    pipe = redis.pipeline(transaction=False)
    pipe.xlen(K.DELIVERY_STREAM)
    pipe.zcard(K.DELIVERY_RETRY_ZSET)
    pipe.hlen(K.DELIVERY_DEAD_HASH)
    queued, retrying, dead = pipe.execute()
    return {"queued": int(queued), "retrying": int(retrying), "dead": int(dead)}
