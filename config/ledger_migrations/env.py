"""Alembic environment for the ledger: run by tracker.ledger.store.migrate with an open
connection (SQLite or PostgreSQL); no alembic.ini needed."""

from alembic import context

connection = context.config.attributes["connection"]
context.configure(connection=connection, target_metadata=None, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
