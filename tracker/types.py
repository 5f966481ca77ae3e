"""Types shared across the seams: the Redis clients, and the rows the edge writes.

The row types are TypedDicts (plain dicts at run time, so the hot path pays nothing):
their keys are the ClickHouse columns, and tests/test_records.py checks the rows built
in tracker/records.py against the migrations.
"""

from __future__ import annotations

from typing import Any, NotRequired, TypeAlias, TypedDict

import redis
import redis.asyncio as aredis
from redis.asyncio.client import Pipeline as AsyncPipelineOne
from redis.asyncio.cluster import ClusterPipeline as AsyncClusterPipeline
from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster
from redis.client import Pipeline as SyncPipelineOne
from redis.cluster import ClusterPipeline, RedisCluster
from redis.typing import EncodableT, FieldT

# A Redis client as the configuration makes it: one server, or a Redis Cluster.
AsyncRedis: TypeAlias = "aredis.Redis | AsyncRedisCluster"
SyncRedis: TypeAlias = "redis.Redis | RedisCluster"
# A pipeline of either client (commands are queued the same way on both).
AnyPipeline: TypeAlias = (
    "SyncPipelineOne | ClusterPipeline | AsyncPipelineOne | AsyncClusterPipeline"
)

# A stream entry's fields as redis-py's XADD takes them.
StreamFields: TypeAlias = dict[FieldT, EncodableT]

# An events stream entry as the sink reads it: (entry id, {field: value}).
StreamEntry: TypeAlias = tuple[bytes, dict[bytes, bytes]]

# A row bound for one ClickHouse table, as JSONEachRow: column name -> value.
Row: TypeAlias = dict[str, Any]


class SubParams(TypedDict):
    """The affiliate's sub-ids, passed through on clicks, impressions and conversions."""

    sub1: str
    sub2: str
    sub3: str
    sub4: str
    sub5: str


class ClickRow(SubParams):
    """A `clicks` row as the edge writes it (the sink adds the enrichment columns)."""

    ip_key: NotRequired[str]  # the fraud rules' keyed hash of the full address (not stored)
    route_rule: NotRequired[str]  # a link with routing rules: the rule that decided
    variant: NotRequired[str]  # ... and the split's variant
    event_time: str
    click_id: str
    visitor_id: str
    new_visitor: int
    link_slug: str
    campaign_id: str
    affiliate_id: str
    advertiser_id: str
    utm_source: str
    utm_medium: str
    utm_campaign: str
    utm_term: str
    utm_content: str
    gclid: str
    fbclid: str
    msclkid: str
    ip: str
    user_agent: str
    referer: str
    accept_language: str
    request_url: str
    destination_url: str
    method: str


class ClickRecord(SubParams):
    """What Redis keeps of a click for the lookback window (JSON; conversions read it)."""

    click_id: str
    visitor_id: str
    ts: int  # ms since the epoch
    link_slug: str
    campaign_id: str
    affiliate_id: str
    advertiser_id: str


class ImpressionRow(SubParams):
    event_time: str
    impression_id: str
    visitor_id: str
    link_slug: str
    campaign_id: str
    affiliate_id: str
    ip: str
    user_agent: str
    referer: str
    request_url: str
    method: str


class OrphanRow(TypedDict):
    event_time: str
    visit_id: str
    visitor_id: str
    link_slug: str
    reason: str  # a tracker.reasons.OrphanVisit
    route: str
    ip: str
    user_agent: str
    referer: str
    request_url: str
    method: str


class ConversionRow(SubParams):
    event_time: str
    conversion_id: str
    advertiser_id: str
    txid: str
    event: str
    status: str
    previous_status: str
    amount: str  # Decimal as text: never through float
    currency: str
    click_id: str
    visitor_id: str
    click_time: str
    link_slug: str
    campaign_id: str
    affiliate_id: str
    attributed: int
    unattributed_reason: str  # a tracker.reasons.UnattributedReason, or ""
    source: str
    ip: str
    user_agent: str
    advertiser_payout: NotRequired[str]  # only when the advertiser names the payout
    deferred: NotRequired[int]  # 1: the sink finds the click in ClickHouse (not stored)
