"""The ledger's modules for the programme API and CLI, loaded on first use
(tracker/lazy.py): every edge and CLI process names them, few ever use them, and their
SQLAlchemy and Alembic are about 40 MB of memory."""

from __future__ import annotations

from typing import TYPE_CHECKING

from tracker.lazy import lazy_import

if TYPE_CHECKING:
    from tracker.ledger import accounts, payouts, records, store
else:
    accounts = lazy_import("tracker.ledger.accounts")
    payouts = lazy_import("tracker.ledger.payouts")
    records = lazy_import("tracker.ledger.records")
    store = lazy_import("tracker.ledger.store")

MODULES = (store, accounts, payouts, records)  # for `tracker.lazy.load`
