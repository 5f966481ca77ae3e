"""The `tracker` command: run the service and its parts, manage links, query ClickHouse."""

from __future__ import annotations

import argparse
import sys
import urllib.error
import urllib.request
from pathlib import Path

import orjson

from tracker import config, logs, metrics_dir, programme_cli, stacks
from tracker.clock import Clock, system_clock
from tracker.config import ConfigError, Settings
from tracker.table_format import format_rows


def main(argv: list[str] | None = None, clock: Clock = system_clock) -> int:
    """`clock`: what an edge started by this call stamps events with (tests pin it)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    args.clock = clock
    logs.configure()
    try:
        settings = config.load(args.config)
    except ConfigError as exc:
        print(f"tracker: {exc}", file=sys.stderr)
        return 2
    try:
        return args.func(settings, args) or 0
    except (CommandError, programme_cli.ProgrammeError) as exc:
        print(f"tracker: {exc}", file=sys.stderr)
        return 1


def service_process(settings: Settings) -> None:
    """What every service command does first: pool its metrics with the others in one
    folder, named before its modules import tracker.metrics (metrics_dir raises if it
    comes too late), and answer SIGUSR1 by writing every thread's stack to its log, so
    an operator or a test can ask a process that does not stop where it is."""
    metrics_dir.use(settings.data_path / "metrics")
    stacks.on_signal_dump_threads()


class CommandError(Exception):
    """A command could not do its work; the message says why."""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tracker", description=__doc__)
    p.add_argument("--config", help="settings file (default: config/tracker.toml)")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("serve", help="run the sink and the edge processes")
    s.add_argument(
        "--redis",
        action="store_true",
        help="also start redis-server with AOF under the data folder",
    )
    s.add_argument("--demo", action="store_true", help="create a `demo` link and print URLs")
    s.set_defaults(func=cmd_serve)

    s = sub.add_parser("edge", help="run one edge process")
    s.add_argument("--worker", type=int, default=0, help="worker index (names its spool file)")
    s.set_defaults(func=cmd_edge)

    sub.add_parser("sink", help="run the sink (stream -> ClickHouse)").set_defaults(func=cmd_sink)
    sub.add_parser("migrate", help="apply ClickHouse migrations").set_defaults(func=cmd_migrate)
    sub.add_parser(
        "rebuild-hot", help="refill Redis's hot window of clicks from ClickHouse"
    ).set_defaults(func=cmd_rebuild_hot)
    sub.add_parser(
        "deliver", help="run the delivery worker (postbacks out, webhooks)"
    ).set_defaults(func=cmd_deliver)

    privacy = sub.add_parser(
        "privacy", help="export or erase what is stored about one visitor"
    ).add_subparsers(dest="privacy_command", required=True)
    s = privacy.add_parser("export", help="everything stored about a visitor, as JSON")
    s.add_argument("--visitor", required=True, help="the visitor id (the vid cookie)")
    s.add_argument("--out", help="write to this file (default: standard output)")
    s.set_defaults(func=cmd_privacy_export)
    s = privacy.add_parser(
        "erase", help="delete a visitor's clicks, impressions and records; anonymise conversions"
    )
    s.add_argument("--visitor", required=True, help="the visitor id (the vid cookie)")
    s.set_defaults(func=cmd_privacy_erase)

    s = sub.add_parser("sql", help="run a read-only SQL query")
    s.add_argument("query")
    s.add_argument("--format", choices=["table", "json", "csv"], default="table")
    s.set_defaults(func=cmd_sql)

    links = sub.add_parser("links", help="manage tracking links").add_subparsers(
        dest="links_command", required=True
    )
    s = links.add_parser("add", help="create a link")
    s.add_argument("slug")
    s.add_argument("destination", help="URL template, e.g. https://shop.example/?cid={click_id}")
    s.add_argument("--campaign", default="")
    s.add_argument("--affiliate", default="")
    s.add_argument("--advertiser", default="")
    s.add_argument("--if-missing", action="store_true", help="no error when the slug exists")
    s.set_defaults(func=cmd_links_add)
    s = links.add_parser("list", help="list links")
    s.add_argument("--format", choices=["table", "json", "csv"], default="table")
    s.set_defaults(func=cmd_links_list)
    s = links.add_parser("disable", help="disable a link (it stops redirecting)")
    s.add_argument("slug")
    s.set_defaults(func=cmd_links_disable)
    s = links.add_parser("route", help="show, set or clear a link's routing rules")
    s.add_argument("slug")
    how = s.add_mutually_exclusive_group()
    how.add_argument("--file", help='a JSON file holding the routing ({"rules": [...]})')
    how.add_argument("--json", help="the routing as JSON text")
    how.add_argument("--clear", action="store_true", help="remove every rule and cap")
    s.set_defaults(func=cmd_links_route)
    s = sub.add_parser("campaign-caps", help="click and conversion caps of whole campaigns")
    s.add_argument("campaign", nargs="?", help="the campaign (none: list every campaign's)")
    how = s.add_mutually_exclusive_group()
    how.add_argument(
        "--json",
        help='e.g. {"daily_clicks": 1000, "daily_conversions": 50, "overflow": {"url": "..."}}',
    )
    how.add_argument("--clear", action="store_true", help="remove the campaign's caps")
    s.set_defaults(func=cmd_campaign_caps)

    s = sub.add_parser("attribute", help="re-attribute a period with one model, in ClickHouse")
    s.add_argument("--model", required=True)
    _period_arguments(s)
    s.set_defaults(func=cmd_attribute)
    report = sub.add_parser("report", help="reports").add_subparsers(
        dest="report_command", required=True
    )
    s = report.add_parser(
        "fraud", help="flagged clicks and conversions by campaign, affiliate and rule"
    )
    s.add_argument("--from", dest="date_from", help="from (UTC date or datetime)")
    s.add_argument("--to", dest="date_to", help="before (UTC date or datetime)")
    s.add_argument("--format", choices=["table", "json", "csv"], default="table")
    s.set_defaults(func=cmd_report_fraud)
    s = report.add_parser(
        "stats", help="metrics grouped and filtered as the report API does (GET /api/reports)"
    )
    s.add_argument("--metrics", default="clicks,conversions", help="comma list")
    s.add_argument("--group-by", default="", help="comma list, e.g. day,campaign")
    s.add_argument("--from", dest="date_from", help="from (date or datetime in --tz)")
    s.add_argument("--to", dest="date_to", help="before (date or datetime in --tz)")
    s.add_argument("--tz", default="UTC", help="time zone of dates and time buckets")
    s.add_argument("--currency", help="amounts in this currency (default: config)")
    s.add_argument(
        "--filter", action="append", default=[], metavar="FIELD=V1,V2", help="repeatable"
    )
    s.add_argument("--sort", default="", help="a metric or field; -name sorts descending")
    s.add_argument("--limit", default="1000")
    s.add_argument("--compare", action="store_true", help="also the previous period's totals")
    s.add_argument("--format", choices=["table", "json", "csv"], default="table")
    s.set_defaults(func=cmd_report_stats)
    s = report.add_parser(
        "reconciliation",
        help="one advertiser's conversions by status, what it owes, its refused postbacks",
    )
    s.add_argument("--advertiser", required=True)
    s.add_argument("--from", dest="date_from", help="from (date or datetime in --tz)")
    s.add_argument("--to", dest="date_to", help="before (date or datetime in --tz)")
    s.add_argument("--tz", default="UTC")
    s.add_argument("--format", choices=["table", "json"], default="table")
    s.set_defaults(func=cmd_report_reconciliation)
    s = report.add_parser("ab", help="an A/B test: per variant clicks, conversions, CVR, P(best)")
    s.add_argument("--link", required=True, help="the link's slug")
    s.add_argument("--format", choices=["table", "json", "csv"], default="table")
    s.set_defaults(func=cmd_report_ab)
    s = report.add_parser("metrics", help="every report metric and its definition")
    s.set_defaults(func=cmd_report_metrics)
    s = report.add_parser("attribution", help="all configured models side by side")
    _period_arguments(s)
    s.set_defaults(func=cmd_report_attribution)

    keys = sub.add_parser("keys", help="API keys with roles").add_subparsers(
        dest="keys_command", required=True
    )
    s = keys.add_parser("create", help="create a key (printed once)")
    s.add_argument("--role", required=True, choices=["admin", "analyst", "advertiser", "affiliate"])
    s.add_argument("--subject", default="", help="the advertiser or affiliate id")
    s.add_argument("--name", default="")
    s.add_argument(
        "--campaign", action="append", default=[], help="a campaign the affiliate may promote"
    )
    s.set_defaults(func=cmd_keys_create)
    s = keys.add_parser("list", help="list keys (never their secrets)")
    s.add_argument("--format", choices=["table", "json", "csv"], default="table")
    s.set_defaults(func=cmd_keys_list)
    s = keys.add_parser("revoke", help="revoke a key")
    s.add_argument("id")
    s.set_defaults(func=cmd_keys_revoke)

    s = sub.add_parser("audit", help="the audit log of writes (newest first)")
    s.add_argument("--limit", type=int, default=50)
    s.add_argument("--actor", help="a key id, admin-token or cli:<user>")
    s.add_argument("--action", help='e.g. "POST /api/links" or "links add"')
    s.add_argument("--format", choices=["table", "json", "csv"], default="table")
    s.set_defaults(func=cmd_audit)

    advertisers = sub.add_parser("advertisers", help="manage advertisers").add_subparsers(
        dest="advertisers_command", required=True
    )
    s = advertisers.add_parser("add", help="create an advertiser (prints its postback token)")
    s.add_argument("id")
    s.add_argument("--token", help="postback token (default: generated)")
    s.set_defaults(func=cmd_advertisers_add)
    s = advertisers.add_parser("list", help="list advertisers")
    s.add_argument("--format", choices=["table", "json", "csv"], default="table")
    s.add_argument("--show-tokens", action="store_true")
    s.set_defaults(func=cmd_advertisers_list)
    programme_cli.add_parsers(sub, ["table", "json", "csv"])

    deliveries = sub.add_parser(
        "deliveries", help="postbacks out and webhooks: targets, queue, dead letters"
    ).add_subparsers(dest="deliveries_command", required=True)
    s = deliveries.add_parser("list", help="queue sizes and dead letters")
    s.add_argument("--failed", action="store_true", help="list each dead letter")
    s.add_argument("--format", choices=["table", "json", "csv"], default="table")
    s.set_defaults(func=cmd_deliveries_list)
    s = deliveries.add_parser("retry", help="replay dead-lettered deliveries")
    which = s.add_mutually_exclusive_group(required=True)
    which.add_argument("id", nargs="?", help="the delivery id")
    which.add_argument("--failed", action="store_true", help="every dead letter")
    s.set_defaults(func=cmd_deliveries_retry)
    s = deliveries.add_parser("add-target", help="register a postback or webhook target")
    s.add_argument("id")
    s.add_argument("--kind", choices=["postback", "webhook"], required=True)
    s.add_argument("--url", required=True, help="URL template (postback macros allowed)")
    s.add_argument("--events", help="comma-separated: accepted,approved,rejected,reversed")
    s.add_argument("--affiliate", help="postback: the affiliate; webhook: only its conversions")
    s.add_argument("--campaign", help="only this campaign (a postback: overrides the general)")
    s.add_argument("--advertiser", help="webhook: only this advertiser's conversions")
    s.add_argument("--method", choices=["GET", "POST"])
    s.set_defaults(func=cmd_deliveries_add_target)
    s = deliveries.add_parser("targets", help="list delivery targets")
    s.add_argument("--format", choices=["table", "json", "csv"], default="table")
    s.set_defaults(func=cmd_deliveries_targets)
    return p


def _period_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--from", dest="date_from", help="conversions from (UTC date or datetime)")
    p.add_argument("--to", dest="date_to", help="conversions before (UTC date or datetime)")
    p.add_argument("--lookback", type=float, help="lookback window in days (default: config)")
    p.add_argument("--half-life", type=float, help="time_decay half-life in days (default: config)")
    p.add_argument("--by", choices=["campaign", "affiliate"], default="campaign")
    p.add_argument(
        "--include-pending",
        action="store_true",
        help="count pending conversions too (default: approved only; never rejected/reversed)",
    )
    p.add_argument("--format", choices=["table", "json", "csv"], default="table")


# -- service ------------------------------------------------------------------------------


def cmd_serve(settings: Settings, args) -> int:
    from tracker.datalock import DataFolderBusy

    service_process(settings)
    from tracker.supervisor import serve

    try:
        return serve(settings, manage_redis=args.redis or settings.redis.manage, demo=args.demo)
    except DataFolderBusy as exc:
        raise CommandError(str(exc)) from None


def cmd_edge(settings: Settings, args) -> int:
    service_process(settings)
    from tracker.edge.server import run

    run(settings, args.worker, args.clock)
    return 0


def cmd_sink(settings: Settings, args) -> int:
    service_process(settings)
    from tracker.sink.counter_lease import LeaseHeld
    from tracker.sink.process import run

    try:
        run(settings)
    except LeaseHeld as exc:
        raise CommandError(str(exc)) from None
    return 0


def cmd_report_ab(settings: Settings, args) -> int:
    from tracker.reports import ab

    try:
        clicks_sql, conversions_sql = ab.queries(settings.clickhouse.database, args.link)
    except ab.AbError as exc:
        raise CommandError(str(exc)) from None
    results = ab.assemble(
        run_query(settings, clicks_sql)[1], run_query(settings, conversions_sql)[1]
    )
    if not results:
        print(f"no split clicks recorded for link {args.link!r}")
        return 0
    columns = ["rule", "variant", "clicks", "conversions", "cvr", "cvr_95_low", "cvr_95_high"]
    columns.append("p_best")
    rows = [
        [
            r.rule,
            r.variant,
            r.clicks,
            r.conversions,
            f"{r.cvr:.4f}",
            f"{r.low:.4f}",
            f"{r.high:.4f}",
            f"{r.p_best:.3f}",
        ]
        for r in results
    ]
    if args.format == "json":
        print(orjson.dumps([dict(zip(columns, row, strict=True)) for row in rows]).decode())
    else:
        print(format_rows(columns, rows, args.format))
    return 0


def cmd_deliver(settings: Settings, args) -> int:
    service_process(settings)
    from tracker.delivery.process import run

    run(settings)
    return 0


# -- ClickHouse ---------------------------------------------------------------------------


def _endpoint(settings: Settings, path: str, body: dict) -> dict | None:
    """Ask the running sink; None when no sink answers on the query port."""
    request = urllib.request.Request(
        f"http://{settings.sink.query_host}:{settings.sink.query_port}{path}",
        data=orjson.dumps(body),
        headers={"Authorization": f"Bearer {settings.admin_token}"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=300) as response:
            return orjson.loads(response.read())
    except urllib.error.HTTPError as exc:
        raise CommandError(orjson.loads(exc.read()).get("error", str(exc))) from None
    except (urllib.error.URLError, ConnectionError):
        return None


def _direct(settings: Settings):
    from tracker.clickhouse import ClickHouse

    try:
        return ClickHouse(
            settings.clickhouse_dsn,
            settings.clickhouse.database,
            settings.clickhouse.cluster,
            query_limits=settings.clickhouse.query_limits(),
        )
    except Exception as exc:
        raise CommandError(f"cannot open ClickHouse at {settings.clickhouse_dsn}: {exc}") from None


def run_query(settings: Settings, sql: str) -> tuple[list[str], list[list]]:
    """Through the running sink when there is one, else directly."""
    answer = _endpoint(settings, "/query", {"sql": sql})
    if answer is not None:
        return answer["columns"], answer["rows"]
    ch = _direct(settings)
    try:
        columns, rows = ch.query(sql, readonly=True)
    except Exception as exc:
        raise CommandError(str(exc).strip().splitlines()[0]) from None
    finally:
        ch.close()
    return columns, orjson.loads(orjson.dumps(rows, default=str))


def cmd_migrate(settings: Settings, args) -> int:
    answer = _endpoint(settings, "/migrate", {})
    if answer is None:
        from tracker import migrations

        ch = _direct(settings)
        try:
            applied = migrations.apply(ch, settings)
        finally:
            ch.close()
    else:
        applied = answer["applied"]
    print("applied: " + ", ".join(applied) if applied else "schema is up to date")
    return 0


def cmd_rebuild_hot(settings: Settings, args) -> int:
    """Through the running sink when there is one (it owns chDB), else directly."""
    answer = _endpoint(settings, "/rebuild-hot", {})
    if answer is None:
        from tracker import rebuild_hot

        ch = _direct(settings)
        try:
            answer = rebuild_hot.rebuild(ch, _redis(settings), settings.tracking.hot_hours)
        finally:
            ch.close()
    print(
        f"rebuilt the last {answer['hot_hours']} hours: {answer['clicks']} clicks "
        f"({answer['flagged']} flagged); Redis holds every click from {answer['since_ms']}"
    )
    return 0


def _privacy(settings: Settings, action: str, visitor: str) -> dict:
    """Through the running sink when there is one, else directly."""
    from tracker import privacy_ops

    answer = _endpoint(settings, f"/privacy/{action}", {"visitor_id": visitor})
    if answer is not None:
        return answer
    ch = _direct(settings)
    try:
        redis = _redis(settings)
        if action == "export":
            return privacy_ops.export(ch, redis, visitor, settings.tracking.hot_hours)
        return privacy_ops.erase(
            ch, redis, visitor, settings.clickhouse.cluster, settings.tracking.hot_hours
        )
    except privacy_ops.PrivacyError as exc:
        raise CommandError(str(exc)) from None
    finally:
        ch.close()


def cmd_privacy_export(settings: Settings, args) -> int:
    data = orjson.dumps(_privacy(settings, "export", args.visitor), option=orjson.OPT_INDENT_2)
    if args.out:
        Path(args.out).write_bytes(data + b"\n")
        print(f"written to {args.out}")
    else:
        print(data.decode())
    return 0


def cmd_privacy_erase(settings: Settings, args) -> int:
    from tracker import audit

    counts = _privacy(settings, "erase", args.visitor)
    audit.record_cli(_redis(settings), "privacy erase", args.visitor, after=counts)
    print("erased: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
    return 0


def cmd_sql(settings: Settings, args) -> int:
    columns, rows = run_query(settings, args.query)
    print(format_rows(columns, rows, args.format), end="")
    return 0


# -- links --------------------------------------------------------------------------------


def _redis(settings: Settings):
    from tracker.redis_connection import sync_client

    return sync_client(settings.redis.url)


def cmd_links_add(settings: Settings, args) -> int:
    from tracker.links import LinkError, create, new_link

    try:
        link = new_link(
            {
                "slug": args.slug,
                "destination": args.destination,
                "campaign_id": args.campaign,
                "affiliate_id": args.affiliate,
                "advertiser_id": args.advertiser,
            }
        )
    except LinkError as exc:
        raise CommandError(str(exc)) from None
    if not create(_redis(settings), link):
        if args.if_missing:
            print(f"link {link.slug} exists")
            return 0
        raise CommandError(f"link {link.slug!r} already exists")
    from tracker.audit import record_cli

    record_cli(_redis(settings), "links add", link.slug, None, link.public())
    print(f"link {link.slug} -> {link.destination}")
    return 0


def cmd_links_list(settings: Settings, args) -> int:
    from tracker import redis_keys as K
    from tracker.links import parse_all

    links = parse_all(_redis(settings).hgetall(K.LINKS_HASH))
    columns = ["slug", "status", "campaign_id", "affiliate_id", "advertiser_id", "destination"]
    rows = [[getattr(link, c) for c in columns] for _, link in sorted(links.items())]
    print(format_rows(columns, rows, args.format), end="")
    return 0


def cmd_links_disable(settings: Settings, args) -> int:
    from tracker import redis_keys as K
    from tracker.links import Link, apply_changes, save

    redis = _redis(settings)
    raw = redis.hget(K.LINKS_HASH, args.slug)
    if raw is None:
        raise CommandError(f"no link {args.slug!r}")
    before = Link.from_json(raw)
    link = apply_changes(before, {"status": "disabled"})
    save(redis, link)
    from tracker.audit import record_cli

    record_cli(redis, "links disable", link.slug, before.public(), link.public())
    print(f"link {link.slug} disabled")
    return 0


def cmd_links_route(settings: Settings, args) -> int:
    from tracker import redis_keys as K
    from tracker.links import Link, LinkError, apply_changes, check_routes, parse_all, save

    redis = _redis(settings)
    raw = redis.hget(K.LINKS_HASH, args.slug)
    if raw is None:
        raise CommandError(f"no link {args.slug!r}")
    before = Link.from_json(raw)
    if not (args.file or args.json or args.clear):
        print(orjson.dumps(before.routing, option=orjson.OPT_INDENT_2).decode())
        return 0
    try:
        text = Path(args.file).read_text() if args.file else args.json
        routing = None if args.clear else orjson.loads(text)
    except (OSError, orjson.JSONDecodeError) as exc:
        raise CommandError(f"routing is not readable JSON: {exc}") from None
    try:
        link = apply_changes(before, {"routing": routing})
        check_routes(link, parse_all(redis.hgetall(K.LINKS_HASH)))
    except LinkError as exc:
        raise CommandError(str(exc)) from None
    save(redis, link)
    from tracker.audit import record_cli

    record_cli(redis, "links route", link.slug, before.public(), link.public())
    rules = len((link.routing or {}).get("rules", []))
    print(
        f"link {link.slug}: {rules} rule(s){', caps' if (link.routing or {}).get('caps') else ''}"
    )
    return 0


def cmd_campaign_caps(settings: Settings, args) -> int:
    from tracker import redis_keys as K
    from tracker.audit import record_cli
    from tracker.routing import campaign_caps
    from tracker.routing.rules import RoutingError

    redis = _redis(settings)
    if args.campaign is None or not (args.json or args.clear):
        raw = redis.hgetall(K.CAMPAIGN_CAPS_HASH)
        for key, value in sorted(raw.items()):
            if args.campaign in (None, key.decode()):
                print(f"{key.decode()}\t{value.decode()}")
        return 0
    before = redis.hget(K.CAMPAIGN_CAPS_HASH, args.campaign)
    data = None
    if args.json:
        try:
            data = orjson.loads(args.json)
            campaign_caps.parse(args.campaign, data)
        except (orjson.JSONDecodeError, RoutingError) as exc:
            raise CommandError(f"caps refused: {exc}") from None
    pipe = redis.pipeline(transaction=False)
    campaign_caps.stage_save(pipe, args.campaign, data)
    pipe.execute()
    record_cli(
        redis,
        "campaign-caps",
        f"campaign_caps:{args.campaign}",
        before and orjson.loads(before),
        data,
    )
    print(f"campaign {args.campaign}: {'caps set' if data else 'caps removed'}")
    return 0


# -- advertisers --------------------------------------------------------------------------


def cmd_advertisers_add(settings: Settings, args) -> int:
    from tracker.advertisers import AdvertiserError, create, new_advertiser

    try:
        advertiser = new_advertiser(
            {"id": args.id, **({"token": args.token} if args.token else {})}
        )
    except AdvertiserError as exc:
        raise CommandError(str(exc)) from None
    if not create(_redis(settings), advertiser):
        raise CommandError(f"advertiser {advertiser.id!r} already exists")
    from tracker.audit import record_cli

    record_cli(_redis(settings), "advertisers add", advertiser.id, None, advertiser.public())
    print(f"advertiser {advertiser.id} token {advertiser.token}")
    return 0


def cmd_advertisers_list(settings: Settings, args) -> int:
    from tracker import redis_keys as K
    from tracker.advertisers import Advertiser
    from tracker.hashcache import parse_hash

    items = parse_hash(_redis(settings).hgetall(K.ADVERTISERS_HASH), Advertiser.from_json)
    columns = ["id", "status", "created_at"] + (["token"] if args.show_tokens else [])
    rows = [[adv.public(with_token=True)[c] for c in columns] for _, adv in sorted(items.items())]
    print(format_rows(columns, rows, args.format), end="")
    return 0


# -- attribution --------------------------------------------------------------------------


def _when(value: str | None, flag: str) -> str | None:
    """'YYYY-MM-DD' or 'YYYY-MM-DD HH:MM:SS' (UTC) as the SQL builder expects it."""
    if value is None:
        return None
    from datetime import datetime

    for fmt in ("%Y-%m-%d", "%Y-%m-%d %H:%M:%S", "%Y-%m-%dT%H:%M:%S"):
        try:
            return datetime.strptime(value, fmt).strftime("%Y-%m-%d %H:%M:%S")
        except ValueError:
            continue
    raise CommandError(f"{flag} must be a date (YYYY-MM-DD) or datetime, not {value!r}")


def _report(settings: Settings, args, models: list[str], data_driven: bool = False) -> int:
    from attribution.sql import report_sql

    lookback_days = (
        args.lookback if args.lookback is not None else (settings.tracking.lookback_days)
    )
    half_life_days = (
        args.half_life if args.half_life is not None else (settings.attribution.half_life_days)
    )
    if lookback_days <= 0 or half_life_days <= 0:
        raise CommandError("--lookback and --half-life must be positive")
    try:
        sql = report_sql(
            settings.clickhouse.database,
            args.by,
            models,
            date_from=_when(args.date_from, "--from"),
            date_to=_when(args.date_to, "--to"),
            lookback_ms=int(lookback_days * 86_400_000),
            half_life_ms=int(half_life_days * 86_400_000),
            credit_flagged=settings.fraud.credit_flagged_conversions,
            statuses=("approved", "pending") if args.include_pending else ("approved",),
        )
    except ValueError as exc:
        raise CommandError(str(exc)) from None
    columns, rows = run_query(settings, sql)
    if data_driven and rows:  # nothing credited (an empty answer has no columns either)
        from attribution.markov import with_data_driven
        from attribution.sql import markov_paths_sql

        paths_sql = markov_paths_sql(
            settings.clickhouse.database,
            args.by,
            date_from=_when(args.date_from, "--from"),
            date_to=_when(args.date_to, "--to"),
            lookback_ms=int(lookback_days * 86_400_000),
            credit_flagged=settings.fraud.credit_flagged_conversions,
            statuses=("approved", "pending") if args.include_pending else ("approved",),
        )
        _, path_rows = run_query(settings, paths_sql)
        key = "campaign_id" if args.by == "campaign" else "affiliate_id"
        columns, rows = with_data_driven(columns, rows, path_rows, key)
    print(format_rows(columns, rows, args.format), end="")
    return 0


def cmd_attribute(settings: Settings, args) -> int:
    return _report(settings, args, [args.model])


def cmd_report_attribution(settings: Settings, args) -> int:
    """The configured models side by side, and the data-driven (Markov) model beside them."""
    return _report(settings, args, settings.attribution.models, data_driven=True)


def cmd_report_fraud(settings: Settings, args) -> int:
    """Flags by campaign, affiliate and rule; bot clicks count under `bot:<reason>`."""
    db = settings.clickhouse.database
    period = (
        " AND ".join(
            [
                f"event_time >= toDateTime64('{d}', 3, 'UTC')"
                for d in [_when(args.date_from, "--from")]
                if d
            ]
            + [
                f"event_time < toDateTime64('{d}', 3, 'UTC')"
                for d in [_when(args.date_to, "--to")]
                if d
            ]
        )
        or "1"
    )
    sql = f"""
SELECT kind, campaign_id, affiliate_id, rule, count() AS events
FROM (
    SELECT 'click' AS kind, campaign_id, affiliate_id,
           arrayJoin(arrayConcat(fraud_flags,
                                 if(is_bot = 1, ['bot:' || bot_reason], []))) AS rule
    FROM {db}.clicks WHERE {period}
    UNION ALL
    SELECT 'conversion' AS kind, campaign_id, affiliate_id, arrayJoin(fraud_flags) AS rule
    FROM {db}.conversions WHERE {period} AND previous_status = ''
)
GROUP BY kind, campaign_id, affiliate_id, rule
ORDER BY kind, campaign_id, affiliate_id, events DESC, rule"""
    columns, rows = run_query(settings, sql)
    print(format_rows(columns, rows, args.format), end="")
    return 0


def report_result(settings: Settings, params: dict, filters: dict) -> dict:
    """A report through the running sink (or chDB directly), as the API computes it."""
    from datetime import UTC, datetime

    from tracker.reports import query

    try:
        report = query.parse(
            params,
            filters,
            default_currency=settings.conversions.default_currency,
            now=datetime.now(UTC),
        )
    except query.ReportError as exc:
        raise CommandError(str(exc)) from None
    plan = query.plan(report, settings.clickhouse.database)
    return query.assemble(plan, [run_query(settings, sql) for sql in plan.queries])


def cmd_report_stats(settings: Settings, args) -> int:
    filters = {}
    for item in args.filter:
        name, sep, value = item.partition("=")
        if not sep:
            raise CommandError(f"--filter takes FIELD=VALUES, not {item!r}")
        filters[name] = value
    params = {
        "metrics": args.metrics,
        "group_by": args.group_by,
        "from": args.date_from or "",
        "to": args.date_to or "",
        "tz": args.tz,
        "currency": args.currency or "",
        "sort": args.sort,
        "limit": args.limit,
        "compare": "1" if args.compare else "",
    }
    result = report_result(settings, params, filters)
    if args.format == "json":
        print(orjson.dumps(result).decode())
        return 0
    columns = [*result["group_by"], *result["metrics"]]
    rows = [[row[c] for c in columns] for row in result["rows"]]
    if args.format == "table" and result["group_by"]:
        rows.append(
            ["total"]
            + [""] * (len(result["group_by"]) - 1)
            + [result["totals"][m] for m in result["metrics"]]
        )
    print(format_rows(columns, rows, args.format), end="")
    if args.format == "table":
        print(f"{result['from']} .. {result['to']} ({result['tz']}), {result['currency']}")
        if "change" in result:
            for name, change in result["change"].items():
                before = result["previous"]["totals"][name]
                shown = "n/a" if change is None else f"{change:+.1%}"
                print(f"{name}: previous {before}, change {shown}")
    return 0


def cmd_report_metrics(settings: Settings, args) -> int:
    from tracker.reports.metrics import definitions

    print(format_rows(["metric", "definition"], [list(d) for d in definitions()], "table"), end="")
    return 0


# -- API keys and the audit log -----------------------------------------------------------


def cmd_keys_create(settings: Settings, args) -> int:
    from tracker import access
    from tracker import redis_keys as K
    from tracker.audit import record_cli

    try:
        key, token = access.new_key(
            {
                "role": args.role,
                "subject": args.subject,
                "name": args.name,
                "campaigns": args.campaign,
            }
        )
    except access.KeyError_ as exc:
        raise CommandError(str(exc)) from None
    redis = _redis(settings)
    redis.hset(K.API_KEYS_HASH, key.id, key.to_json())
    record_cli(redis, "keys create", key.id, None, key.public())
    print(f"key {key.id} ({key.role}{' ' + key.subject if key.subject else ''}): {token}")
    print("shown once: store it now")
    return 0


def cmd_keys_list(settings: Settings, args) -> int:
    from tracker import redis_keys as K
    from tracker.access import ApiKey

    raw = _redis(settings).hgetall(K.API_KEYS_HASH)
    keys = sorted((ApiKey.from_json(v) for v in raw.values()), key=lambda k: k.created_at)
    columns = ["id", "role", "subject", "name", "campaigns", "created_at", "revoked_at"]
    rows = [[k.public()[c] for c in columns] for k in keys]
    print(format_rows(columns, rows, args.format), end="")
    return 0


def cmd_keys_revoke(settings: Settings, args) -> int:
    from tracker import access
    from tracker import redis_keys as K
    from tracker.audit import record_cli

    redis = _redis(settings)
    raw = redis.hget(K.API_KEYS_HASH, args.id)
    if raw is None:
        raise CommandError(f"no key {args.id!r}")
    key = access.ApiKey.from_json(raw)
    done = access.revoked(key)
    redis.hset(K.API_KEYS_HASH, key.id, done.to_json())
    record_cli(redis, "keys revoke", key.id, key.public(), done.public())
    print(f"key {key.id} revoked")
    return 0


def cmd_audit(settings: Settings, args) -> int:
    from tracker import redis_keys as K
    from tracker.audit import matches, parse

    redis = _redis(settings)
    items: list[dict] = []
    end = "+"
    while len(items) < args.limit:
        page = redis.xrevrange(K.AUDIT_STREAM, max=end, min="-", count=500)
        if not page:
            break
        items += [
            item
            for item in (parse(i, f) for i, f in page)
            if matches(item, args.actor, args.action)
        ]
        last = page[-1][0]
        end = "(" + (last.decode() if isinstance(last, bytes) else last)
    items = items[: args.limit]
    columns = ["at", "actor", "role", "action", "target", "status", "before", "after"]
    rows = [[item[c] for c in columns] for item in items]
    print(format_rows(columns, rows, args.format), end="")
    return 0


def cmd_report_reconciliation(settings: Settings, args) -> int:
    from datetime import UTC, datetime

    from tracker import refusals
    from tracker.reports import query, reconciliation

    try:
        advertiser = reconciliation.check_advertiser(args.advertiser)
        report = query.parse(
            {"from": args.date_from or "", "to": args.date_to or "", "tz": args.tz},
            {},
            default_currency=settings.conversions.default_currency,
            now=datetime.now(UTC),
        )
    except query.ReportError as exc:
        raise CommandError(str(exc)) from None
    db = settings.clickhouse.database
    answers = [run_query(settings, sql) for sql in reconciliation.queries(report, db, advertiser)]
    redis = _redis(settings)
    days = [redis.hgetall(refusals.day_key(d)) for d in refusals.days(report.start, report.end)]
    result = reconciliation.assemble(report, advertiser, answers, refusals.totals(days, advertiser))
    if args.format == "json":
        print(orjson.dumps(result).decode())
        return 0
    print(f"advertiser {advertiser}, {result['from']} .. {result['to']}")
    statuses = reconciliation.STATUSES
    columns = ["currency", *[f"{s}_{k}" for s in statuses for k in ("conversions", "amount")]]
    rows = [
        [c["currency"], *[c[s][k] for s in statuses for k in ("conversions", "amount")]]
        for c in result["conversions"]
    ]
    print(format_rows(columns, rows, "table"), end="")
    owed = [[o["currency"], o["owed"], o["pending"]] for o in result["owed"]]
    print(format_rows(["currency", "owed", "pending"], owed, "table"), end="")
    refused = [[r["reason"], r["count"]] for r in result["refused_postbacks"]]
    print(format_rows(["refused postback reason", "count"], refused, "table"), end="")
    return 0


# -- deliveries (postbacks out, webhooks) -------------------------------------------------


def cmd_deliveries_list(settings: Settings, args) -> int:
    from tracker.delivery import queue

    redis = _redis(settings)
    sizes = queue.sizes(redis)
    print(", ".join(f"{k} {v}" for k, v in sizes.items()))
    if args.failed:
        columns = ["id", "target_id", "trigger", "conversion_id", "attempt", "last_outcome"]
        columns += ["last_status", "last_error"]
        rows = [[job.get(c, "") for c in columns] for job in queue.dead_letters(redis)]
        print(format_rows(columns, rows, args.format))
    return 0


def cmd_deliveries_retry(settings: Settings, args) -> int:
    from tracker.audit import record_cli
    from tracker.delivery import queue

    redis = _redis(settings)
    ids = [job["id"] for job in queue.dead_letters(redis)] if args.failed else [args.id]
    replayed = [i for i in ids if queue.replay(redis, i)]
    if not args.failed and not replayed:
        raise CommandError(f"no dead letter {args.id!r}")
    for delivery_id in replayed:
        record_cli(redis, "deliveries retry", f"delivery:{delivery_id}", "dead", "queued")
    print(f"replayed {len(replayed)} deliver{'y' if len(replayed) == 1 else 'ies'}")
    return 0


def cmd_deliveries_add_target(settings: Settings, args) -> int:
    from tracker.audit import record_cli
    from tracker.delivery import targets as T

    data: dict = {"id": args.id, "kind": args.kind, "url": args.url}
    if args.events:
        data["events"] = [e.strip() for e in args.events.split(",") if e.strip()]
    for key, value in (
        ("affiliate_id", args.affiliate),
        ("campaign_id", args.campaign),
        ("advertiser_id", args.advertiser),
        ("method", args.method),
    ):
        if value:
            data[key] = value
    try:
        target = T.validate(data)
    except T.TargetError as exc:
        raise CommandError(str(exc)) from None
    redis = _redis(settings)
    if not T.create(redis, target):
        raise CommandError(f"target {target.id!r} already exists")
    record_cli(
        redis, "deliveries add-target", f"delivery_target:{target.id}", None, target.public()
    )
    print(f"target {target.id} ({target.kind}) added")
    if target.secret:
        print(f"signing secret {target.secret}")
    return 0


def cmd_deliveries_targets(settings: Settings, args) -> int:
    from tracker.delivery import targets as T

    columns = ["id", "kind", "url", "events", "affiliate_id", "campaign_id", "enabled"]
    found = sorted(T.load_all(_redis(settings)), key=lambda t: t.id)
    rows = [[t.public()[c] for c in columns] for t in found]
    print(format_rows(columns, rows, args.format))
    return 0
