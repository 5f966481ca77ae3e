-- Retention per table: `[clickhouse.retention]` in the settings (days; a table not named
-- there keeps `clickhouse.retention_days`). Applied to the existing tables; ClickHouse
-- rewrites their parts once to drop what is now past its time.

ALTER TABLE ${db}.clicks MODIFY TTL toDateTime(event_time) + INTERVAL ${retention_clicks} DAY;
ALTER TABLE ${db}.impressions MODIFY TTL toDateTime(event_time) + INTERVAL ${retention_impressions} DAY;
ALTER TABLE ${db}.orphan_visits MODIFY TTL toDateTime(event_time) + INTERVAL ${retention_orphan_visits} DAY;
ALTER TABLE ${db}.conversions MODIFY TTL toDateTime(event_time) + INTERVAL ${retention_conversions} DAY;
ALTER TABLE ${db}.attribution_credits MODIFY TTL toDateTime(event_time) + INTERVAL ${retention_attribution_credits} DAY;
ALTER TABLE ${db}.commissions MODIFY TTL toDateTime(event_time) + INTERVAL ${retention_commissions} DAY;
