"""Settings: one typed object built from `config/tracker.toml` plus TRACKER_* overrides.

Every key `section.key` can be overridden by `TRACKER_SECTION_KEY`; a few common keys also
have short names (ALIASES). Values are validated once, at start; a bad value raises
ConfigError with one line that names the key.
"""

from __future__ import annotations

import ipaddress
import os
import secrets
import tomllib
from dataclasses import asdict, dataclass, field, fields, is_dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any, get_type_hints

from tracker import http_limits

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_FILE = ROOT / "config" / "tracker.toml"

# Short environment names for the keys operators set most.
ALIASES = {
    "TRACKER_PORT": "http.port",
    "TRACKER_HOST": "http.host",
    "TRACKER_WORKERS": "http.workers",
    "TRACKER_TRUSTED_PROXIES": "http.trusted_proxies",
    "TRACKER_FALLBACK_URL": "http.fallback_url",
    "TRACKER_LOOKBACK_DAYS": "tracking.lookback_days",
    "TRACKER_HOT_HOURS": "tracking.hot_hours",
}


class ConfigError(ValueError):
    """A setting is missing or invalid; the message names the key."""


@dataclass
class HttpSettings:
    host: str = "0.0.0.0"
    port: int = 8080
    workers: int = 0
    trusted_proxies: list[str] = field(default_factory=list)
    fallback_url: str = ""
    max_query_bytes: int = 8192
    fast_path: bool = True  # serve /c/ and /p.gif with the lean protocol (fastpath.py)


@dataclass
class CookieSettings:
    name: str = "vid"
    secure: bool = False
    samesite: str = "Lax"
    domain: str = ""


@dataclass
class TrackingSettings:
    lookback_days: int = 30
    hot_hours: int = 48  # the part of the lookback Redis holds (tracker/hot.py)
    link_refresh_seconds: float = 2.0


@dataclass
class ConversionSettings:
    default_currency: str = "USD"
    dedup_days: int = 400
    signature_window_seconds: int = 300
    max_body_bytes: int = 65536
    max_amount: int = 1_000_000_000  # in currency units; larger amounts are refused
    # conversion pixels are unauthenticated: at most this many an hour per visitor cookie
    # and per client address (0: no limit)
    pixel_per_visitor_per_hour: int = 20
    pixel_per_ip_per_hour: int = 200


@dataclass
class AttributionSettings:
    models: list[str] = field(
        default_factory=lambda: [
            "first_click",
            "last_click",
            "linear",
            "time_decay",
            "position_based",
        ]
    )
    half_life_days: float = 7.0


@dataclass
class GeoSettings:
    databases: list[str] = field(default_factory=list)  # .mmdb paths; empty: geo is off


@dataclass
class PrivacySettings:
    # zero the last IPv4 octet / last 80 bits of IPv6 at the edge, before Redis or a disk;
    # fraud counters then count by a keyed hash (tracker/ip_privacy.py)
    anonymize_ip: bool = False
    honor_no_track: bool = True  # `no-track` parameter, `DNT: 1` or `Sec-GPC: 1`


# Hosting and cloud networks (AWS, Google Cloud, Azure, DigitalOcean, OVH, Hetzner, Linode,
# Vultr, Oracle, Alibaba, Tencent, Contabo, Scaleway, Leaseweb).
DATACENTER_ASNS = [
    16509,
    14618,
    396982,
    8075,
    14061,
    16276,
    24940,
    63949,
    20473,
    31898,
    45102,
    132203,
    51167,
    12876,
    60781,
]


# The duplicate-click rule keeps each visitor's click times on a link for about two of the
# longest configured windows (tracker/sink/enrich/fraud.py): a day bounds that memory.
MAX_DUPLICATE_CLICK_SECONDS = 86_400


@dataclass
class FraudThresholds:
    """What the fraud rules (tracker/sink/enrich/fraud.py) count against: `fraud.<name>`,
    and per campaign under `fraud.campaigns.<id>` with the same names."""

    ip_clicks_per_minute: int = 100
    duplicate_click_seconds: int = 60
    min_click_to_conversion_seconds: float = 5.0
    visitors_per_ip_per_hour: int = 5

    def thresholds(self) -> FraudThresholds:
        """These thresholds alone (a FraudSettings carries more)."""
        return FraudThresholds(**{f.name: getattr(self, f.name) for f in fields(FraudThresholds)})


FRAUD_COUNTERS = ("memory", "redis")


@dataclass
class FraudSettings(FraudThresholds):
    # where the click rules' counts live: "memory", the sink's (journaled in the data
    # folder; one sink reads the events stream), or "redis" (several sinks share them)
    counters: str = "memory"
    datacenter_asns: list[int] = field(default_factory=lambda: list(DATACENTER_ASNS))
    credit_flagged_conversions: bool = False
    campaigns: dict = field(default_factory=dict)  # campaign id -> thresholds to override


@dataclass
class RedisSettings:
    url: str = "redis://127.0.0.1:6379/0"
    manage: bool = False
    timeout_seconds: float = 0.5  # a slower flush spools: an edge holds what arrives meanwhile
    dedup_ttl_seconds: int = 900
    stream_shards: int = 1  # events stream shards (spread over a Redis Cluster's nodes)


@dataclass
class WriterSettings:
    # a flush holds a few copies of its batch at once (rows, the stream entry, the packed
    # command): 500 took an edge 1.5-2 MB over its 60 MB in a burst, at no gain in rate
    batch_max_events: int = 250
    # at moderate rates a batch waits this long for more events: 20 ms rather than 5 took
    # 15 % off the edges' CPU and 10 % off Redis's per click at 9,000 clicks/s (fewer,
    # fuller script calls); a burst fills batches sooner either way
    batch_max_delay_ms: int = 20
    # full batches waiting for Redis beyond which the edge stops reading requests (until
    # half are sent): bounds an edge's memory when Redis takes events slower than they come
    max_waiting_batches: int = 4
    # the events stream's rows LZ4-compressed (tracker/stream_payload.py): a click's ~900
    # bytes in Redis, its append-only file and the sink's reads become ~150
    compress_stream: bool = True


@dataclass
class SinkSettings:
    read_entries: int = 200
    block_ms: int = 200
    # after a read that did not fill read_entries, the next read waits until this long
    # after it: an insert costs chDB 30-45 ms of CPU whatever its size (a new part per
    # table and rollup, ~20 files each), so inserting every small read spent a third of a
    # core at 3,000 clicks/s; waiting gathers each read's worth (adds at most this to latency)
    insert_interval_ms: int = 500
    reclaim_idle_seconds: int = 30
    consumer: str = ""
    query_host: str = "127.0.0.1"
    query_port: int = 8124
    max_lag_entries: int = 2000  # stream entries (edge batches) behind
    nice: int = 10  # the sink yields the CPU to the edges under load, and catches up after
    # and more: on Linux it runs only on CPU time nothing else asks for (SCHED_IDLE), so a
    # burst's clicks are answered first and enriched after it
    idle_priority: bool = True


# raw event tables whose rows expire (rollups keep clickhouse.retention_days)
RETAINED_TABLES = (
    "clicks",
    "impressions",
    "orphan_visits",
    "conversions",
    "attribution_credits",
    "commissions",
)


@dataclass
class ClickHouseSettings:
    dsn: str = ""
    database: str = "tracker"
    retention_days: int = 400
    # days kept per table (RETAINED_TABLES), overriding retention_days
    retention: dict = field(default_factory=dict)
    dedup_window: int = 10000
    migrations_dir: str = ""  # empty: config/migrations beside this repository's code
    cluster: str = ""  # empty: one server / chDB; else DDL runs ON CLUSTER (migrations.py)
    replicated: bool = True  # with a cluster: Replicated*MergeTree local tables
    zookeeper_path: str = "/clickhouse/tables/{shard}/{database}/{table}"  # macros kept as is
    replica_name: str = "{replica}"
    # limits of one analyst query (`tracker sql`, the query endpoint, reports); the
    # engine enforces them and a read-only session cannot raise them
    query_max_seconds: int = 60
    query_max_memory_mb: int = 2048
    query_max_rows_read: int = 2_000_000_000

    def retention_of(self, table: str) -> int:
        return int(self.retention.get(table, self.retention_days))

    def query_limits(self) -> dict[str, int]:
        """The analyst session's limits as ClickHouse settings."""
        return {
            "max_execution_time": self.query_max_seconds,
            "max_memory_usage": self.query_max_memory_mb * 1024 * 1024,
            "max_rows_to_read": self.query_max_rows_read,
        }


@dataclass
class LedgerSettings:
    dsn: str = ""  # empty: SQLite file <data_dir>/ledger.sqlite3; or postgresql://...


@dataclass
class CommissionsSettings:
    max_levels: int = 2  # level 1 and its referrers up to this level (never more than 3)
    min_payout: str = "100"  # an affiliate's minimum payout unless it sets its own
    auto_approve_interval_seconds: float = 60.0  # how often the sink runs auto-approval


@dataclass
class DeliverySettings:
    """Postbacks out and webhooks (tracker/delivery/): the sender worker's limits."""

    timeout_seconds: float = 10.0  # one call, connect to last byte
    max_attempts: int = 12  # then the delivery is dead-lettered (replay: tracker deliveries)
    backoff_base_seconds: float = 10.0  # first retry after about this long, doubling...
    backoff_max_seconds: float = 21600.0  # ...up to this (6 hours), with jitter
    concurrency: int = 64  # calls in flight per worker
    max_response_bytes: int = 4096  # of a receiver's reply body, read and kept at most
    # destinations on loopback, private, link-local, metadata or other non-public
    # addresses are refused unless inside one of these networks (CIDRs)
    allowed_networks: list[str] = field(default_factory=list)


@dataclass
class Settings:
    data_dir: str = "data"
    admin_token: str = ""
    http: HttpSettings = field(default_factory=HttpSettings)
    cookie: CookieSettings = field(default_factory=CookieSettings)
    tracking: TrackingSettings = field(default_factory=TrackingSettings)
    conversions: ConversionSettings = field(default_factory=ConversionSettings)
    attribution: AttributionSettings = field(default_factory=AttributionSettings)
    geo: GeoSettings = field(default_factory=GeoSettings)
    privacy: PrivacySettings = field(default_factory=PrivacySettings)
    fraud: FraudSettings = field(default_factory=FraudSettings)
    redis: RedisSettings = field(default_factory=RedisSettings)
    writer: WriterSettings = field(default_factory=WriterSettings)
    sink: SinkSettings = field(default_factory=SinkSettings)
    clickhouse: ClickHouseSettings = field(default_factory=ClickHouseSettings)
    ledger: LedgerSettings = field(default_factory=LedgerSettings)
    commissions: CommissionsSettings = field(default_factory=CommissionsSettings)
    deliveries: DeliverySettings = field(default_factory=DeliverySettings)

    @property
    def data_path(self) -> Path:
        return Path(self.data_dir)

    @property
    def lookback_seconds(self) -> int:
        return self.tracking.lookback_days * 86400

    @property
    def clickhouse_dsn(self) -> str:
        return self.clickhouse.dsn or f"chdb://{self.data_path.resolve() / 'clickhouse'}"

    @property
    def ledger_dsn(self) -> str:
        return self.ledger.dsn or f"sqlite:///{self.data_path.resolve() / 'ledger.sqlite3'}"

    @property
    def trusted_networks(self) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
        return [ipaddress.ip_network(c, strict=False) for c in self.http.trusted_proxies]

    @property
    def worker_count(self) -> int:
        return self.http.workers or os.cpu_count() or 1


def load(path: str | os.PathLike | None = None, env: dict[str, str] | None = None) -> Settings:
    """Build Settings from the TOML file (TRACKER_CONFIG or the default) and the environment."""
    env = dict(os.environ if env is None else env)
    file = Path(path or env.get("TRACKER_CONFIG") or DEFAULT_FILE)
    try:
        raw = tomllib.loads(file.read_text()) if file.exists() else {}
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {file}: {exc}") from exc
    if path and not file.exists():
        raise ConfigError(f"config file {file}: not found")

    settings = Settings()
    _apply_file(settings, raw, prefix="")
    _apply_env(settings, env)
    if not Path(settings.data_dir).is_absolute():
        settings.data_dir = str((ROOT / settings.data_dir).resolve())
    _validate(settings)
    if not settings.admin_token:
        settings.admin_token = _stored_token(settings.data_path)
    return settings


def _apply_file(obj: Any, raw: dict, prefix: str) -> None:
    names = {f.name for f in fields(obj)}
    for key, value in raw.items():
        dotted = f"{prefix}{key}"
        if key not in names:
            raise ConfigError(f"config key {dotted}: unknown setting")
        current = getattr(obj, key)
        if is_dataclass(current):
            if not isinstance(value, dict):
                raise ConfigError(f"config key {dotted}: must be a table")
            _apply_file(current, value, prefix=f"{dotted}.")
        else:
            setattr(obj, key, _coerce(obj, key, value, dotted))


def _apply_env(settings: Settings, env: dict[str, str]) -> None:
    targets = {_env_name(dotted): dotted for dotted in _all_keys(settings)}
    targets.update(ALIASES)
    for name, dotted in targets.items():
        if name in env:
            *sections, key = dotted.split(".")
            obj: Any = settings
            for section in sections:
                obj = getattr(obj, section)
            setattr(obj, key, _coerce(obj, key, env[name], f"{dotted} ({name})"))


def _all_keys(obj: Any, prefix: str = "") -> list[str]:
    keys = []
    for f in fields(obj):
        value = getattr(obj, f.name)
        if is_dataclass(value):
            keys += _all_keys(value, f"{prefix}{f.name}.")
        else:
            keys.append(f"{prefix}{f.name}")
    return keys


def _env_name(dotted: str) -> str:
    return "TRACKER_" + dotted.replace(".", "_").upper()


def _coerce(obj: Any, key: str, value: Any, label: str) -> Any:
    kind = get_type_hints(type(obj))[key]
    try:
        if kind is bool:
            if isinstance(value, bool):
                return value
            text = str(value).strip().lower()
            if text in ("1", "true", "yes", "on"):
                return True
            if text in ("0", "false", "no", "off", ""):
                return False
            raise ValueError
        if kind is int:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError
            return int(value)
        if kind is float:
            return float(value)
        if kind == list[int]:
            if isinstance(value, str):
                value = [part.strip() for part in value.split(",") if part.strip()]
            if not isinstance(value, list):
                raise ValueError
            return [int(v) for v in value if not isinstance(v, bool)]
        if kind is dict:
            if not isinstance(value, dict):
                raise ValueError
            return value
        if kind == list[str]:
            if isinstance(value, str):
                return [part.strip() for part in value.split(",") if part.strip()]
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise ValueError
            return value
        if not isinstance(value, str):
            raise ValueError
        return value
    except (TypeError, ValueError):
        name = getattr(kind, "__name__", str(kind))
        raise ConfigError(f"config key {label}: expected {name}, got {value!r}") from None


def _validate(s: Settings) -> None:
    def check(ok: bool, key: str, why: str) -> None:
        if not ok:
            raise ConfigError(f"config key {key}: {why}")

    check(1 <= s.http.port <= 65535, "http.port", "must be between 1 and 65535")
    check(0 <= s.http.workers <= 256, "http.workers", "must be between 0 and 256")
    for cidr in s.http.trusted_proxies:
        try:
            ipaddress.ip_network(cidr, strict=False)
        except ValueError:
            raise ConfigError(f"config key http.trusted_proxies: {cidr!r} is not a CIDR") from None
    check(
        not s.http.fallback_url or s.http.fallback_url.startswith(("http://", "https://")),
        "http.fallback_url",
        "must be an http(s) URL or empty",
    )
    check(s.http.max_query_bytes >= 256, "http.max_query_bytes", "must be at least 256")
    check(
        s.http.fallback_url.isprintable() and " " not in s.http.fallback_url,
        "http.fallback_url",
        "must not contain spaces or control characters",
    )
    check(
        all(ch.isalnum() or ch in ".-" for ch in s.cookie.domain),
        "cookie.domain",
        "must be a domain name",
    )
    check(s.cookie.name.isidentifier(), "cookie.name", "must be a plain token")
    check(s.cookie.samesite in ("Lax", "Strict", "None"), "cookie.samesite", "Lax, Strict or None")
    check(
        s.cookie.samesite != "None" or s.cookie.secure,
        "cookie.samesite",
        "None requires cookie.secure = true",
    )
    check(1 <= s.tracking.lookback_days <= 3650, "tracking.lookback_days", "1 to 3650 days")
    check(
        0 <= s.tracking.hot_hours <= s.tracking.lookback_days * 24,
        "tracking.hot_hours",
        "0 to the lookback (in hours)",
    )
    check(s.tracking.link_refresh_seconds > 0, "tracking.link_refresh_seconds", "must be > 0")
    check(
        len(s.conversions.default_currency) == 3 and s.conversions.default_currency.isupper(),
        "conversions.default_currency",
        "must be an ISO 4217 code such as USD",
    )
    check(s.conversions.dedup_days >= 1, "conversions.dedup_days", "must be >= 1")
    for key in ("pixel_per_visitor_per_hour", "pixel_per_ip_per_hour"):
        check(getattr(s.conversions, key) >= 0, f"conversions.{key}", "must be >= 0")
    check(
        s.conversions.signature_window_seconds >= 1,
        "conversions.signature_window_seconds",
        "must be >= 1",
    )
    check(
        1024 <= s.conversions.max_body_bytes <= http_limits.MAX_BODY,
        "conversions.max_body_bytes",
        f"must be 1 KiB to {http_limits.MAX_BODY // 1024} KiB",
    )
    check(s.conversions.max_amount >= 1, "conversions.max_amount", "must be >= 1")
    from attribution import MODELS  # the registry is the one list of model names

    check(bool(s.attribution.models), "attribution.models", "must name at least one model")
    for model in s.attribution.models:
        check(
            model in MODELS,
            "attribution.models",
            f"unknown model {model!r} (known: {', '.join(sorted(MODELS))})",
        )
    check(
        s.fraud.counters in FRAUD_COUNTERS,
        "fraud.counters",
        f"must be one of {', '.join(FRAUD_COUNTERS)} (got {s.fraud.counters!r})",
    )
    thresholds = [f.name for f in fields(FraudThresholds)]
    fraud_levels = {"fraud": asdict(s.fraud.thresholds())}  # the defaults, then campaigns'
    for campaign, values in s.fraud.campaigns.items():
        check(
            isinstance(values, dict) and set(values) <= set(thresholds),
            f"fraud.campaigns.{campaign}",
            f"may set only {', '.join(thresholds)}",
        )
        fraud_levels[f"fraud.campaigns.{campaign}"] = values
    for prefix, values in fraud_levels.items():
        for name, value in values.items():
            check(
                isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0,
                f"{prefix}.{name}",
                "must be a number >= 0",
            )
            check(
                name != "duplicate_click_seconds" or value <= MAX_DUPLICATE_CLICK_SECONDS,
                f"{prefix}.{name}",
                f"must be at most {MAX_DUPLICATE_CLICK_SECONDS} (a day)",
            )
    check(s.attribution.half_life_days > 0, "attribution.half_life_days", "must be > 0")
    check(
        s.redis.url.startswith(
            ("redis://", "rediss://", "unix://", "redis+cluster://", "rediss+cluster://")
        ),
        "redis.url",
        "must start with redis://, rediss://, unix:// or redis+cluster://",
    )
    check(1 <= s.redis.stream_shards <= 64, "redis.stream_shards", "must be 1 to 64")
    check(s.redis.timeout_seconds > 0, "redis.timeout_seconds", "must be > 0")
    check(s.redis.dedup_ttl_seconds >= 60, "redis.dedup_ttl_seconds", "must be >= 60")
    check(s.writer.batch_max_events >= 1, "writer.batch_max_events", "must be >= 1")
    check(s.writer.batch_max_delay_ms >= 0, "writer.batch_max_delay_ms", "must be >= 0")
    check(s.writer.max_waiting_batches >= 1, "writer.max_waiting_batches", "must be >= 1")
    check(1 <= s.sink.read_entries <= 10000, "sink.read_entries", "must be 1 to 10000")
    check(s.sink.block_ms >= 1, "sink.block_ms", "must be >= 1")
    check(0 <= s.sink.insert_interval_ms <= 10_000, "sink.insert_interval_ms", "must be 0 to 10000")
    check(1 <= s.sink.query_port <= 65535, "sink.query_port", "must be between 1 and 65535")
    check(0 <= s.sink.nice <= 19, "sink.nice", "must be 0 to 19")
    check(
        not s.clickhouse.dsn or s.clickhouse.dsn.startswith(("chdb://", "http://", "https://")),
        "clickhouse.dsn",
        "must start with chdb://, http:// or https://",
    )
    check(s.clickhouse.database.isidentifier(), "clickhouse.database", "must be an identifier")
    check(s.clickhouse.retention_days >= 1, "clickhouse.retention_days", "must be >= 1")
    for table, days in s.clickhouse.retention.items():
        check(
            table in RETAINED_TABLES,
            f"clickhouse.retention.{table}",
            "names no table: " + ", ".join(RETAINED_TABLES),
        )
        check(
            isinstance(days, int) and not isinstance(days, bool) and days >= 1,
            f"clickhouse.retention.{table}",
            "must be a whole number of days >= 1",
        )
    check(s.clickhouse.dedup_window >= 100, "clickhouse.dedup_window", "must be >= 100")
    check(s.clickhouse.query_max_seconds >= 1, "clickhouse.query_max_seconds", "must be >= 1")
    check(s.clickhouse.query_max_memory_mb >= 16, "clickhouse.query_max_memory_mb", "must be >= 16")
    check(
        s.clickhouse.query_max_rows_read >= 1000,
        "clickhouse.query_max_rows_read",
        "must be >= 1000",
    )
    check(
        not s.clickhouse.cluster
        or (s.clickhouse.cluster.isidentifier() and s.clickhouse.cluster.isascii()),
        "clickhouse.cluster",
        "must be an identifier (a remote_servers name) or empty",
    )
    check(
        not s.clickhouse.cluster or s.clickhouse.dsn.startswith(("http://", "https://")),
        "clickhouse.cluster",
        "needs a ClickHouse server (an http(s):// dsn), not chDB",
    )
    zk_path = s.clickhouse.zookeeper_path
    check(
        zk_path.startswith("/")
        and "{shard}" in zk_path
        and ("{table}" in zk_path or "{uuid}" in zk_path),
        "clickhouse.zookeeper_path",
        "must start with / and use the {shard} and {table} macros",
    )
    for key in ("zookeeper_path", "replica_name"):
        value = getattr(s.clickhouse, key)
        check(
            bool(value) and value.isprintable() and not set("'\\;") & set(value),
            f"clickhouse.{key}",
            "must be non-empty, without quotes, backslashes or ';'",
        )
    check(
        not s.ledger.dsn or s.ledger.dsn.startswith(("sqlite://", "postgresql://", "postgres://")),
        "ledger.dsn",
        "must start with sqlite://, postgresql:// or postgres://",
    )
    check(1 <= s.commissions.max_levels <= 3, "commissions.max_levels", "must be 1 to 3")
    try:
        min_payout = Decimal(s.commissions.min_payout)
    except ArithmeticError:
        min_payout = Decimal(-1)
    check(
        min_payout.is_finite() and min_payout >= 0,
        "commissions.min_payout",
        "must be a decimal amount >= 0",
    )
    check(
        s.commissions.auto_approve_interval_seconds > 0,
        "commissions.auto_approve_interval_seconds",
        "must be > 0",
    )
    d = s.deliveries
    check(0 < d.timeout_seconds <= 300, "deliveries.timeout_seconds", "must be > 0 and <= 300")
    check(1 <= d.max_attempts <= 100, "deliveries.max_attempts", "must be 1 to 100")
    check(d.backoff_base_seconds > 0, "deliveries.backoff_base_seconds", "must be > 0")
    check(
        d.backoff_max_seconds >= d.backoff_base_seconds,
        "deliveries.backoff_max_seconds",
        "must be >= backoff_base_seconds",
    )
    check(1 <= d.concurrency <= 4096, "deliveries.concurrency", "must be 1 to 4096")
    check(
        0 <= d.max_response_bytes <= 1024 * 1024,
        "deliveries.max_response_bytes",
        "must be 0 to 1 MiB",
    )
    for cidr in d.allowed_networks:
        try:
            ipaddress.ip_network(cidr, strict=False)
        except ValueError:
            raise ConfigError(
                f"config key deliveries.allowed_networks: {cidr!r} is not a CIDR"
            ) from None
    check(
        not s.admin_token or len(s.admin_token) >= 16,
        "admin_token",
        "must be at least 16 characters (or empty: one is generated)",
    )


def _stored_token(data_dir: Path) -> str:
    """A generated admin token, kept in the data folder (mode 0600) so the CLI can read it.

    Written to a temporary file and linked into place, so no process ever reads a
    half-written (empty) token.
    """
    path = data_dir / "admin_token"
    data_dir.mkdir(parents=True, exist_ok=True)
    if not path.exists():
        tmp = data_dir / f".admin_token.{os.getpid()}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(secrets.token_urlsafe(24))
        try:
            os.link(tmp, path)  # fails if another process got there first: use theirs
        except FileExistsError:
            pass
        finally:
            tmp.unlink()
    token = path.read_text().strip()
    if len(token) < 16:
        raise ConfigError(f"admin token file {path}: shorter than 16 characters")
    return token
