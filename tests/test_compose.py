"""config/docker-compose.yml: the wiring between Redis, ClickHouse and the tracker services.

Docker is not needed: the file is parsed with PyYAML, `${VAR}` references are interpolated
the way Compose does, and every tracker service's environment is loaded through the real
`tracker.config.load`, its command through the real `tracker` argument parser.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml

from tracker import config
from tracker.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
COMPOSE_FILE = ROOT / "config" / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
TOKEN = "compose-test-token-0123456789"

# service -> the tracker subcommand it must run
TRACKER_SERVICES = {"migrate": "migrate", "sink": "sink", "edge": "edge"}
# Read by config.load itself (which settings file), not a settings key.
SPECIAL_ENV = {"TRACKER_CONFIG"}


# -- helpers --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def compose() -> dict:
    doc = yaml.safe_load(COMPOSE_FILE.read_text())
    assert isinstance(doc, dict) and isinstance(doc.get("services"), dict)
    return doc


@pytest.fixture(scope="module")
def services(compose) -> dict:
    return compose["services"]


_VAR = re.compile(r"\$(?:(\$)|\{([A-Za-z_]\w*)(?:(:?[-?])([^}]*))?\}|([A-Za-z_]\w*))")


class MissingVariable(ValueError):
    pass


def interpolate(value, env: dict[str, str]):
    """Compose's interpolation: $VAR, ${VAR}, ${VAR:-default}, ${VAR-default},
    ${VAR:?error}, ${VAR?error}, $$ (a literal $), applied to every string."""
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if not isinstance(value, str):
        return value

    def one(m: re.Match) -> str:
        if m.group(1):
            return "$"
        name = m.group(2) or m.group(5)
        op, arg = m.group(3), m.group(4) or ""
        present = name in env
        empty_counts = op is not None and op.startswith(":")
        missing = not present or (empty_counts and env[name] == "")
        if op and op.endswith("-"):
            return arg if missing else env[name]
        if op and op.endswith("?"):
            if missing:
                raise MissingVariable(f"{name}: {arg}")
            return env[name]
        return env.get(name, "")

    return _VAR.sub(one, value)


def environment(service: dict, env: dict[str, str]) -> dict[str, str]:
    raw = service.get("environment") or {}
    if isinstance(raw, list):
        raw = dict(item.split("=", 1) if "=" in item else (item, env.get(item, "")) for item in raw)
    return {k: "" if v is None else str(v) for k, v in interpolate(raw, env).items()}


def dockerfile_env() -> dict[str, str]:
    """The image's ENV (KEY=VALUE pairs, continuation lines joined)."""
    text = DOCKERFILE.read_text().replace("\\\n", " ")
    env: dict[str, str] = {}
    for line in text.splitlines():
        if line.strip().upper().startswith("ENV "):
            for pair in shlex.split(line.strip()[4:]):
                key, _, value = pair.partition("=")
                env[key] = value
    return env


def dockerfile_entrypoint() -> list[str]:
    for line in DOCKERFILE.read_text().splitlines():
        if line.strip().upper().startswith("ENTRYPOINT "):
            return yaml.safe_load(line.strip()[len("ENTRYPOINT ") :])
    raise AssertionError("the Dockerfile has no ENTRYPOINT")


def known_env_names() -> set[str]:
    """TRACKER_ + dotted key upper-cased, dots as underscores; plus the short aliases."""
    keys = config._all_keys(config.Settings())
    return {config._env_name(key) for key in keys} | set(config.ALIASES) | SPECIAL_ENV


def service_settings(service: dict, env: dict[str, str]) -> config.Settings:
    """The settings a tracker container would load: the image's ENV, then the service's."""
    image_env = dockerfile_env()
    full = {**image_env, **environment(service, env)}
    # The image copies config/ to /app/config; read this checkout's copy instead.
    if full.get("TRACKER_CONFIG", "").startswith("/app/"):
        full["TRACKER_CONFIG"] = str(ROOT / full["TRACKER_CONFIG"][len("/app/") :])
    if full.get("TRACKER_CLICKHOUSE_MIGRATIONS_DIR", "").startswith("/app/"):
        full["TRACKER_CLICKHOUSE_MIGRATIONS_DIR"] = str(
            ROOT / full["TRACKER_CLICKHOUSE_MIGRATIONS_DIR"][len("/app/") :]
        )
    return config.load(env=full)


def mounts(service: dict) -> dict[str, str]:
    """container path -> source, for short ("src:dst[:mode]") and long volume syntax."""
    result = {}
    for item in service.get("volumes") or []:
        if isinstance(item, dict):
            result[item["target"]] = item.get("source", "")
        else:
            parts = item.split(":")
            if len(parts) == 1:
                result[parts[0]] = ""  # anonymous volume
            else:
                result[parts[1]] = parts[0]
    return result


def is_named_volume(source: str) -> bool:
    return bool(source) and not source.startswith((".", "/", "~", "$"))


def published(service: dict, env: dict[str, str]) -> list[tuple[str, int]]:
    """(host side, container port) for every published port."""
    result = []
    for item in interpolate(service.get("ports") or [], env):
        if isinstance(item, dict):
            result.append((str(item.get("published", "")), int(item["target"])))
            continue
        spec = str(item).split("/")[0]
        host, _, container = spec.rpartition(":")
        result.append((host, int(container)))
    return result


def healthcheck(service: dict) -> list[str] | None:
    """The healthcheck command, or None when the service sets none / disables it."""
    check = service.get("healthcheck")
    if not check or check.get("disable") or check.get("test") in (["NONE"], "NONE"):
        return None
    test = check["test"]
    return [test] if isinstance(test, str) else list(test)


def depends(service: dict) -> dict[str, str]:
    raw = service.get("depends_on") or {}
    if isinstance(raw, list):
        return {name: "service_started" for name in raw}
    return {name: spec.get("condition", "service_started") for name, spec in raw.items()}


BASE_ENV = {"TRACKER_ADMIN_TOKEN": TOKEN}


# -- the tests --------------------------------------------------------------------------------


def test_interpolation_helper_matches_compose_rules():
    env = {"A": "x", "E": ""}
    assert interpolate("${A:-d} ${B:-d} ${E:-d} ${E-d} $A $$A", env) == "x d d  x $A"
    with pytest.raises(MissingVariable):
        interpolate("${B:?need B}", env)
    with pytest.raises(MissingVariable):
        interpolate("${E:?need E}", env)


def test_services_exist(services):
    assert {"redis", "clickhouse", "migrate", "sink", "edge"} <= set(services)


def test_official_images(services):
    assert re.fullmatch(r"redis:7(\.[\w.-]+)?", services["redis"]["image"])
    assert services["clickhouse"]["image"].split(":")[0] == "clickhouse/clickhouse-server"


@pytest.mark.parametrize("name", sorted(TRACKER_SERVICES))
def test_tracker_services_build_the_repository_dockerfile(services, name):
    build = services[name].get("build")
    assert build, f"{name}: no build section"
    if isinstance(build, str):
        build = {"context": build}
    context = (COMPOSE_FILE.parent / build["context"]).resolve()
    assert context == ROOT, f"{name}: build context {context}, expected the repository root"
    assert (context / build.get("dockerfile", "Dockerfile")).resolve() == DOCKERFILE


@pytest.mark.parametrize("name", sorted(TRACKER_SERVICES))
def test_commands_are_real_tracker_subcommands(services, name):
    assert dockerfile_entrypoint() == ["tracker"], "commands below are tracker's arguments"
    command = services[name].get("command")
    assert isinstance(command, list) and command, f"{name}: command must be an exec-form list"
    try:
        args = build_parser().parse_args(command)
    except SystemExit:
        pytest.fail(f"{name}: `tracker {' '.join(command)}` is not a valid tracker command")
    assert args.command == TRACKER_SERVICES[name]


def test_env_name_discovery_sees_real_keys():
    names = known_env_names()
    assert {
        "TRACKER_REDIS_URL",
        "TRACKER_CLICKHOUSE_DSN",
        "TRACKER_DATA_DIR",
        "TRACKER_ADMIN_TOKEN",
        "TRACKER_SINK_CONSUMER",
        "TRACKER_PORT",
    } <= names
    assert "TRACKER_REDIS_HOST" not in names


def test_every_tracker_variable_is_a_real_setting(services):
    names = known_env_names()
    used = {("Dockerfile", key) for key in dockerfile_env() if key.startswith("TRACKER_")}
    for name, service in services.items():
        raw = service.get("environment") or {}
        keys = raw if isinstance(raw, dict) else [item.split("=", 1)[0] for item in raw]
        used |= {(name, key) for key in keys if key.startswith("TRACKER_")}
    unknown = sorted(f"{where}: {key}" for where, key in used if key not in names)
    assert not unknown, f"TRACKER_* variables that no setting reads: {unknown}"


@pytest.mark.parametrize("name", sorted(TRACKER_SERVICES))
def test_admin_token_is_required_and_shared(services, name):
    with pytest.raises(MissingVariable):
        environment(services[name], {})
    with pytest.raises(MissingVariable):
        environment(services[name], {"TRACKER_ADMIN_TOKEN": ""})
    assert environment(services[name], BASE_ENV)["TRACKER_ADMIN_TOKEN"] == TOKEN


@pytest.mark.parametrize("name", sorted(TRACKER_SERVICES))
def test_tracker_settings_load_and_point_at_the_services(services, name):
    settings = service_settings(services[name], BASE_ENV)
    assert settings.admin_token == TOKEN
    redis_url = urlsplit(settings.redis.url)
    assert (redis_url.scheme, redis_url.hostname, redis_url.port or 6379) == (
        "redis",
        "redis",
        6379,
    )
    assert "--port" not in services["redis"].get("command", []), "redis listens on 6379"
    dsn = urlsplit(settings.clickhouse_dsn)
    assert (dsn.scheme, dsn.hostname, dsn.port) == ("http", "clickhouse", 8123)
    assert settings.data_dir == "/data"


@pytest.mark.parametrize(
    "env",
    [
        BASE_ENV,
        {**BASE_ENV, "CH_USER": "analytics", "CH_PASSWORD": "s3cret-Pass"},
    ],
)
def test_dsn_carries_the_clickhouse_service_credentials(services, env):
    server = environment(services["clickhouse"], env)
    assert server.get("CLICKHOUSE_USER") and server.get("CLICKHOUSE_PASSWORD"), (
        "the clickhouse service needs a user and a password (with defaults)"
    )
    for name in TRACKER_SERVICES:
        dsn = urlsplit(service_settings(services[name], env).clickhouse_dsn)
        assert (dsn.username, dsn.password) == (
            server["CLICKHOUSE_USER"],
            server["CLICKHOUSE_PASSWORD"],
        ), name
    if "CH_USER" in env:
        assert server["CLICKHOUSE_USER"] == env["CH_USER"]
        assert server["CLICKHOUSE_PASSWORD"] == env["CH_PASSWORD"]


def test_clickhouse_http_port_health_and_storage(services, compose):
    ch = services["clickhouse"]
    check = " ".join(healthcheck(ch) or [])
    assert re.search(r"(127\.0\.0\.1|localhost):8123/ping", check), check
    source = mounts(ch).get("/var/lib/clickhouse", "")
    assert is_named_volume(source) and source in (compose.get("volumes") or {})
    for host, _ in published(ch, BASE_ENV):
        assert host.startswith("127.0.0.1:"), f"ClickHouse published beyond loopback: {host}"


def test_redis_aof_health_and_storage(services, compose):
    redis = services["redis"]
    command = redis.get("command")
    if isinstance(command, str):
        command = command.split()
    assert command and command[0] == "redis-server"

    def flag(name: str, default: str | None = None) -> str | None:
        return command[command.index(name) + 1] if name in command else default

    assert flag("--appendonly") == "yes"
    assert flag("--appendfsync") == "everysec"
    assert flag("--maxmemory-policy", "noeviction") == "noeviction", (
        "click records must never be evicted"
    )
    assert flag("--lazyfree-lazy-expire") == "yes", "expiring hour hashes must not block"
    assert flag("--auto-aof-rewrite-min-size") == "1gb", "rewrite the AOF as the service does"
    assert flag("--rdbcompression") == "no", "rewrite the AOF as the service does"
    assert healthcheck(redis)[-2:] == ["redis-cli", "ping"]
    source = mounts(redis).get("/data", "")  # the official image's working dir: the AOF
    assert is_named_volume(source) and source in (compose.get("volumes") or {})


def test_dependencies_and_start_order(services):
    assert depends(services["migrate"]) == {"clickhouse": "service_healthy"}
    assert services["migrate"].get("restart") == "no"  # quoted: a bare `no` is a boolean
    sink = depends(services["sink"])
    assert sink.get("redis") == "service_healthy"
    assert sink.get("migrate") == "service_completed_successfully"
    edge = depends(services["edge"])
    assert edge.get("redis") == "service_healthy"
    assert not {"sink", "clickhouse", "migrate"} & set(edge), (
        "edges must redirect while the sink or ClickHouse is down"
    )


def test_awaited_health_exists(services):
    for name, service in services.items():
        for target, condition in depends(service).items():
            assert target in services, f"{name} depends on unknown service {target}"
            if condition == "service_healthy":
                assert healthcheck(services[target]), f"{name} waits for {target}'s health"
            if condition == "service_completed_successfully":
                assert services[target].get("restart") == "no", (
                    f"{target} must run once for {name} to see it complete"
                )


@pytest.mark.parametrize("name", sorted(TRACKER_SERVICES))
def test_image_healthcheck_is_right_for_the_service(services, name):
    """The image's HEALTHCHECK asks :8080/healthz; only edges serve it, so the others must
    override it (or disable it) or they would be marked unhealthy."""
    check = services[name].get("healthcheck")
    settings = service_settings(services[name], BASE_ENV)
    if TRACKER_SERVICES[name] == "edge":
        text = " ".join(healthcheck(services[name]) or [])
        assert f":{settings.http.port}/healthz" in text, text
    elif TRACKER_SERVICES[name] == "sink":
        text = " ".join(healthcheck(services[name]) or [])
        assert str(settings.sink.query_port) in text and "8080" not in text, text
    else:
        assert check and (check.get("disable") or check.get("test") in (["NONE"], "NONE"))


def test_edge_port_and_spool(services, compose):
    edge = services["edge"]
    settings = service_settings(edge, BASE_ENV)
    assert [c for _, c in published(edge, BASE_ENV)] == [settings.http.port]
    assert settings.http.host == "0.0.0.0", "the edge must listen beyond the container"
    source = mounts(edge).get(settings.data_dir, "")
    assert is_named_volume(source) and source in (compose.get("volumes") or {}), (
        "the edge's spool (data dir) must be on a named volume"
    )


def test_edges_never_share_a_spool_file(services):
    """Two edge processes with one data volume and one worker index would write and
    replay the same spool file; a fixed host port can be bound by one replica only."""
    seen: dict[tuple[str, int], str] = {}
    for name, service in services.items():
        command = service.get("command") or []
        if not (service.get("build") and command[:1] == ["edge"]):
            continue
        replicas = (service.get("deploy") or {}).get("replicas", 1)
        assert replicas == 1, f"{name}: replicas share the spool volume and host port"
        worker = build_parser().parse_args(command).worker
        settings = service_settings(service, BASE_ENV)
        volume = mounts(service).get(settings.data_dir, "")
        assert volume, f"{name}: no volume for the spool"
        assert (volume, worker) not in seen, f"{name} and {seen.get((volume, worker))}"
        seen[(volume, worker)] = name


def test_sink_query_endpoint_stays_local(services):
    sink = services["sink"]
    settings = service_settings(sink, BASE_ENV)
    assert settings.sink.query_host in ("127.0.0.1", "::1", "localhost")
    assert "TRACKER_SINK_QUERY_HOST" not in environment(sink, BASE_ENV)
    assert not sink.get("ports"), "the sink's SQL endpoint must not be published"
    assert environment(sink, BASE_ENV).get("TRACKER_SINK_CONSUMER"), (
        "a fixed consumer name lets a recreated sink take its pending batch back at once"
    )


def test_volumes_declared_and_used(services, compose):
    declared = set(compose.get("volumes") or {})
    used = set()
    for name, service in services.items():
        for target, source in mounts(service).items():
            if is_named_volume(source):
                assert source in declared, f"{name}: volume {source} ({target}) not declared"
                used.add(source)
    assert declared == used, f"declared but unused: {sorted(declared - used)}"
    sink, edge = (mounts(services[n]).get("/data") for n in ("sink", "edge"))
    assert sink != edge, "the sink and the edge keep separate data folders"
