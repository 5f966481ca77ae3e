"""Conversion steps keep the advertiser's transaction id (auto-approval reports the
approval as the advertiser would, under that transaction).

Revision ID: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"


def upgrade() -> None:
    with op.batch_alter_table("conversion_steps") as batch:
        batch.add_column(sa.Column("txid", sa.String(128), nullable=False, server_default=""))
    op.create_index("ix_steps_pending", "conversion_steps", ["status", "campaign_id", "event_time"])
