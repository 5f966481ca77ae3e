"""The money side: affiliates, campaigns and their commission plans, the append-only
ledger of commissions, balances and payouts, in a transactional SQL store (SQLite by
default, PostgreSQL by DSN)."""
