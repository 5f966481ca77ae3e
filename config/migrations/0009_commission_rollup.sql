-- Report rollup of the commissions mirror (0004): revenue and payout by hour, advertiser,
-- campaign, affiliate, currency and status. Fed exactly once like the rollups of 0008
-- (insert tokens kept; rows stored before this migration copied in once).

CREATE TABLE IF NOT EXISTS ${db}.commissions_hourly
(
    hour            DateTime('UTC'),
    advertiser_id   LowCardinality(String),
    campaign_id     LowCardinality(String),
    affiliate_id    LowCardinality(String),
    currency        LowCardinality(String),
    status          LowCardinality(String),
    payout          Decimal(38, 3),
    revenue         Decimal(38, 3)
)
ENGINE = SummingMergeTree
PARTITION BY toYYYYMM(hour)
ORDER BY (hour, advertiser_id, campaign_id, affiliate_id, currency, status)
TTL hour + INTERVAL ${retention_days} DAY
SETTINGS non_replicated_deduplication_window = ${dedup_window};

DROP VIEW IF EXISTS ${db}.commissions_hourly_mv;

TRUNCATE TABLE IF EXISTS ${db}.commissions_hourly;

INSERT INTO ${db}.commissions_hourly
SELECT toStartOfHour(event_time) AS hour, advertiser_id, campaign_id, affiliate_id, currency,
       status, sum(toDecimal128(payout, 3)) AS payout, sum(toDecimal128(revenue, 3)) AS revenue
FROM ${db}.commissions
GROUP BY hour, advertiser_id, campaign_id, affiliate_id, currency, status;

CREATE MATERIALIZED VIEW IF NOT EXISTS ${db}.commissions_hourly_mv TO ${db}.commissions_hourly AS
SELECT toStartOfHour(event_time) AS hour, advertiser_id, campaign_id, affiliate_id, currency,
       status, sum(toDecimal128(payout, 3)) AS payout, sum(toDecimal128(revenue, 3)) AS revenue
FROM ${db}.commissions
GROUP BY hour, advertiser_id, campaign_id, affiliate_id, currency, status
