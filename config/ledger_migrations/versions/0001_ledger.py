"""The ledger: affiliates, campaigns, plan versions, conversion steps, entries, payouts.

Revision ID: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None

MS = sa.BigInteger
SEQ = sa.BigInteger().with_variant(sa.Integer, "sqlite")  # SQLite: rowid alias


def upgrade() -> None:
    op.create_table(
        "affiliates",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("parent_id", sa.String(64)),
        sa.Column("currency", sa.String(3), nullable=False),
        sa.Column("min_payout_minor", sa.BigInteger, nullable=False),
        sa.Column("created_at", MS, nullable=False),
        sa.Column("updated_at", MS, nullable=False),
    )
    op.create_table(
        "campaigns",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("advertiser_id", sa.String(64), nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("plan", sa.Text, nullable=False),
        sa.Column("revenue", sa.Text, nullable=False),
        sa.Column("plan_version", sa.Integer, nullable=False),
        sa.Column("pay_model", sa.String(32), nullable=False),
        sa.Column("hold_days", sa.Integer, nullable=False),
        sa.Column("daily_cap", sa.Integer),
        sa.Column("monthly_cap", sa.Integer),
        sa.Column("auto_approve_days", sa.Integer),
        sa.Column("allow_advertiser_payout", sa.Boolean, nullable=False),
        sa.Column("pay_flagged", sa.Boolean, nullable=False),
        sa.Column("created_at", MS, nullable=False),
        sa.Column("updated_at", MS, nullable=False),
    )
    op.create_table(
        "plan_versions",
        sa.Column("campaign_id", sa.String(64), primary_key=True),
        sa.Column("version", sa.Integer, primary_key=True),
        sa.Column("plan", sa.Text, nullable=False),
        sa.Column("revenue", sa.Text, nullable=False),
        sa.Column("created_at", MS, nullable=False),
    )
    op.create_table(
        "conversion_steps",
        sa.Column("conversion_id", sa.String(36), primary_key=True),
        sa.Column("status", sa.String(16), primary_key=True),
        sa.Column("event_time", MS, nullable=False),
        sa.Column("advertiser_id", sa.String(64), nullable=False),
        sa.Column("campaign_id", sa.String(64), nullable=False),
        sa.Column("affiliate_id", sa.String(64), nullable=False),
        sa.Column("event", sa.String(32), nullable=False),
        sa.Column("amount_minor", sa.BigInteger, nullable=False),
        sa.Column("currency", sa.String(3), nullable=False),
        sa.Column("revenue_minor", sa.BigInteger, nullable=False),
        sa.Column("payout_minor", sa.BigInteger, nullable=False),
        sa.Column("commissioned", sa.Boolean, nullable=False),
        sa.Column("reason", sa.String(32), nullable=False),
        sa.Column("plan_version", sa.Integer, nullable=False),
        sa.Column("shares", sa.Text, nullable=False),
        sa.Column("mirror", sa.Text, nullable=False),
        sa.Column("month", sa.Integer, nullable=False),
        sa.Column("day", sa.Integer, nullable=False),
    )
    op.create_index("ix_steps_campaign_day", "conversion_steps", ["campaign_id", "status", "day"])
    op.create_index(
        "ix_steps_campaign_month", "conversion_steps", ["campaign_id", "status", "month"]
    )
    op.create_index(
        "ix_steps_affiliate_month",
        "conversion_steps",
        ["campaign_id", "affiliate_id", "status", "month"],
    )
    op.create_table(
        "ledger_entries",
        sa.Column("seq", SEQ, primary_key=True, autoincrement=True),
        sa.Column("entry_id", sa.String(160), nullable=False, unique=True),
        sa.Column("commission_id", sa.String(140), nullable=False),
        sa.Column("conversion_id", sa.String(36), nullable=False),
        sa.Column("campaign_id", sa.String(64), nullable=False),
        sa.Column("affiliate_id", sa.String(64), nullable=False),
        sa.Column("level", sa.Integer, nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("state", sa.String(10), nullable=False),
        sa.Column("amount_minor", sa.BigInteger, nullable=False),
        sa.Column("currency", sa.String(3), nullable=False),
        sa.Column("available_at", MS, nullable=False),
        sa.Column("plan_version", sa.Integer, nullable=False),
        sa.Column("created_at", MS, nullable=False),
    )
    op.create_index(
        "ix_entries_payable",
        "ledger_entries",
        ["affiliate_id", "currency", "state", "available_at"],
    )
    op.create_index("ix_entries_commission", "ledger_entries", ["commission_id"])
    op.create_index("ix_entries_conversion", "ledger_entries", ["conversion_id"])
    op.create_table(
        "payout_runs",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("cutoff", MS, nullable=False),
        sa.Column("created_at", MS, nullable=False),
        sa.Column("payouts", sa.Integer, nullable=False),
    )
    op.create_table(
        "payouts",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("run_id", sa.String(36), nullable=False),
        sa.Column("affiliate_id", sa.String(64), nullable=False),
        sa.Column("currency", sa.String(3), nullable=False),
        sa.Column("amount_minor", sa.BigInteger, nullable=False),
        sa.Column("entries", sa.Integer, nullable=False),
        sa.Column("status", sa.String(12), nullable=False),
        sa.Column("reference", sa.String(200), nullable=False),
        sa.Column("created_at", MS, nullable=False),
        sa.Column("updated_at", MS, nullable=False),
    )
    op.create_index("ix_payouts_affiliate", "payouts", ["affiliate_id", "currency", "status"])
    op.create_table(
        "payout_items",
        sa.Column("payout_id", sa.String(36), primary_key=True),
        sa.Column("entry_seq", sa.BigInteger, primary_key=True),
    )
    op.create_index("ix_items_entry", "payout_items", ["entry_seq"])
