"""Payout runs: each affiliate's available entries up to a cutoff become one payout per
affiliate and currency when they reach the affiliate's minimum; a CSV lists them for the
payment provider.

Safe to run again, and twice at once: each payout is made in its own transaction that
first locks the affiliate (PostgreSQL row lock; SQLite holds its write lock), then takes
the entries no live payout holds. A second run, waiting on that lock, finds nothing left
for that affiliate. Nothing is updated in place except a payout's status:
pending -> processing -> paid | failed; failing a payout returns its entries to the
affiliate's available balance.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import Connection, and_, exists, func, insert, literal, select, update
from sqlalchemy.exc import OperationalError

from attribution.money import from_minor
from tracker.ids import uuid7
from tracker.ledger import schema as T
from tracker.ledger.statuses import PAYOUT_STATUSES
from tracker.ledger.store import Store
from tracker.timefmt import format_ms

E, ITEMS, P, A = T.entries, T.payout_items, T.payouts, T.affiliates
STATUSES = PAYOUT_STATUSES
# new status -> the statuses it may follow
TRANSITIONS = {
    "processing": ("pending",),
    "paid": ("pending", "processing"),
    "failed": ("pending", "processing"),
}
CSV_COLUMNS = ["payout_id", "affiliate_id", "affiliate_name", "currency", "amount", "entries"]


class PayoutError(ValueError):
    """A payout cannot change that way (HTTP 409) or does not exist (404)."""

    def __init__(self, message: str, status: int = 409) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class Run:
    id: str
    cutoff: int
    payouts: list[dict] = field(default_factory=list)
    csv: str = ""
    csv_path: str = ""


def _free(limit: int):
    """Approved entries payable by `limit` that no live payout holds."""
    held = (
        select(literal(1))
        .select_from(ITEMS.join(P, P.c.id == ITEMS.c.payout_id))
        .where(ITEMS.c.entry_seq == E.c.seq, P.c.status != "failed")
    )
    return and_(E.c.state == "approved", E.c.available_at <= limit, ~exists(held))


CHUNK = 500  # affiliates per transaction: few commits, short locks


def run(store: Store, *, cutoff: int | None = None, export_dir: Path | None = None) -> Run:
    """One payout run; entries available at or before min(cutoff, now) are paid."""
    now = store.now_ms()
    limit = min(cutoff, now) if cutoff is not None else now
    result = Run(id=uuid7(now), cutoff=limit)
    with store.read() as conn:
        candidates = conn.execute(
            select(E.c.affiliate_id, E.c.currency, func.sum(E.c.amount_minor))
            .where(_free(limit))
            .group_by(E.c.affiliate_id, E.c.currency)
        ).all()
        affiliates = {
            row["id"]: row
            for row in conn.execute(select(A.c.id, A.c.name, A.c.currency, A.c.min_payout_minor))
            .mappings()
            .all()
        }
    due = sorted(
        (aff, currency)
        for aff, currency, total in candidates
        if aff in affiliates and int(total) >= _minimum(affiliates[aff], currency)
    )
    for start in range(0, len(due), CHUNK):
        chunk = due[start : start + CHUNK]
        for attempt in range(5):
            try:
                result.payouts += _make(store, result.id, chunk, affiliates, limit, now)
                break
            except OperationalError:  # a deadlock with a concurrent run: once more
                if attempt == 4:
                    raise
    with store.begin() as conn:
        conn.execute(
            insert(T.payout_runs),
            [{"id": result.id, "cutoff": limit, "created_at": now, "payouts": len(result.payouts)}],
        )
    result.csv = to_csv(result.payouts)
    if export_dir is not None:
        export_dir.mkdir(parents=True, exist_ok=True)
        path = export_dir / f"payouts-{format_ms(now)[:10]}-{result.id}.csv"
        path.write_text(result.csv)
        result.csv_path = str(path)
    return result


def _minimum(affiliate, currency: str) -> int:
    """The affiliate's minimum in its payout currency; elsewhere any positive total."""
    return max(affiliate["min_payout_minor"], 1) if currency == affiliate["currency"] else 1


def _make(
    store: Store, run_id: str, chunk: list[tuple[str, str]], affiliates: dict, limit: int, now: int
) -> list[dict]:
    """Payouts for a chunk of (affiliate, currency): lock the affiliates, then take the
    entries no live payout holds (a concurrent run that got there first leaves none)."""
    wanted = set(chunk)
    ids = sorted({aff for aff, _ in chunk})
    made: list[dict] = []
    with store.begin() as conn:
        store.lock_affiliates(conn, ids)
        groups: dict[tuple[str, str], list[tuple[int, int]]] = {}
        for seq, aff, currency, amount in conn.execute(
            select(E.c.seq, E.c.affiliate_id, E.c.currency, E.c.amount_minor).where(
                E.c.affiliate_id.in_(ids), _free(limit)
            )
        ):
            if (aff, currency) in wanted:
                groups.setdefault((aff, currency), []).append((seq, amount))
        rows, items = [], []
        for (aff, currency), entries in sorted(groups.items()):
            total = sum(amount for _, amount in entries)
            if total < _minimum(affiliates[aff], currency):
                continue  # a clawback since the candidates were read
            payout_id = uuid7(now)
            rows.append(
                {
                    "id": payout_id,
                    "run_id": run_id,
                    "affiliate_id": aff,
                    "currency": currency,
                    "amount_minor": total,
                    "entries": len(entries),
                    "status": "pending",
                    "reference": "",
                    "created_at": now,
                    "updated_at": now,
                }
            )
            items += [{"payout_id": payout_id, "entry_seq": seq} for seq, _ in entries]
            made.append(public(rows[-1], affiliates[aff]["name"]))
        if rows:
            conn.execute(insert(P), rows)
            conn.execute(insert(ITEMS), items)
    return made


def public(row, name: str = "") -> dict:
    return {
        "payout_id": row["id"],
        "run_id": row["run_id"],
        "affiliate_id": row["affiliate_id"],
        "affiliate_name": name,
        "currency": row["currency"],
        "amount": str(from_minor(row["amount_minor"], row["currency"])),
        "entries": row["entries"],
        "status": row["status"],
        "reference": row["reference"],
        "created_at": format_ms(row["created_at"]),
        "updated_at": format_ms(row["updated_at"]),
    }


def to_csv(payouts: list[dict]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for p in payouts:
        writer.writerow([p[c] for c in CSV_COLUMNS])
    return out.getvalue()


def listing(
    conn: Connection,
    *,
    affiliate_id: str | None = None,
    status: str | None = None,
    run_id: str | None = None,
) -> list[dict]:
    query = (
        select(P, A.c.name)
        .select_from(P.outerjoin(A, A.c.id == P.c.affiliate_id))
        .order_by(P.c.created_at.desc(), P.c.id)
    )
    if affiliate_id:
        query = query.where(P.c.affiliate_id == affiliate_id)
    if status:
        query = query.where(P.c.status == status)
    if run_id:
        query = query.where(P.c.run_id == run_id)
    return [public(row, row["name"] or "") for row in conn.execute(query).mappings()]


def set_status(store: Store, payout_id: str, new: str, reference: str = "") -> dict:
    """Move a payout along pending -> processing -> paid | failed (409 otherwise)."""
    if new not in TRANSITIONS:
        raise PayoutError(f"status must be one of {', '.join(TRANSITIONS)}", 400)
    if len(reference) > 200 or not reference.isprintable():
        raise PayoutError("reference must be at most 200 printable characters", 400)
    with store.begin() as conn:
        row = conn.execute(select(P).where(P.c.id == payout_id)).mappings().first()
        if row is None:
            raise PayoutError(f"no payout {payout_id!r}", 404)
        if row["status"] == new:
            return public(row)  # asked twice: already so
        if row["status"] not in TRANSITIONS[new]:
            raise PayoutError(f"a {row['status']} payout cannot become {new}")
        values = {"status": new, "updated_at": store.now_ms()}
        if reference:
            values["reference"] = reference
        conn.execute(
            update(P).where(P.c.id == payout_id, P.c.status == row["status"]).values(values)
        )
        row = conn.execute(select(P).where(P.c.id == payout_id)).mappings().one()
        return public(row)
