-- Point lookups of clicks older than Redis's hot window (tracker/sink/history.py): a
-- conversion's click by its id, and a visitor's clicks within the lookback. The time
-- bound of each lookup (the click id's own time, or the lookback) picks the partitions;
-- these bloom filters skip the granules that hold neither id.

ALTER TABLE ${db}.clicks ADD INDEX IF NOT EXISTS click_id_bloom click_id TYPE bloom_filter(0.01) GRANULARITY 1;
ALTER TABLE ${db}.clicks ADD INDEX IF NOT EXISTS visitor_id_bloom visitor_id TYPE bloom_filter(0.01) GRANULARITY 1;
ALTER TABLE ${db}.clicks MATERIALIZE INDEX click_id_bloom;
ALTER TABLE ${db}.clicks MATERIALIZE INDEX visitor_id_bloom;
