"""Redis key names, stream names and TTLs: the one place they are spelled.

Every key carries a hash tag ({...}) so that each multi-key operation stays in one Redis
Cluster slot.
"""

PREFIX = "trk"

# The events stream, split into `redis.stream_shards` shards (each its own Cluster slot):
# the edge appends one entry per flushed batch to one shard; the sink reads every shard
# through the consumer group below. Shard 0 also carries conversions and link changes.


def events_stream(shard: int = 0) -> str:
    return f"{PREFIX}:events:{{s{shard}}}"


EVENTS_STREAM = events_stream(0)
SINK_GROUP = "sink"

# Links: one hash slug -> JSON, plus a version counter bumped on every change so edges
# reload only when something changed.
LINKS_HASH = f"{PREFIX}:links:{{links}}"
LINKS_VERSION = f"{PREFIX}:links:{{links}}:version"

# Advertisers: id -> JSON (with the postback token), and their version counter.
ADVERTISERS_HASH = f"{PREFIX}:advertisers:{{adv}}"
ADVERTISERS_VERSION = f"{PREFIX}:advertisers:{{adv}}:version"

# Tables of the events carried in a stream entry (entry field name -> ClickHouse table).
TABLES = (
    "clicks", "impressions", "orphan_visits", "links", "conversions", "attribution_credits"
)
BATCH_ID_FIELD = "b"


def click_key(click_id: str) -> str:
    """The click record, kept for the lookback window so a conversion can find it."""
    return f"{PREFIX}:click:{{{click_id}}}"


def visitor_clicks_key(visitor_id: str) -> str:
    """The visitor's touchpoints: sorted set of click ids scored by event time (ms)."""
    return f"{PREFIX}:visitor:{{{visitor_id}}}:clicks"


def batch_marker_key(batch_id: str, shard: int = 0) -> str:
    """Set when a batch is appended to the stream, so a replayed batch is appended once."""
    return f"{PREFIX}:batch:{{s{shard}}}:{batch_id}"


def conversion_key(advertiser_id: str, txid: str) -> str:
    """A conversion's dedup and status record. It shares the events stream's hash tag:
    the status change and its stream entry are written by one script, in one slot."""
    return f"{PREFIX}:conv:{{s0}}:{advertiser_id}:{txid}"


def excluded_click_key(click_id: str) -> str:
    """Set by the sink for a bot- or fraud-flagged click: attribution leaves it out."""
    return f"{PREFIX}:click:{{{click_id}}}:excluded"


# Fraud rule counters (short-lived).
def fraud_ip_minute_key(ip: str, minute: int) -> str:
    return f"{PREFIX}:fraud:ipm:{{{ip}}}:{minute}"


def fraud_ip_hour_key(ip: str, hour: int) -> str:
    return f"{PREFIX}:fraud:iph:{{{ip}}}:{hour}"


def fraud_recent_click_key(visitor_id: str, slug: str) -> str:
    return f"{PREFIX}:fraud:recent:{{{visitor_id}}}:{slug}"
