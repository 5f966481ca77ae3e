"""Reports: metrics, the query builder over the rollups and raw tables, reconciliation."""
