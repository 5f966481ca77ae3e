-- Routing and A/B tests: what decided each click's destination. Empty for a link without
-- rules, or when no rule matched (the link's own destination).
ALTER TABLE ${db}.clicks
    ADD COLUMN IF NOT EXISTS route_rule LowCardinality(String),
    ADD COLUMN IF NOT EXISTS variant    LowCardinality(String);
