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

# API keys: id -> JSON (role, subject, SHA-256 of the secret); see tracker/access.py.
API_KEYS_HASH = f"{PREFIX}:api_keys:{{keys}}"

# The audit log: an append-only stream, never trimmed (tracker/audit.py).
AUDIT_STREAM = f"{PREFIX}:audit:{{audit}}"

# Tables of the events carried in a stream entry (entry field name -> ClickHouse table).
TABLES = (
    "clicks",
    "impressions",
    "orphan_visits",
    "links",
    "conversions",
    "attribution_credits",
    "deliveries",
)
BATCH_ID_FIELD = "b"


# The hot window of click records, visitor paths and exclusion marks (tracker/hot.py):
# per-hour hashes addressed by the click's own time, each shard its own Cluster slot.
# Few shards, so an edge's batch of a hundred clicks writes each hash a dozen clicks at a
# time (64 shards: one or two, a command per click). The count is in every hot key's name
# and the since mark's: a Redis holding another count's hashes is read as holding none of
# them (readers go to ClickHouse; `tracker rebuild-hot` refills the window), never with
# the wrong shards.
HOT_SHARDS = 8
HOT_SINCE = f"{PREFIX}:hot:{{hot}}:since:{HOT_SHARDS}"  # ms from which Redis holds every click


def hot_clicks_key(hour: int, shard: int) -> str:
    """Hash: click id (16 bytes) -> compact click record, for the clicks of one hour."""
    return f"{PREFIX}:clicks:{{h{hour}:{shard}/{HOT_SHARDS}}}"


def hot_excluded_key(hour: int, shard: int) -> str:
    """Set: the bot- or fraud-flagged click ids of that hash (same slot)."""
    return f"{PREFIX}:clicks:{{h{hour}:{shard}/{HOT_SHARDS}}}:x"


def hot_paths_key(hour: int, shard: int) -> str:
    """Hash: visitor id (16 bytes) -> that visitor's click ids in that hour (16 bytes each)."""
    return f"{PREFIX}:paths:{{p{hour}:{shard}/{HOT_SHARDS}}}"


def batch_marker_key(batch_id: str, shard: int = 0) -> str:
    """Set when a batch is appended to the stream, so a replayed batch is appended once."""
    return f"{PREFIX}:batch:{{s{shard}}}:{batch_id}"


# Visitors erased, and when (ms): the sink drops their events still on the way when they
# arrive (in the stream, or in an edge's spool while Redis was away; tracker/privacy_ops.py)
ERASED_VISITORS = f"{PREFIX}:privacy:erased"


def conversion_key(advertiser_id: str, txid: str) -> str:
    """A conversion's dedup and status record. It shares the events stream's hash tag:
    the status change and its stream entry are written by one script, in one slot."""
    return f"{PREFIX}:conv:{{s0}}:{advertiser_id}:{txid}"


# Fraud rule counters (short-lived). The per-IP counters of a window live in a few hashes
# (and one set) per window, sharded by IP, rather than in keys of their own: a field costs
# Redis less to write than a key with its own expiry, and the whole window expires at once.
# Shards per window on a Redis Cluster, spread over its nodes. One Redis takes one hash per
# window: a new hash starts as a listpack, searched field by field until it grows past
# `hash-max-listpack-entries`, so fewer hashes cost less, and one server has nothing to spread.
FRAUD_SHARDS = 16
# the consumer name of the one sink keeping the fraud counts in memory (sink/counter_lease.py)
FRAUD_COUNTER_LEASE = f"{PREFIX}:fraud:memory-lease"


def fraud_ip_minute_key(minute: int, shard: int) -> str:
    """Hash: IP -> clicks in that calendar minute."""
    return f"{PREFIX}:fraud:ipm:{{m{minute}:{shard}}}"


def fraud_ip_visitors_key(hour: int, shard: int) -> str:
    """Set: "IP visitor" pairs seen in that hour from IPs with two visitors or more (same
    slot as the counts below)."""
    return f"{PREFIX}:fraud:ipv:{{h{hour}:{shard}}}"


def fraud_ip_visitor_counts_key(hour: int, shard: int) -> str:
    """Hash: IP -> distinct visitors in that hour, or its one "IP visitor" pair while it
    has had one visitor."""
    return f"{PREFIX}:fraud:iph:{{h{hour}:{shard}}}"


def pixel_rate_key(kind: str, who: str, hour: int) -> str:
    """Counter: conversion pixels of one visitor (kind 'v') or address ('ip') that hour."""
    return f"{PREFIX}:pxrate:{kind}:{{{who}}}:{hour}"


def ip_key_secret(hour: int) -> str:
    """The hour's secret for keyed hashes of client addresses (tracker/ip_privacy.py)."""
    return f"{PREFIX}:ipkey:{hour}"


def fraud_duplicates_key(bucket_seconds: int, bucket: int, shard: int) -> str:
    """Hash: "visitor link" -> the latest event time (ms) of that visitor's clicks on that
    link in one bucket of `bucket_seconds` (the duplicate-click rule). The bucket size is
    in the name: a sink started with another longest window starts afresh."""
    return f"{PREFIX}:fraud:dup:{{d{bucket_seconds}:{bucket}:{shard}}}"


def fraud_duplicate_field(visitor_id: str, slug: str) -> str:
    """The field of a visitor's clicks on a link in `fraud_duplicates_key`'s hashes."""
    return f"{visitor_id} {slug}"


FRAUD_DUPLICATES_PATTERN = f"{PREFIX}:fraud:dup:*"  # SCAN pattern of every duplicate hash


# Postbacks out and webhooks (tracker/delivery/). Everything shares the {dlv} hash tag, so
# the scripts that move a delivery between the queue, the retry schedule and the
# dead-letter hash run in one slot.
DELIVERY_TARGETS_HASH = f"{PREFIX}:dlv:{{dlv}}:targets"  # target id -> JSON
DELIVERY_TARGETS_VERSION = f"{PREFIX}:dlv:{{dlv}}:targets:version"
DELIVERY_STREAM = f"{PREFIX}:dlv:{{dlv}}:queue"  # deliveries due now (consumer group below)
DELIVERY_GROUP = "sender"
DELIVERY_RETRY_ZSET = f"{PREFIX}:dlv:{{dlv}}:retry"  # delivery JSON scored by due time (ms)
DELIVERY_DEAD_HASH = f"{PREFIX}:dlv:{{dlv}}:dead"  # delivery id -> JSON (last error kept)
DELIVERY_SEEN_TTL = 7 * 86400  # a delivery enqueued twice (a replayed sink batch) within it


def delivery_seen_key(delivery_id: str) -> str:
    """Set when a delivery is first enqueued, so a replayed sink batch enqueues it once."""
    return f"{PREFIX}:dlv:{{dlv}}:seen:{delivery_id}"


# Click caps of routed links (tracker/edge/caps.py): counters shared by every edge.
CAP_DAY_TTL = 2 * 86400


def cap_daily_key(slug: str, day: int) -> str:
    """Clicks a capped link sent to its destination on a UTC day (YYYYMMDD)."""
    return f"{PREFIX}:cap:{{{slug}}}:d:{day}"


def cap_total_key(slug: str) -> str:
    return f"{PREFIX}:cap:{{{slug}}}:t"


# Click caps of whole campaigns: campaign id -> JSON (tracker/routing/campaign_caps.py).
CAMPAIGN_CAPS_HASH = f"{PREFIX}:ccaps:{{ccaps}}"
CAMPAIGN_CAPS_VERSION = f"{PREFIX}:ccaps:{{ccaps}}:version"


def campaign_cap_name(campaign_id: str) -> str:
    """The name a campaign's click counters go by in the cap keys (a slug has no ':')."""
    return f"c:{campaign_id}"


# Accepted conversions of each campaign (a campaign's conversion cap, tracker/edge/caps.py):
# counted by the script that accepts a conversion, so the keys share the conversion
# record's {s0} hash tag (one slot on a Cluster, one atomic step). Edges read them back.


def conversion_cap_daily_key(campaign_id: str, day: int) -> str:
    """New conversions of a campaign accepted on a UTC day (YYYYMMDD); CAP_DAY_TTL."""
    return f"{PREFIX}:convcap:{{s0}}:{campaign_id}:d:{day}"


def conversion_cap_total_key(campaign_id: str) -> str:
    return f"{PREFIX}:convcap:{{s0}}:{campaign_id}:t"


def conversion_cap_counted_key(conversion_id: str) -> str:
    """String: this deferred conversion was counted for its campaign's cap (by the sink,
    which only then knows the campaign); CAP_DAY_TTL."""
    return f"{PREFIX}:convcap:{{s0}}:counted:{conversion_id}"
