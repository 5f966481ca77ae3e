"""`tracker affiliates|campaigns|payouts ...`: the programme from the command line, on the
same ledger store and validation as the admin API."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

import orjson

from tracker.config import Settings
from tracker.ledger import lazy as ledger
from tracker.ledger.lazy import accounts, payouts, records
from tracker.ledger.statuses import AFFILIATE_STATUSES, CAMPAIGN_STATUSES, PAYOUT_STATUSES
from tracker.table_format import format_rows

if TYPE_CHECKING:
    from tracker.ledger.store import Store


class ProgrammeError(Exception):
    """What the user gets on stderr (exit 1)."""


def _json(value: str, flag: str) -> Any:
    try:
        return orjson.loads(value)
    except orjson.JSONDecodeError:
        raise ProgrammeError(f"{flag} must be JSON") from None


def add_parsers(sub: Any, fmt_choices: list[str]) -> None:
    aff = sub.add_parser("affiliates", help="manage affiliates").add_subparsers(
        dest="affiliates_command", required=True
    )
    for name in ("add", "set"):
        s = aff.add_parser(name, help=f"{'create' if name == 'add' else 'change'} an affiliate")
        s.add_argument("id")
        s.add_argument("--name")
        s.add_argument("--status", choices=AFFILIATE_STATUSES)
        s.add_argument("--parent", help="the referrer's id ('' for none)")
        s.add_argument("--currency", help="payout currency (ISO 4217)")
        s.add_argument("--min-payout", help="minimum payout, e.g. 50.00")
        s.set_defaults(func=cmd_affiliates_add if name == "add" else cmd_affiliates_set)
    s = aff.add_parser("list", help="list affiliates")
    s.add_argument("--format", choices=fmt_choices, default="table")
    s.set_defaults(func=cmd_affiliates_list)
    s = aff.add_parser("balance", help="an affiliate's balance per currency")
    s.add_argument("id")
    s.add_argument("--format", choices=fmt_choices, default="table")
    s.set_defaults(func=cmd_affiliates_balance)

    camp = sub.add_parser("campaigns", help="manage campaigns").add_subparsers(
        dest="campaigns_command", required=True
    )
    for name in ("add", "set"):
        s = camp.add_parser(name, help=f"{'create' if name == 'add' else 'change'} a campaign")
        s.add_argument("id")
        s.add_argument("--advertiser")
        s.add_argument("--name")
        s.add_argument("--status", choices=CAMPAIGN_STATUSES)
        s.add_argument("--plan", help="commission plan, JSON (see README)")
        s.add_argument("--revenue", help="revenue rule, JSON")
        s.add_argument("--pay-model", help="attribution model that splits the payout")
        s.add_argument("--hold-days", type=int)
        s.add_argument("--daily-cap", type=int)
        s.add_argument("--monthly-cap", type=int)
        s.add_argument(
            "--auto-approve-days", type=int, help="approve pending conversions after N days"
        )
        s.add_argument("--allow-advertiser-payout", choices=["true", "false"])
        s.add_argument(
            "--pay-flagged", choices=["true", "false"], help="pay fraud-flagged conversions"
        )
        s.set_defaults(func=cmd_campaigns_add if name == "add" else cmd_campaigns_set)
    s = camp.add_parser("list", help="list campaigns")
    s.add_argument("--format", choices=fmt_choices, default="table")
    s.set_defaults(func=cmd_campaigns_list)

    pay = sub.add_parser("payouts", help="payout runs and payouts").add_subparsers(
        dest="payouts_command", required=True
    )
    s = pay.add_parser("run", help="pay available balances up to a cutoff; writes a CSV")
    s.add_argument("--cutoff", help="pay entries available up to this date (UTC, inclusive)")
    s.set_defaults(func=cmd_payouts_run)
    s = pay.add_parser("list", help="list payouts")
    s.add_argument("--status", choices=PAYOUT_STATUSES)
    s.add_argument("--affiliate")
    s.add_argument("--run")
    s.add_argument("--format", choices=fmt_choices, default="table")
    s.set_defaults(func=cmd_payouts_list)
    for name, status in (
        ("mark-processing", "processing"),
        ("mark-paid", "paid"),
        ("fail", "failed"),
    ):
        s = pay.add_parser(name, help=f"set a payout's status to {status}")
        s.add_argument("payout_id")
        s.add_argument("--reference", default="", help="the payment provider's reference")
        s.set_defaults(func=cmd_payouts_status, status=status)


def _store(settings: Settings) -> Store:
    try:
        return ledger.store.open_store(settings)
    except Exception as exc:
        raise ProgrammeError(f"cannot open the ledger at {settings.ledger_dsn}: {exc}") from None


def _run(settings: Settings, work) -> Any:
    store = _store(settings)
    try:
        return work(store)
    except (records.RecordError, records.NotFound, records.Conflict, payouts.PayoutError) as exc:
        raise ProgrammeError(str(exc)) from None
    finally:
        store.close()


def _print(rows: list[dict], columns: list[str], fmt: str) -> None:

    print(format_rows(columns, [[r.get(c) for c in columns] for r in rows], fmt), end="")


def _affiliate_body(args, creating: bool) -> dict:
    body: dict[str, Any] = {"id": args.id} if creating else {}
    for key, value in (
        ("name", args.name),
        ("status", args.status),
        ("currency", args.currency),
        ("min_payout", args.min_payout),
    ):
        if value is not None:
            body[key] = value
    if args.parent is not None:
        body["parent_id"] = args.parent or None
    return body


def cmd_affiliates_add(settings: Settings, args) -> int:
    c = settings.commissions
    row = _run(
        settings,
        lambda store: records.create_affiliate(
            store, _affiliate_body(args, True), max_levels=c.max_levels, min_payout=c.min_payout
        ),
    )
    print(f"affiliate {row['id']} ({row['status']}, {row['currency']}, min {row['min_payout']})")
    return 0


def cmd_affiliates_set(settings: Settings, args) -> int:
    c = settings.commissions
    row = _run(
        settings,
        lambda store: records.update_affiliate(
            store,
            args.id,
            _affiliate_body(args, False),
            max_levels=c.max_levels,
            min_payout=c.min_payout,
        ),
    )
    print(f"affiliate {row['id']} ({row['status']}, {row['currency']}, min {row['min_payout']})")
    return 0


def cmd_affiliates_list(settings: Settings, args) -> int:
    rows = _run(settings, records.list_affiliates)
    _print(rows, ["id", "name", "status", "parent_id", "currency", "min_payout"], args.format)
    return 0


def cmd_affiliates_balance(settings: Settings, args) -> int:
    def work(store: Store):
        records.get_affiliate(store, args.id)
        with store.read() as conn:
            return accounts.balance(conn, args.id, store.now_ms())

    _print(_run(settings, work), ["currency", *accounts.PARTS, "total"], args.format)
    return 0


def _campaign_body(args, creating: bool) -> dict:
    body: dict[str, Any] = {"id": args.id} if creating else {}
    for key, value in (
        ("advertiser_id", args.advertiser),
        ("name", args.name),
        ("status", args.status),
        ("pay_model", args.pay_model),
        ("hold_days", args.hold_days),
        ("daily_cap", args.daily_cap),
        ("monthly_cap", args.monthly_cap),
        ("auto_approve_days", args.auto_approve_days),
    ):
        if value is not None:
            body[key] = value
    for key, flag in (
        ("allow_advertiser_payout", args.allow_advertiser_payout),
        ("pay_flagged", args.pay_flagged),
    ):
        if flag is not None:
            body[key] = flag == "true"
    if args.plan is not None:
        body["plan"] = _json(args.plan, "--plan")
    if args.revenue is not None:
        body["revenue"] = _json(args.revenue, "--revenue")
    return body


def cmd_campaigns_add(settings: Settings, args) -> int:
    body = _campaign_body(args, True)
    row = _run(settings, lambda store: records.create_campaign(store, body))
    print(f"campaign {row['id']} (plan version {row['plan_version']})")
    return 0


def cmd_campaigns_set(settings: Settings, args) -> int:
    body = _campaign_body(args, False)
    row = _run(settings, lambda store: records.update_campaign(store, args.id, body))
    print(f"campaign {row['id']} (plan version {row['plan_version']})")
    return 0


def cmd_campaigns_list(settings: Settings, args) -> int:
    rows = _run(settings, records.list_campaigns)
    for row in rows:
        row["plan"] = orjson.dumps(row["plan"]).decode()
    columns = ["id", "advertiser_id", "status", "plan_version", "pay_model", "hold_days", "plan"]
    _print(rows, columns, args.format)
    return 0


def cmd_payouts_run(settings: Settings, args) -> int:
    from tracker.timefmt import parse_when

    try:
        cutoff = parse_when(args.cutoff)
    except ValueError as exc:
        raise ProgrammeError(f"--cutoff: {exc}") from None
    done = _run(
        settings,
        lambda store: payouts.run(store, cutoff=cutoff, export_dir=settings.data_path / "payouts"),
    )
    total = len(done.payouts)
    print(f"payout run {done.id}: {total} payout{'s' * (total != 1)}; CSV {done.csv_path}")
    sys.stdout.write(done.csv)
    return 0


def cmd_payouts_list(settings: Settings, args) -> int:
    def work(store: Store):
        with store.read() as conn:
            return payouts.listing(
                conn, affiliate_id=args.affiliate, status=args.status, run_id=args.run
            )

    columns = ["payout_id", "affiliate_id", "currency", "amount", "entries", "status", "reference"]
    _print(_run(settings, work), columns, args.format)
    return 0


def cmd_payouts_status(settings: Settings, args) -> int:
    row = _run(
        settings,
        lambda store: payouts.set_status(store, args.payout_id, args.status, args.reference),
    )
    print(f"payout {row['payout_id']} {row['status']} ({row['amount']} {row['currency']})")
    return 0


__all__ = ["ProgrammeError", "add_parsers"]
