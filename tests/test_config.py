"""tracker/config.py: defaults, file values, TRACKER_* overrides, validation, admin token."""

from __future__ import annotations

import ipaddress
import os
import stat
from pathlib import Path

import pytest

from tracker import config
from tracker.config import ConfigError, load


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "data"


@pytest.fixture
def env(data_dir: Path) -> dict[str, str]:
    """A minimal environment: nothing but a data folder inside tmp_path."""
    return {"TRACKER_DATA_DIR": str(data_dir)}


@pytest.fixture
def toml(tmp_path: Path):
    """Write a TOML file and return its path."""

    def write(text: str = "") -> Path:
        path = tmp_path / "tracker.toml"
        path.write_text(text)
        return path

    return write


# -- defaults and file values -----------------------------------------------------------


def test_defaults_from_empty_file(toml, env, data_dir):
    s = load(toml(""), env)
    assert s.data_dir == str(data_dir)
    assert (s.http.host, s.http.port, s.http.workers) == ("0.0.0.0", 8080, 0)
    assert s.http.trusted_proxies == []
    assert s.trusted_networks == []
    assert s.http.fallback_url == ""
    assert s.http.max_query_bytes == 8192
    assert (s.cookie.name, s.cookie.secure, s.cookie.samesite, s.cookie.domain) == (
        "vid",
        False,
        "Lax",
        "",
    )
    assert s.tracking.lookback_days == 30
    assert s.lookback_seconds == 30 * 86400
    assert s.redis.url == "redis://127.0.0.1:6379/0"
    assert s.redis.manage is False
    assert (s.sink.query_host, s.sink.query_port) == ("127.0.0.1", 8124)
    assert s.fraud.counters == "memory"  # one sink keeps the fraud counts itself
    assert s.clickhouse.database == "tracker"


@pytest.mark.parametrize(("workers", "cpus", "expected"), [(0, 6, 6), (0, None, 1), (3, 6, 3)])
def test_worker_count_defaults_to_the_cpus(toml, env, monkeypatch, workers, cpus, expected):
    monkeypatch.setattr(config.os, "cpu_count", lambda: cpus)
    s = load(toml(f"[http]\nworkers = {workers}\n"), env)
    assert s.worker_count == expected


def test_repository_default_file_loads(env, data_dir):
    """The shipped config/tracker.toml is valid and matches the dataclass defaults."""
    s = load(config.DEFAULT_FILE, env)
    assert s.http.port == 8080
    assert s.redis.url == "redis://127.0.0.1:6379/0"
    assert s.data_dir == str(data_dir)


def test_file_values_are_applied(toml, env):
    path = toml(
        """
        [http]
        host = "127.0.0.1"
        port = 9000
        workers = 3
        trusted_proxies = ["10.0.0.0/8", "fd00::/8"]
        fallback_url = "https://example.com/gone"

        [cookie]
        name = "visitor"
        secure = true
        samesite = "None"
        domain = "example.com"

        [tracking]
        lookback_days = 7
        link_refresh_seconds = 0.5

        [redis]
        url = "rediss://cache:6380/2"
        manage = true
        timeout_seconds = 1.5

        [sink]
        query_port = 9999

        [clickhouse]
        dsn = "https://user:pw@ch.example:8443"
        database = "events"
        """
    )
    s = load(path, env)
    assert (s.http.host, s.http.port, s.http.workers) == ("127.0.0.1", 9000, 3)
    assert s.worker_count == 3
    assert s.trusted_networks == [
        ipaddress.ip_network("10.0.0.0/8"),
        ipaddress.ip_network("fd00::/8"),
    ]
    assert s.http.fallback_url == "https://example.com/gone"
    assert (s.cookie.name, s.cookie.secure, s.cookie.samesite, s.cookie.domain) == (
        "visitor",
        True,
        "None",
        "example.com",
    )
    assert s.lookback_seconds == 7 * 86400
    assert s.tracking.link_refresh_seconds == 0.5
    assert s.redis.url == "rediss://cache:6380/2"
    assert s.redis.manage is True
    assert s.redis.timeout_seconds == 1.5
    assert s.sink.query_port == 9999
    assert s.clickhouse_dsn == "https://user:pw@ch.example:8443"
    assert s.clickhouse.database == "events"


def test_integral_float_accepted_for_int(toml, env):
    assert load(toml("[http]\nport = 9001.0\n"), env).http.port == 9001


def test_tracker_config_env_names_the_file(tmp_path, data_dir):
    path = tmp_path / "elsewhere.toml"
    path.write_text("[http]\nport = 9123\n")
    s = load(None, {"TRACKER_DATA_DIR": str(data_dir), "TRACKER_CONFIG": str(path)})
    assert s.http.port == 9123


def test_explicit_missing_file_is_an_error(tmp_path, env):
    missing = tmp_path / "nope.toml"
    with pytest.raises(ConfigError, match="not found"):
        load(missing, env)


def test_toml_syntax_error_names_the_file(toml, env):
    path = toml("[http\nport = 1\n")
    with pytest.raises(ConfigError) as info:
        load(path, env)
    assert str(path) in str(info.value)


def test_relative_data_dir_is_resolved_against_repository_root(toml, tmp_path):
    target = tmp_path / "rel-data"
    relative = os.path.relpath(target, config.ROOT)
    assert not Path(relative).is_absolute()
    s = load(toml(""), {"TRACKER_DATA_DIR": relative})
    assert s.data_dir == str(target.resolve())
    assert (target / "admin_token").exists()


# -- environment overrides ------------------------------------------------------------


def test_section_key_env_overrides_file(toml, env):
    path = toml('[http]\nport = 9000\n[redis]\nurl = "redis://file:6379/0"\n')
    s = load(
        path,
        {
            **env,
            "TRACKER_HTTP_PORT": "9100",
            "TRACKER_REDIS_URL": "redis://envhost:6390/3",
            "TRACKER_SINK_QUERY_PORT": "18124",
            "TRACKER_REDIS_TIMEOUT_SECONDS": "0.25",
            "TRACKER_TRACKING_LINK_REFRESH_SECONDS": "0.2",
            "TRACKER_REDIS_MANAGE": "true",
            "TRACKER_COOKIE_NAME": "v2",
            "TRACKER_HTTP_TRUSTED_PROXIES": "192.168.0.0/16",
            "TRACKER_ADMIN_TOKEN": "token-from-env-0123",
        },
    )
    assert s.http.port == 9100
    assert s.redis.url == "redis://envhost:6390/3"
    assert s.sink.query_port == 18124
    assert s.redis.timeout_seconds == 0.25
    assert s.tracking.link_refresh_seconds == 0.2
    assert s.redis.manage is True
    assert s.cookie.name == "v2"
    assert s.http.trusted_proxies == ["192.168.0.0/16"]
    assert s.admin_token == "token-from-env-0123"


def test_short_aliases(toml, env):
    s = load(
        toml(""),
        {
            **env,
            "TRACKER_PORT": "8181",
            "TRACKER_HOST": "::1",
            "TRACKER_WORKERS": "4",
            "TRACKER_TRUSTED_PROXIES": " 10.0.0.0/8, 172.16.0.1/12 ,, fd00::/8 ",
            "TRACKER_FALLBACK_URL": "http://fallback.example/",
            "TRACKER_LOOKBACK_DAYS": "90",
        },
    )
    assert s.http.port == 8181
    assert s.http.host == "::1"
    assert s.worker_count == 4
    assert s.http.trusted_proxies == ["10.0.0.0/8", "172.16.0.1/12", "fd00::/8"]
    # a host address with a prefix is accepted as its network (strict=False)
    assert s.trusted_networks[1] == ipaddress.ip_network("172.16.0.0/12")
    assert s.http.fallback_url == "http://fallback.example/"
    assert s.lookback_seconds == 90 * 86400


def test_empty_trusted_proxies_env_clears_file_list(toml, env):
    path = toml('[http]\ntrusted_proxies = ["10.0.0.0/8"]\n')
    assert load(path, {**env, "TRACKER_TRUSTED_PROXIES": ""}).http.trusted_proxies == []


def test_unknown_tracker_env_is_ignored(toml, env):
    s = load(toml(""), {**env, "TRACKER_NO_SUCH_THING": "x", "TRACKER_HTTP": "x"})
    assert s.http.port == 8080


def test_process_environment_not_read_when_env_given(toml, env, monkeypatch):
    monkeypatch.setenv("TRACKER_PORT", "1234")
    assert load(toml(""), env).http.port == 8080


@pytest.mark.parametrize("text", ["1", "true", "TRUE", "yes", " on "])
def test_bool_true_spellings(toml, env, text):
    assert load(toml(""), {**env, "TRACKER_COOKIE_SECURE": text}).cookie.secure is True


@pytest.mark.parametrize("text", ["0", "false", "No", "off", ""])
def test_bool_false_spellings(toml, env, text):
    path = toml("[cookie]\nsecure = true\n")
    assert load(path, {**env, "TRACKER_COOKIE_SECURE": text}).cookie.secure is False


# -- invalid values -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "overrides", "names"),
    [
        ("", {"TRACKER_PORT": "abc"}, ["http.port", "TRACKER_PORT", "'abc'"]),
        ("", {"TRACKER_HTTP_PORT": "8080.5"}, ["http.port", "TRACKER_HTTP_PORT"]),
        ("", {"TRACKER_PORT": "70000"}, ["http.port", "65535"]),
        ("", {"TRACKER_PORT": "0"}, ["http.port"]),
        ("[http]\nport = 70000\n", {}, ["http.port"]),
        ("[http]\nport = true\n", {}, ["http.port"]),
        ("[http]\nport = 80.5\n", {}, ["http.port"]),
        ("[http]\nhost = 5\n", {}, ["http.host"]),
        ("", {"TRACKER_WORKERS": "257"}, ["http.workers"]),
        ("", {"TRACKER_WRITER_MAX_WAITING_BATCHES": "0"}, ["writer.max_waiting_batches"]),
        ("", {"TRACKER_SINK_QUERY_PORT": "65536"}, ["sink.query_port"]),
        ("[http]\nbogus = 1\n", {}, ["http.bogus", "unknown"]),
        ("nope = 1\n", {}, ["nope", "unknown"]),
        ("http = 5\n", {}, ["http", "table"]),
        ("[http]\ntrusted_proxies = [1, 2]\n", {}, ["http.trusted_proxies"]),
        (
            "",
            {"TRACKER_TRUSTED_PROXIES": "10.0.0.0/8,not-a-cidr"},
            ["http.trusted_proxies", "not-a-cidr"],
        ),
        ('[http]\ntrusted_proxies = ["10.0.0.0/33"]\n', {}, ["http.trusted_proxies"]),
        ("", {"TRACKER_FALLBACK_URL": "ftp://example.com"}, ["http.fallback_url"]),
        ("", {"TRACKER_COOKIE_SAMESITE": "None"}, ["cookie.samesite", "secure"]),
        ("", {"TRACKER_COOKIE_SAMESITE": "lax"}, ["cookie.samesite"]),
        ("", {"TRACKER_COOKIE_NAME": "v id"}, ["cookie.name"]),
        ("", {"TRACKER_COOKIE_SECURE": "maybe"}, ["cookie.secure", "maybe"]),
        ('[cookie]\nsecure = "perhaps"\n', {}, ["cookie.secure"]),
        ("", {"TRACKER_REDIS_URL": "http://127.0.0.1:6379"}, ["redis.url"]),
        ("", {"TRACKER_REDIS_URL": "127.0.0.1:6379"}, ["redis.url"]),
        ("", {"TRACKER_REDIS_DEDUP_TTL_SECONDS": "59"}, ["redis.dedup_ttl_seconds"]),
        ("", {"TRACKER_CLICKHOUSE_DSN": "mysql://db:3306"}, ["clickhouse.dsn"]),
        ("", {"TRACKER_CLICKHOUSE_DSN": "ch.example:8123"}, ["clickhouse.dsn"]),
        ("", {"TRACKER_CLICKHOUSE_DATABASE": "bad-name"}, ["clickhouse.database"]),
        ("", {"TRACKER_LOOKBACK_DAYS": "0"}, ["tracking.lookback_days"]),
        ("", {"TRACKER_HOT_HOURS": "-1"}, ["tracking.hot_hours"]),
        ("", {"TRACKER_LOOKBACK_DAYS": "1", "TRACKER_HOT_HOURS": "25"}, ["tracking.hot_hours"]),
        (
            "",
            {"TRACKER_TRACKING_LINK_REFRESH_SECONDS": "0"},
            ["tracking.link_refresh_seconds"],
        ),
        ("", {"TRACKER_TRACKING_LINK_REFRESH_SECONDS": "fast"}, ["link_refresh_seconds"]),
        ("", {"TRACKER_HTTP_MAX_QUERY_BYTES": "255"}, ["http.max_query_bytes"]),
        ("", {"TRACKER_SINK_READ_ENTRIES": "10001"}, ["sink.read_entries"]),
        ("", {"TRACKER_SINK_INSERT_INTERVAL_MS": "-1"}, ["sink.insert_interval_ms"]),
        (
            "",
            {"TRACKER_FRAUD_DUPLICATE_CLICK_SECONDS": "86401"},
            ["fraud.duplicate_click_seconds", "86400"],
        ),
        (
            "[fraud.campaigns.x]\nduplicate_click_seconds = 90000\n",
            {},
            ["fraud.campaigns.x.duplicate_click_seconds", "86400"],
        ),
        ("", {"TRACKER_FRAUD_COUNTERS": "disk"}, ["fraud.counters", "memory, redis", "'disk'"]),
    ],
)
def test_invalid_values_name_the_key(toml, env, data_dir, text, overrides, names):
    with pytest.raises(ConfigError) as info:
        load(toml(text), {**env, **overrides})
    message = str(info.value)
    for name in names:
        assert name in message
    assert "\n" not in message
    # validation happens before any token is generated
    assert not (data_dir / "admin_token").exists()


def test_samesite_none_allowed_with_secure(toml, env):
    s = load(toml(""), {**env, "TRACKER_COOKIE_SAMESITE": "None", "TRACKER_COOKIE_SECURE": "1"})
    assert (s.cookie.samesite, s.cookie.secure) == ("None", True)


@pytest.mark.parametrize("url", ["redis://h:1/0", "rediss://h:1/0", "unix:///tmp/redis.sock"])
def test_accepted_redis_urls(toml, env, url):
    assert load(toml(""), {**env, "TRACKER_REDIS_URL": url}).redis.url == url


# -- admin token and derived values -----------------------------------------------------


def test_generated_admin_token_is_stored_private_and_reused(toml, env, data_dir):
    assert not data_dir.exists()
    first = load(toml(""), env)
    token_file = data_dir / "admin_token"
    assert token_file.read_text() == first.admin_token
    assert len(first.admin_token) >= 32
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600

    second = load(toml(""), env)
    assert second.admin_token == first.admin_token


def test_generated_tokens_differ_per_data_dir(toml, tmp_path):
    a = load(toml(""), {"TRACKER_DATA_DIR": str(tmp_path / "a")})
    b = load(toml(""), {"TRACKER_DATA_DIR": str(tmp_path / "b")})
    assert a.admin_token != b.admin_token


def test_existing_token_file_is_read_stripped(toml, env, data_dir):
    data_dir.mkdir()
    (data_dir / "admin_token").write_text("  operator-token-0123456\n")
    assert load(toml(""), env).admin_token == "operator-token-0123456"


def test_explicit_admin_token_writes_no_file(toml, env, data_dir):
    s = load(toml('admin_token = "token-from-file-0123"\n'), env)
    assert s.admin_token == "token-from-file-0123"
    assert not (data_dir / "admin_token").exists()


def test_clickhouse_dsn_defaults_to_chdb_in_data_dir(toml, env, data_dir):
    s = load(toml(""), env)
    assert s.clickhouse_dsn == f"chdb://{data_dir.resolve() / 'clickhouse'}"
    assert s.clickhouse.dsn == ""


def test_clickhouse_dsn_explicit(toml, env):
    dsn = "http://default:secret@127.0.0.1:8123"
    assert load(toml(""), {**env, "TRACKER_CLICKHOUSE_DSN": dsn}).clickhouse_dsn == dsn


def test_short_or_empty_admin_token_is_refused(toml, env, data_dir):
    with pytest.raises(ConfigError, match="admin_token"):
        load(toml('admin_token = "short"\n'), env)
    data_dir.mkdir(exist_ok=True)
    (data_dir / "admin_token").write_text("  \n")  # a torn or emptied token file
    with pytest.raises(ConfigError, match="admin token file"):
        load(toml(""), env)
