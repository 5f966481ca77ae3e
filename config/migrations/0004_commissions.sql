-- Commissions mirrored from the ledger (the SQL store holds the money; this copy is for
-- analysts and reports). The sink writes the rows of each conversion status step once,
-- with the batch's insert token (a replayed step sends the same rows; ClickHouse skips).
--
-- Rows move money between status buckets like a ledger: a step books -x under the
-- status the commission leaves and +x under the one it enters, so
--   sum(payout) ... GROUP BY status
-- is what is currently pending / approved / rejected / reversed, and a conversion is
-- counted by its latest status. Level 0 rows carry the conversion's revenue (what the
-- advertiser owes) and, when no commission is paid, the reason; levels 1-3 carry the
-- commissions (payout). Margin = sum(revenue) - sum(payout) within one currency.
CREATE TABLE IF NOT EXISTS ${db}.commissions
(
    event_time      DateTime64(3, 'UTC'),
    conversion_id   UUID,
    commission_id   String,
    advertiser_id   LowCardinality(String),
    campaign_id     LowCardinality(String),
    affiliate_id    LowCardinality(String),
    level           UInt8,
    event           LowCardinality(String),
    step            LowCardinality(String),
    status          LowCardinality(String),
    payout          Decimal(18, 3),
    revenue         Decimal(18, 3),
    currency        LowCardinality(String),
    plan_version    UInt32,
    weight          Float64,
    reason          LowCardinality(String),
    available_at    DateTime64(3, 'UTC'),
    inserted_at     DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = MergeTree
PARTITION BY toYYYYMM(event_time)
ORDER BY (campaign_id, affiliate_id, event_time, conversion_id)
TTL toDateTime(event_time) + INTERVAL ${retention_days} DAY
SETTINGS non_replicated_deduplication_window = ${dedup_window};

-- An explicit payout the advertiser sent (used only where the campaign allows it).
ALTER TABLE ${db}.conversions
    ADD COLUMN IF NOT EXISTS advertiser_payout Nullable(Decimal(18, 3));
