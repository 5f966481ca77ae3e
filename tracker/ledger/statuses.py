"""The statuses the programme's records may take: plain names, for whatever checks or
offers them (the ledger itself, the CLI's choices, the API) without loading the ledger's
SQL code."""

AFFILIATE_STATUSES = ("active", "paused", "banned")
CAMPAIGN_STATUSES = ("active", "paused")
PAYOUT_STATUSES = ("pending", "processing", "paid", "failed")
