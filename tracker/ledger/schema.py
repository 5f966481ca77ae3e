"""The ledger's tables (SQLAlchemy Core). Alembic migrations under
`config/ledger_migrations/` create them; this module names them for queries.

Money is integer minor units (`*_minor`) with an ISO 4217 currency; times are Unix ms UTC.
Only two kinds of row change after they are written: records (affiliates, campaigns) and
a payout's status. Everything else is appended: conversion steps and ledger entries carry
deterministic ids, so a step that is replayed inserts nothing.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
)

metadata = MetaData()

affiliates = Table(
    "affiliates",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("name", String(200), nullable=False),
    Column("status", String(16), nullable=False),  # active, paused, banned
    Column("parent_id", String(64)),  # the referrer
    Column("currency", String(3), nullable=False),  # payout currency
    Column("min_payout_minor", BigInteger, nullable=False),
    Column("created_at", BigInteger, nullable=False),
    Column("updated_at", BigInteger, nullable=False),
)

campaigns = Table(
    "campaigns",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("advertiser_id", String(64), nullable=False),
    Column("name", String(200), nullable=False),
    Column("status", String(16), nullable=False),  # active, paused
    Column("plan", Text, nullable=False),  # JSON: tracker.ledger.plans
    Column("revenue", Text, nullable=False),  # JSON: the revenue rule per event
    Column("plan_version", Integer, nullable=False),
    Column("pay_model", String(32), nullable=False),
    Column("hold_days", Integer, nullable=False),
    Column("daily_cap", Integer),
    Column("monthly_cap", Integer),
    Column("auto_approve_days", Integer),
    Column("allow_advertiser_payout", Boolean, nullable=False),
    Column("pay_flagged", Boolean, nullable=False),  # commission on fraud-flagged conversions
    Column("created_at", BigInteger, nullable=False),
    Column("updated_at", BigInteger, nullable=False),
)

# Every plan a campaign has had: a commission names the version it used.
plan_versions = Table(
    "plan_versions",
    metadata,
    Column("campaign_id", String(64), primary_key=True),
    Column("version", Integer, primary_key=True),
    Column("plan", Text, nullable=False),
    Column("revenue", Text, nullable=False),
    Column("created_at", BigInteger, nullable=False),
)

# One row per conversion status step the sink has handled (pending, approved, ...): the
# primary key makes a replayed step a no-op, and `mirror` keeps the ClickHouse rows the
# step produced, so a replay sends the same rows again (ClickHouse drops the repeat).
conversion_steps = Table(
    "conversion_steps",
    metadata,
    Column("conversion_id", String(36), primary_key=True),
    Column("status", String(16), primary_key=True),
    Column("event_time", BigInteger, nullable=False),  # the conversion event's time
    Column("advertiser_id", String(64), nullable=False),
    Column("campaign_id", String(64), nullable=False),
    Column("affiliate_id", String(64), nullable=False),
    Column("event", String(32), nullable=False),
    Column("amount_minor", BigInteger, nullable=False),
    Column("currency", String(3), nullable=False),
    Column("revenue_minor", BigInteger, nullable=False),
    Column("payout_minor", BigInteger, nullable=False),  # all levels
    Column("commissioned", Boolean, nullable=False),  # counts towards caps and tiers
    Column("reason", String(32), nullable=False),  # why no commission ('' when paid)
    Column("plan_version", Integer, nullable=False),
    Column("shares", Text, nullable=False),  # JSON [[affiliate, click_id, weight], ...]
    Column("mirror", Text, nullable=False),  # JSON: the ClickHouse commission rows
    Column("month", Integer, nullable=False),  # YYYYMM of event_time (tiers, monthly cap)
    Column("day", Integer, nullable=False),  # YYYYMMDD of event_time (daily cap)
    Column("txid", String(128), nullable=False, server_default=""),  # the advertiser's
    Index("ix_steps_pending", "status", "campaign_id", "event_time"),
    Index("ix_steps_campaign_day", "campaign_id", "status", "day"),
    Index("ix_steps_campaign_month", "campaign_id", "status", "month"),
    Index("ix_steps_affiliate_month", "campaign_id", "affiliate_id", "status", "month"),
)

# The ledger: append-only. A commission's money sits in state `pending` while its
# conversion is pending, and in `approved` after; an approved entry is available from
# `available_at` (approval + hold days) and leaves the balance's available part when a
# payout that is not failed takes it (payout_items).
entries = Table(
    "ledger_entries",
    metadata,
    Column(
        "seq", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    ),
    Column("entry_id", String(160), nullable=False, unique=True),
    Column("commission_id", String(140), nullable=False),
    Column("conversion_id", String(36), nullable=False),
    Column("campaign_id", String(64), nullable=False),
    Column("affiliate_id", String(64), nullable=False),
    Column("level", Integer, nullable=False),
    Column("kind", String(16), nullable=False),  # accrue, approve, unpend, reject, reverse
    Column("state", String(10), nullable=False),  # pending, approved
    Column("amount_minor", BigInteger, nullable=False),  # signed
    Column("currency", String(3), nullable=False),
    Column("available_at", BigInteger, nullable=False),  # approved entries: payable from
    Column("plan_version", Integer, nullable=False),
    Column("created_at", BigInteger, nullable=False),
    Index("ix_entries_payable", "affiliate_id", "currency", "state", "available_at"),
    Index("ix_entries_commission", "commission_id"),
    Index("ix_entries_conversion", "conversion_id"),
)

payout_runs = Table(
    "payout_runs",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("cutoff", BigInteger, nullable=False),
    Column("created_at", BigInteger, nullable=False),
    Column("payouts", Integer, nullable=False),
)

payouts = Table(
    "payouts",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("run_id", String(36), nullable=False),
    Column("affiliate_id", String(64), nullable=False),
    Column("currency", String(3), nullable=False),
    Column("amount_minor", BigInteger, nullable=False),
    Column("entries", Integer, nullable=False),
    Column("status", String(12), nullable=False),  # pending, processing, paid, failed
    Column("reference", String(200), nullable=False),  # the payment provider's id
    Column("created_at", BigInteger, nullable=False),
    Column("updated_at", BigInteger, nullable=False),
    Index("ix_payouts_affiliate", "affiliate_id", "currency", "status"),
)

payout_items = Table(
    "payout_items",
    metadata,
    Column("payout_id", String(36), primary_key=True),
    Column("entry_seq", BigInteger, primary_key=True),
    Index("ix_items_entry", "entry_seq"),
)
