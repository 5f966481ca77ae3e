-- Enrichment columns, filled by the sink: geo, device, bot flag, fraud rules.

ALTER TABLE ${db}.clicks
    ADD COLUMN IF NOT EXISTS country      LowCardinality(String),
    ADD COLUMN IF NOT EXISTS region       LowCardinality(String),
    ADD COLUMN IF NOT EXISTS city         LowCardinality(String),
    ADD COLUMN IF NOT EXISTS asn          UInt32,
    ADD COLUMN IF NOT EXISTS as_org       LowCardinality(String),
    ADD COLUMN IF NOT EXISTS device_type  LowCardinality(String),
    ADD COLUMN IF NOT EXISTS os           LowCardinality(String),
    ADD COLUMN IF NOT EXISTS browser      LowCardinality(String),
    ADD COLUMN IF NOT EXISTS is_bot       UInt8,
    ADD COLUMN IF NOT EXISTS bot_reason   LowCardinality(String),
    ADD COLUMN IF NOT EXISTS fraud_flags  Array(LowCardinality(String));

ALTER TABLE ${db}.conversions
    ADD COLUMN IF NOT EXISTS country      LowCardinality(String),
    ADD COLUMN IF NOT EXISTS region       LowCardinality(String),
    ADD COLUMN IF NOT EXISTS city         LowCardinality(String),
    ADD COLUMN IF NOT EXISTS asn          UInt32,
    ADD COLUMN IF NOT EXISTS as_org       LowCardinality(String),
    ADD COLUMN IF NOT EXISTS device_type  LowCardinality(String),
    ADD COLUMN IF NOT EXISTS os           LowCardinality(String),
    ADD COLUMN IF NOT EXISTS browser      LowCardinality(String),
    ADD COLUMN IF NOT EXISTS fraud_flags  Array(LowCardinality(String));
