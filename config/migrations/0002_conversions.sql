-- Conversions and attribution credits.
-- A conversion is identified by conversion_id, stable for its (advertiser_id, txid);
-- each status change is a new row (pending -> approved | rejected, approved -> reversed).
-- Money is Decimal(18, 3) in the row's ISO 4217 currency: never a float.

CREATE TABLE IF NOT EXISTS ${db}.conversions
(
    event_time          DateTime64(3, 'UTC'),
    conversion_id       UUID,
    advertiser_id       LowCardinality(String),
    txid                String,
    event               LowCardinality(String),
    status              LowCardinality(String),
    previous_status     LowCardinality(String),
    amount              Decimal(18, 3),
    currency            LowCardinality(String),
    click_id            UUID,
    visitor_id          UUID,
    click_time          DateTime64(3, 'UTC'),
    link_slug           LowCardinality(String),
    campaign_id         LowCardinality(String),
    affiliate_id        LowCardinality(String),
    attributed          UInt8,
    unattributed_reason LowCardinality(String),
    source              LowCardinality(String),
    sub1                String,
    sub2                String,
    sub3                String,
    sub4                String,
    sub5                String,
    ip                  IPv6,
    user_agent          String,
    inserted_at         DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = MergeTree
PARTITION BY toYYYYMM(event_time)
ORDER BY (advertiser_id, event_time, conversion_id)
TTL toDateTime(event_time) + INTERVAL ${retention_days} DAY
SETTINGS non_replicated_deduplication_window = ${dedup_window};

-- One row per (conversion, model, credited click), written when the conversion is first
-- accepted. Weights of one conversion and model sum to 1; credited amounts sum to the
-- conversion's amount exactly.
CREATE TABLE IF NOT EXISTS ${db}.attribution_credits
(
    event_time          DateTime64(3, 'UTC'),
    conversion_id       UUID,
    model               LowCardinality(String),
    click_id            UUID,
    click_time          DateTime64(3, 'UTC'),
    campaign_id         LowCardinality(String),
    affiliate_id        LowCardinality(String),
    position            UInt16,
    path_length         UInt16,
    weight              Float64,
    credited_amount     Decimal(18, 3),
    currency            LowCardinality(String),
    inserted_at         DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = MergeTree
PARTITION BY toYYYYMM(event_time)
ORDER BY (model, campaign_id, event_time, conversion_id)
TTL toDateTime(event_time) + INTERVAL ${retention_days} DAY
SETTINGS non_replicated_deduplication_window = ${dedup_window};
