-- Report rollups: hourly aggregates by the common dimensions, fed by materialized views
-- as rows reach the raw tables. Reports read these; the raw tables answer only the
-- breakdowns the rollups lack (see tracker/reports/).
--
-- Exactly once: each rollup keeps insert tokens like the raw tables do, so when the sink
-- inserts a batch again after a crash, ClickHouse skips the view's block too. Rows that
-- were stored before this migration are copied in once: the view is dropped, the rollup
-- emptied and refilled from the raw table, then the view created. Migrations run while
-- the sink inserts nothing (it applies them before consuming, and `tracker migrate`
-- holds the engine the sink inserts through), so no row is counted twice or missed.
--
-- Unique clicks: uniqState over the visitor id (a no-track click, whose visitor id is
-- zero, counts as a visitor of its own).
-- Conversions: a status change is a row with the new status and the previous one; the
-- view books +1 (and +amount) under the new status and -1 under the previous status at
-- the time of the change, so the sums count each conversion by its latest status.

CREATE TABLE IF NOT EXISTS ${db}.clicks_hourly
(
    hour            DateTime('UTC'),
    campaign_id     LowCardinality(String),
    affiliate_id    LowCardinality(String),
    advertiser_id   LowCardinality(String),
    link_slug       LowCardinality(String),
    country         LowCardinality(String),
    device_type     LowCardinality(String),
    clicks          SimpleAggregateFunction(sum, UInt64),
    bot_clicks      SimpleAggregateFunction(sum, UInt64),
    flagged_clicks  SimpleAggregateFunction(sum, UInt64),
    visitors        AggregateFunction(uniq, UUID)
)
ENGINE = AggregatingMergeTree
PARTITION BY toYYYYMM(hour)
ORDER BY (hour, campaign_id, affiliate_id, advertiser_id, link_slug, country, device_type)
TTL hour + INTERVAL ${retention_days} DAY
SETTINGS non_replicated_deduplication_window = ${dedup_window};

DROP VIEW IF EXISTS ${db}.clicks_hourly_mv;

TRUNCATE TABLE IF EXISTS ${db}.clicks_hourly;

INSERT INTO ${db}.clicks_hourly
SELECT toStartOfHour(event_time) AS hour, campaign_id, affiliate_id, advertiser_id, link_slug,
       country, device_type, count() AS clicks, countIf(is_bot = 1) AS bot_clicks,
       countIf(notEmpty(fraud_flags)) AS flagged_clicks,
       uniqState(if(empty(visitor_id), click_id, visitor_id)) AS visitors
FROM ${db}.clicks
GROUP BY hour, campaign_id, affiliate_id, advertiser_id, link_slug, country, device_type;

CREATE MATERIALIZED VIEW IF NOT EXISTS ${db}.clicks_hourly_mv TO ${db}.clicks_hourly AS
SELECT toStartOfHour(event_time) AS hour, campaign_id, affiliate_id, advertiser_id, link_slug,
       country, device_type, count() AS clicks, countIf(is_bot = 1) AS bot_clicks,
       countIf(notEmpty(fraud_flags)) AS flagged_clicks,
       uniqState(if(empty(visitor_id), click_id, visitor_id)) AS visitors
FROM ${db}.clicks
GROUP BY hour, campaign_id, affiliate_id, advertiser_id, link_slug, country, device_type;

CREATE TABLE IF NOT EXISTS ${db}.impressions_hourly
(
    hour            DateTime('UTC'),
    campaign_id     LowCardinality(String),
    affiliate_id    LowCardinality(String),
    link_slug       LowCardinality(String),
    impressions     UInt64
)
ENGINE = SummingMergeTree
PARTITION BY toYYYYMM(hour)
ORDER BY (hour, campaign_id, affiliate_id, link_slug)
TTL hour + INTERVAL ${retention_days} DAY
SETTINGS non_replicated_deduplication_window = ${dedup_window};

DROP VIEW IF EXISTS ${db}.impressions_hourly_mv;

TRUNCATE TABLE IF EXISTS ${db}.impressions_hourly;

INSERT INTO ${db}.impressions_hourly
SELECT toStartOfHour(event_time) AS hour, campaign_id, affiliate_id, link_slug,
       count() AS impressions
FROM ${db}.impressions
GROUP BY hour, campaign_id, affiliate_id, link_slug;

CREATE MATERIALIZED VIEW IF NOT EXISTS ${db}.impressions_hourly_mv TO ${db}.impressions_hourly AS
SELECT toStartOfHour(event_time) AS hour, campaign_id, affiliate_id, link_slug,
       count() AS impressions
FROM ${db}.impressions
GROUP BY hour, campaign_id, affiliate_id, link_slug;

CREATE TABLE IF NOT EXISTS ${db}.conversions_hourly
(
    hour            DateTime('UTC'),
    advertiser_id   LowCardinality(String),
    campaign_id     LowCardinality(String),
    affiliate_id    LowCardinality(String),
    link_slug       LowCardinality(String),
    country         LowCardinality(String),
    device_type     LowCardinality(String),
    currency        LowCardinality(String),
    status          LowCardinality(String),
    conversions     Int64,
    amount          Decimal(38, 3)
)
ENGINE = SummingMergeTree
PARTITION BY toYYYYMM(hour)
ORDER BY (hour, advertiser_id, campaign_id, affiliate_id, link_slug, country, device_type,
          currency, status)
TTL hour + INTERVAL ${retention_days} DAY
SETTINGS non_replicated_deduplication_window = ${dedup_window};

DROP VIEW IF EXISTS ${db}.conversions_hourly_mv;

TRUNCATE TABLE IF EXISTS ${db}.conversions_hourly;

INSERT INTO ${db}.conversions_hourly
SELECT toStartOfHour(event_time) AS hour, advertiser_id, campaign_id, affiliate_id, link_slug,
       country, device_type, currency, change.1 AS status, sum(change.2) AS conversions,
       sum(toDecimal128(amount, 3) * change.2) AS amount
FROM (
    SELECT event_time, advertiser_id, campaign_id, affiliate_id, link_slug, country,
           device_type, currency, amount,
           arrayJoin(arrayFilter(c -> c.1 != '',
                                 [(status, toInt8(1)), (previous_status, toInt8(-1))])) AS change
    FROM ${db}.conversions
)
GROUP BY hour, advertiser_id, campaign_id, affiliate_id, link_slug, country, device_type,
         currency, status;

CREATE MATERIALIZED VIEW IF NOT EXISTS ${db}.conversions_hourly_mv TO ${db}.conversions_hourly AS
SELECT toStartOfHour(event_time) AS hour, advertiser_id, campaign_id, affiliate_id, link_slug,
       country, device_type, currency, change.1 AS status, sum(change.2) AS conversions,
       sum(toDecimal128(amount, 3) * change.2) AS amount
FROM (
    SELECT event_time, advertiser_id, campaign_id, affiliate_id, link_slug, country,
           device_type, currency, amount,
           arrayJoin(arrayFilter(c -> c.1 != '',
                                 [(status, toInt8(1)), (previous_status, toInt8(-1))])) AS change
    FROM ${db}.conversions
)
GROUP BY hour, advertiser_id, campaign_id, affiliate_id, link_slug, country, device_type,
         currency, status;

CREATE TABLE IF NOT EXISTS ${db}.credits_hourly
(
    hour            DateTime('UTC'),
    model           LowCardinality(String),
    campaign_id     LowCardinality(String),
    affiliate_id    LowCardinality(String),
    currency        LowCardinality(String),
    credited        Float64,
    credited_amount Decimal(38, 3)
)
ENGINE = SummingMergeTree
PARTITION BY toYYYYMM(hour)
ORDER BY (hour, model, campaign_id, affiliate_id, currency)
TTL hour + INTERVAL ${retention_days} DAY
SETTINGS non_replicated_deduplication_window = ${dedup_window};

DROP VIEW IF EXISTS ${db}.credits_hourly_mv;

TRUNCATE TABLE IF EXISTS ${db}.credits_hourly;

INSERT INTO ${db}.credits_hourly
SELECT toStartOfHour(event_time) AS hour, model, campaign_id, affiliate_id, currency,
       sum(weight) AS credited, sum(toDecimal128(credited_amount, 3)) AS credited_amount
FROM ${db}.attribution_credits
GROUP BY hour, model, campaign_id, affiliate_id, currency;

CREATE MATERIALIZED VIEW IF NOT EXISTS ${db}.credits_hourly_mv TO ${db}.credits_hourly AS
SELECT toStartOfHour(event_time) AS hour, model, campaign_id, affiliate_id, currency,
       sum(weight) AS credited, sum(toDecimal128(credited_amount, 3)) AS credited_amount
FROM ${db}.attribution_credits
GROUP BY hour, model, campaign_id, affiliate_id, currency
