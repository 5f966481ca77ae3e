-- Clicks, impressions, orphan visits and the links mirror.
-- Placeholders: ${db}, ${retention_days}, ${dedup_window}.
-- MergeTree keeps the last ${dedup_window} insert tokens, so a batch the sink inserts
-- again after a crash is recognised and skipped (see README, "Exactly once").

CREATE TABLE IF NOT EXISTS ${db}.clicks
(
    event_time      DateTime64(3, 'UTC'),
    click_id        UUID,
    visitor_id      UUID,
    new_visitor     UInt8,
    link_slug       LowCardinality(String),
    campaign_id     LowCardinality(String),
    affiliate_id    LowCardinality(String),
    advertiser_id   LowCardinality(String),
    sub1            String,
    sub2            String,
    sub3            String,
    sub4            String,
    sub5            String,
    utm_source      LowCardinality(String),
    utm_medium      LowCardinality(String),
    utm_campaign    String,
    utm_term        String,
    utm_content     String,
    gclid           String,
    fbclid          String,
    msclkid         String,
    ip              IPv6,
    user_agent      String,
    referer         String,
    accept_language LowCardinality(String),
    request_url     String,
    destination_url String,
    method          LowCardinality(String),
    inserted_at     DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = MergeTree
PARTITION BY toYYYYMM(event_time)
ORDER BY (campaign_id, event_time, click_id)
TTL toDateTime(event_time) + INTERVAL ${retention_days} DAY
SETTINGS non_replicated_deduplication_window = ${dedup_window};

CREATE TABLE IF NOT EXISTS ${db}.impressions
(
    event_time      DateTime64(3, 'UTC'),
    impression_id   UUID,
    visitor_id      UUID,
    link_slug       LowCardinality(String),
    campaign_id     LowCardinality(String),
    affiliate_id    LowCardinality(String),
    sub1            String,
    sub2            String,
    sub3            String,
    sub4            String,
    sub5            String,
    ip              IPv6,
    user_agent      String,
    referer         String,
    request_url     String,
    method          LowCardinality(String),
    inserted_at     DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = MergeTree
PARTITION BY toYYYYMM(event_time)
ORDER BY (campaign_id, event_time, impression_id)
TTL toDateTime(event_time) + INTERVAL ${retention_days} DAY
SETTINGS non_replicated_deduplication_window = ${dedup_window};

CREATE TABLE IF NOT EXISTS ${db}.orphan_visits
(
    event_time      DateTime64(3, 'UTC'),
    visit_id        UUID,
    visitor_id      UUID,
    link_slug       String,
    reason          LowCardinality(String),
    route           LowCardinality(String),
    ip              IPv6,
    user_agent      String,
    referer         String,
    request_url     String,
    method          LowCardinality(String),
    inserted_at     DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = MergeTree
PARTITION BY toYYYYMM(event_time)
ORDER BY (reason, event_time, visit_id)
TTL toDateTime(event_time) + INTERVAL ${retention_days} DAY
SETTINGS non_replicated_deduplication_window = ${dedup_window};

-- One row per change; the newest updated_at per slug wins (query with FINAL).
CREATE TABLE IF NOT EXISTS ${db}.links
(
    slug            String,
    destination     String,
    campaign_id     LowCardinality(String),
    affiliate_id    LowCardinality(String),
    advertiser_id   LowCardinality(String),
    status          LowCardinality(String),
    created_at      DateTime64(3, 'UTC'),
    updated_at      DateTime64(3, 'UTC')
)
ENGINE = ReplacingMergeTree(updated_at)
ORDER BY slug
SETTINGS non_replicated_deduplication_window = ${dedup_window};
