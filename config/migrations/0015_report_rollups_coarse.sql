-- Coarser report rollups beside 0008/0009's: the report planner reads the smallest rollup
-- that has every field a report groups or filters by (tracker/reports/query.py), so a
-- report by campaign reads a few rows per hour instead of one per link, country and
-- device. `*_daily_*` rollups count UTC days: they answer periods of whole UTC days in a
-- zone at UTC+0 (with day, week or month buckets); other zones and hours read the hourly
-- ones. Fed exactly once like 0008's (insert tokens kept; rows stored before copied once).

CREATE TABLE IF NOT EXISTS ${db}.clicks_hourly_campaign
(
    hour            DateTime('UTC'),
    campaign_id     LowCardinality(String),
    advertiser_id   LowCardinality(String),
    clicks          SimpleAggregateFunction(sum, UInt64),
    bot_clicks      SimpleAggregateFunction(sum, UInt64),
    flagged_clicks  SimpleAggregateFunction(sum, UInt64),
    visitors        AggregateFunction(uniq, UUID)
)
ENGINE = AggregatingMergeTree
PARTITION BY toYYYYMM(hour)
ORDER BY (hour, campaign_id, advertiser_id)
TTL hour + INTERVAL ${retention_days} DAY
SETTINGS non_replicated_deduplication_window = ${dedup_window};

DROP VIEW IF EXISTS ${db}.clicks_hourly_campaign_mv;

TRUNCATE TABLE IF EXISTS ${db}.clicks_hourly_campaign;

INSERT INTO ${db}.clicks_hourly_campaign
SELECT toStartOfHour(event_time) AS hour, campaign_id, advertiser_id,
       count() AS clicks, countIf(is_bot = 1) AS bot_clicks,
       countIf(notEmpty(fraud_flags)) AS flagged_clicks,
       uniqState(if(empty(visitor_id), click_id, visitor_id)) AS visitors
FROM ${db}.clicks
GROUP BY hour, campaign_id, advertiser_id;

CREATE MATERIALIZED VIEW IF NOT EXISTS ${db}.clicks_hourly_campaign_mv TO ${db}.clicks_hourly_campaign AS
SELECT toStartOfHour(event_time) AS hour, campaign_id, advertiser_id,
       count() AS clicks, countIf(is_bot = 1) AS bot_clicks,
       countIf(notEmpty(fraud_flags)) AS flagged_clicks,
       uniqState(if(empty(visitor_id), click_id, visitor_id)) AS visitors
FROM ${db}.clicks
GROUP BY hour, campaign_id, advertiser_id;

CREATE TABLE IF NOT EXISTS ${db}.clicks_daily_geo
(
    day             Date,
    campaign_id     LowCardinality(String),
    affiliate_id    LowCardinality(String),
    advertiser_id   LowCardinality(String),
    country         LowCardinality(String),
    clicks          SimpleAggregateFunction(sum, UInt64),
    bot_clicks      SimpleAggregateFunction(sum, UInt64),
    flagged_clicks  SimpleAggregateFunction(sum, UInt64),
    visitors        AggregateFunction(uniq, UUID)
)
ENGINE = AggregatingMergeTree
PARTITION BY toYYYYMM(day)
ORDER BY (day, campaign_id, affiliate_id, advertiser_id, country)
TTL day + INTERVAL ${retention_days} DAY
SETTINGS non_replicated_deduplication_window = ${dedup_window};

DROP VIEW IF EXISTS ${db}.clicks_daily_geo_mv;

TRUNCATE TABLE IF EXISTS ${db}.clicks_daily_geo;

INSERT INTO ${db}.clicks_daily_geo
SELECT toDate(event_time, 'UTC') AS day, campaign_id, affiliate_id, advertiser_id, country,
       count() AS clicks, countIf(is_bot = 1) AS bot_clicks,
       countIf(notEmpty(fraud_flags)) AS flagged_clicks,
       uniqState(if(empty(visitor_id), click_id, visitor_id)) AS visitors
FROM ${db}.clicks
GROUP BY day, campaign_id, affiliate_id, advertiser_id, country;

CREATE MATERIALIZED VIEW IF NOT EXISTS ${db}.clicks_daily_geo_mv TO ${db}.clicks_daily_geo AS
SELECT toDate(event_time, 'UTC') AS day, campaign_id, affiliate_id, advertiser_id, country,
       count() AS clicks, countIf(is_bot = 1) AS bot_clicks,
       countIf(notEmpty(fraud_flags)) AS flagged_clicks,
       uniqState(if(empty(visitor_id), click_id, visitor_id)) AS visitors
FROM ${db}.clicks
GROUP BY day, campaign_id, affiliate_id, advertiser_id, country;

CREATE TABLE IF NOT EXISTS ${db}.conversions_hourly_campaign
(
    hour            DateTime('UTC'),
    advertiser_id   LowCardinality(String),
    campaign_id     LowCardinality(String),
    currency        LowCardinality(String),
    status          LowCardinality(String),
    conversions     Int64,
    amount          Decimal(38, 3)
)
ENGINE = SummingMergeTree
PARTITION BY toYYYYMM(hour)
ORDER BY (hour, advertiser_id, campaign_id, currency, status)
TTL hour + INTERVAL ${retention_days} DAY
SETTINGS non_replicated_deduplication_window = ${dedup_window};

DROP VIEW IF EXISTS ${db}.conversions_hourly_campaign_mv;

TRUNCATE TABLE IF EXISTS ${db}.conversions_hourly_campaign;

INSERT INTO ${db}.conversions_hourly_campaign
SELECT toStartOfHour(event_time) AS hour, advertiser_id, campaign_id, currency,
       change.1 AS status, sum(change.2) AS conversions,
       sum(toDecimal128(amount, 3) * change.2) AS amount
FROM (
    SELECT event_time, advertiser_id, campaign_id, affiliate_id, link_slug, country,
           device_type, currency, amount,
           arrayJoin(arrayFilter(c -> c.1 != '',
                                 [(status, toInt8(1)), (previous_status, toInt8(-1))])) AS change
    FROM ${db}.conversions
)
GROUP BY hour, advertiser_id, campaign_id, currency, status;

CREATE MATERIALIZED VIEW IF NOT EXISTS ${db}.conversions_hourly_campaign_mv TO ${db}.conversions_hourly_campaign AS
SELECT toStartOfHour(event_time) AS hour, advertiser_id, campaign_id, currency,
       change.1 AS status, sum(change.2) AS conversions,
       sum(toDecimal128(amount, 3) * change.2) AS amount
FROM (
    SELECT event_time, advertiser_id, campaign_id, affiliate_id, link_slug, country,
           device_type, currency, amount,
           arrayJoin(arrayFilter(c -> c.1 != '',
                                 [(status, toInt8(1)), (previous_status, toInt8(-1))])) AS change
    FROM ${db}.conversions
)
GROUP BY hour, advertiser_id, campaign_id, currency, status;

CREATE TABLE IF NOT EXISTS ${db}.conversions_daily_geo
(
    day             Date,
    advertiser_id   LowCardinality(String),
    campaign_id     LowCardinality(String),
    affiliate_id    LowCardinality(String),
    country         LowCardinality(String),
    currency        LowCardinality(String),
    status          LowCardinality(String),
    conversions     Int64,
    amount          Decimal(38, 3)
)
ENGINE = SummingMergeTree
PARTITION BY toYYYYMM(day)
ORDER BY (day, advertiser_id, campaign_id, affiliate_id, country, currency, status)
TTL day + INTERVAL ${retention_days} DAY
SETTINGS non_replicated_deduplication_window = ${dedup_window};

DROP VIEW IF EXISTS ${db}.conversions_daily_geo_mv;

TRUNCATE TABLE IF EXISTS ${db}.conversions_daily_geo;

INSERT INTO ${db}.conversions_daily_geo
SELECT toDate(event_time, 'UTC') AS day, advertiser_id, campaign_id, affiliate_id, country, currency,
       change.1 AS status, sum(change.2) AS conversions,
       sum(toDecimal128(amount, 3) * change.2) AS amount
FROM (
    SELECT event_time, advertiser_id, campaign_id, affiliate_id, link_slug, country,
           device_type, currency, amount,
           arrayJoin(arrayFilter(c -> c.1 != '',
                                 [(status, toInt8(1)), (previous_status, toInt8(-1))])) AS change
    FROM ${db}.conversions
)
GROUP BY day, advertiser_id, campaign_id, affiliate_id, country, currency, status;

CREATE MATERIALIZED VIEW IF NOT EXISTS ${db}.conversions_daily_geo_mv TO ${db}.conversions_daily_geo AS
SELECT toDate(event_time, 'UTC') AS day, advertiser_id, campaign_id, affiliate_id, country, currency,
       change.1 AS status, sum(change.2) AS conversions,
       sum(toDecimal128(amount, 3) * change.2) AS amount
FROM (
    SELECT event_time, advertiser_id, campaign_id, affiliate_id, link_slug, country,
           device_type, currency, amount,
           arrayJoin(arrayFilter(c -> c.1 != '',
                                 [(status, toInt8(1)), (previous_status, toInt8(-1))])) AS change
    FROM ${db}.conversions
)
GROUP BY day, advertiser_id, campaign_id, affiliate_id, country, currency, status;

CREATE TABLE IF NOT EXISTS ${db}.commissions_hourly_campaign
(
    hour            DateTime('UTC'),
    advertiser_id   LowCardinality(String),
    campaign_id     LowCardinality(String),
    currency        LowCardinality(String),
    status          LowCardinality(String),
    payout          Decimal(38, 3),
    revenue         Decimal(38, 3)
)
ENGINE = SummingMergeTree
PARTITION BY toYYYYMM(hour)
ORDER BY (hour, advertiser_id, campaign_id, currency, status)
TTL hour + INTERVAL ${retention_days} DAY
SETTINGS non_replicated_deduplication_window = ${dedup_window};

DROP VIEW IF EXISTS ${db}.commissions_hourly_campaign_mv;

TRUNCATE TABLE IF EXISTS ${db}.commissions_hourly_campaign;

INSERT INTO ${db}.commissions_hourly_campaign
SELECT toStartOfHour(event_time) AS hour, advertiser_id, campaign_id, currency, status,
       sum(toDecimal128(payout, 3)) AS payout, sum(toDecimal128(revenue, 3)) AS revenue
FROM ${db}.commissions
GROUP BY hour, advertiser_id, campaign_id, currency, status;

CREATE MATERIALIZED VIEW IF NOT EXISTS ${db}.commissions_hourly_campaign_mv TO ${db}.commissions_hourly_campaign AS
SELECT toStartOfHour(event_time) AS hour, advertiser_id, campaign_id, currency, status,
       sum(toDecimal128(payout, 3)) AS payout, sum(toDecimal128(revenue, 3)) AS revenue
FROM ${db}.commissions
GROUP BY hour, advertiser_id, campaign_id, currency, status
