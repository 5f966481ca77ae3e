"""Auto-approval: a campaign with `auto_approve_days` approves a conversion still pending
that many days after its report, as if its advertiser had sent the approval.

The approval goes the way an advertiser's does: the transaction's status moves from
pending to approved in Redis with the edge's own check-and-set script, which appends the
`approved` conversion row to the events stream; the sink then stores it and books its
commissions like any other step. So it happens once (a second sink, or a tick that came
back after a crash, finds the transaction approved already), and ClickHouse's
conversions and reports see the approval too. An advertiser's late rejection finds the
conversion approved, and is refused like any other illegal transition.
"""

from __future__ import annotations

import logging
from typing import Any

import orjson
from sqlalchemy import and_, exists, select
from sqlalchemy.orm import aliased

from tracker import redis_keys as K
from tracker.config import Settings
from tracker.edge import conversion_input
from tracker.edge.postback import RECORD_CONVERSION
from tracker.ids import uuid7
from tracker.ledger import schema as T
from tracker.ledger.store import Store
from tracker.records import RequestMeta, sub_params

log = logging.getLogger(__name__)
DAY_MS = 86_400_000
SOURCE = "auto_approval"  # the `source` of the conversion rows it writes
_NO_REQUEST = RequestMeta(ip="::", user_agent="", referer="", accept_language="", url="", method="")


def due(store: Store, now: int, limit: int = 1000) -> list[dict]:
    """Pending steps whose campaign's auto-approval delay has passed, oldest first."""
    steps, camps = T.conversion_steps, T.campaigns
    later = aliased(steps)
    query = (
        select(steps.c.conversion_id, steps.c.advertiser_id, steps.c.txid, steps.c.event)
        .join(camps, camps.c.id == steps.c.campaign_id)
        .where(
            steps.c.status == "pending",
            steps.c.txid != "",
            camps.c.auto_approve_days.is_not(None),
            steps.c.event_time + camps.c.auto_approve_days * DAY_MS <= now,
            ~exists(
                select(later.c.status).where(
                    and_(
                        later.c.conversion_id == steps.c.conversion_id, later.c.status != "pending"
                    )
                )
            ),
        )
        .order_by(steps.c.event_time)
        .limit(limit)
    )
    with store.read() as conn:
        return [dict(row) for row in conn.execute(query).mappings()]


def approve(redis: Any, settings: Settings, step: dict, now: int) -> bool:
    """Approve one pending transaction in Redis (and so in the stream); False when it is
    no longer pending there (approved, rejected, or forgotten after dedup_days)."""
    key = K.conversion_key(step["advertiser_id"], step["txid"])
    state = redis.hgetall(key)
    if state.get(b"status") != b"pending" or b"record" not in state:
        return False
    stored = orjson.loads(state[b"record"])
    conv = conversion_input.ConversionInput(
        advertiser=step["advertiser_id"],
        txid=step["txid"],
        click_id="",
        amount=None,
        currency=stored["currency"],
        status="approved",
        event=step["event"],
        subs=sub_params({}),  # the approval carries no sub ids; the first report has them
    )
    row = conversion_input.conversion_row(
        ms=now,
        conversion_id=stored["conversion_id"],
        conv=conv,
        amount=stored["amount"],
        currency=stored["currency"],
        previous_status="pending",
        click=stored["click"],
        visitor_id=stored["visitor_id"],
        unattributed_reason=stored["unattributed_reason"],
        source=SOURCE,
        meta=_NO_REQUEST,
        payout=stored.get("payout"),
    )
    result = redis.eval(
        RECORD_CONVERSION,
        2,
        key,
        K.EVENTS_STREAM,
        "pending",
        "approved",
        orjson.dumps(stored),
        settings.conversions.dedup_days * 86400,
        K.CAP_DAY_TTL,  # (a status change: no conversion counter to expire)
        K.BATCH_ID_FIELD,
        uuid7(now),
        "conversions",
        orjson.dumps(row),
    )
    return result[0] == b"ok"


def tick(store: Store, redis: Any, settings: Settings, now: int) -> int:
    """Approve what is due; the number approved."""
    approved = 0
    for step in due(store, now):
        try:
            approved += approve(redis, settings, step, now)
        except Exception as exc:  # Redis away: the next tick tries again
            log.warning("auto-approval of %s failed: %r", step["conversion_id"], exc)
            break
    if approved:
        log.info("auto-approved %d conversions", approved)
    return approved
