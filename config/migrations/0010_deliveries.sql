-- Postbacks out and webhooks: one row per delivery attempt (the sender worker appends
-- them to the events stream; the sink inserts them like any other event).
CREATE TABLE IF NOT EXISTS ${db}.deliveries
(
    event_time      DateTime64(3, 'UTC'),
    delivery_id     String,
    target_id       LowCardinality(String),
    kind            LowCardinality(String),
    trigger         LowCardinality(String),
    conversion_id   UUID,
    affiliate_id    LowCardinality(String),
    campaign_id     LowCardinality(String),
    attempt         UInt16,
    outcome         LowCardinality(String),
    status_code     UInt16,
    latency_ms      UInt32,
    error           String,
    url             String,
    next_attempt_at Nullable(DateTime64(3, 'UTC')),
    inserted_at     DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = MergeTree
PARTITION BY toYYYYMM(event_time)
ORDER BY (target_id, event_time, delivery_id, attempt)
TTL toDateTime(event_time) + INTERVAL ${retention_days} DAY
SETTINGS non_replicated_deduplication_window = ${dedup_window};
