"""A stream entry appended once per batch id, however often it is sent: for a batch whose
first call had an unclear end (a timeout, a cancellation after the command went out) and
is sent again. The batch's marker key is set with the entry; a repeat finds it and appends
nothing. The edges' batches (tracker/edge/writer.py) and the delivery worker's attempt log
(tracker/delivery/worker.py) go through it."""

from __future__ import annotations

# Sets `fresh` for the rest of a script. KEYS[2]: the batch's marker; ARGV[1]: its TTL in
# seconds (0: kept until told otherwise: a batch replayed from an edge's spool).
MARK_ONCE = """
local fresh = redis.call('SET', KEYS[2], '1', 'NX')
if ARGV[1] == '0' then
  redis.call('PERSIST', KEYS[2])
elseif fresh then
  redis.call('EXPIRE', KEYS[2], ARGV[1])
end
"""
# The stream entry alone (KEYS: stream, marker; ARGV: marker TTL as above, then the
# entry's field/value pairs): its id, or false for a repeat. Stream and marker share a
# slot on a Redis Cluster.
XADD_ONCE = (
    MARK_ONCE
    + """
if fresh then
  return redis.call('XADD', KEYS[1], '*', unpack(ARGV, 2))
end
return false
"""
)
