"""Test fixtures over the shared harness (tracker/testing.py): a real redis-server on a
free loopback port, the real service processes, and one in-process chDB engine.
"""

from __future__ import annotations

import itertools
import socket

import pytest

from tests.browser import chromium  # noqa: F401 - headless Chromium for any test
from tracker.testing import (  # noqa: F401 - re-exported for the tests
    BROWSER_UA,
    ROOT,
    TOKEN,
    RedisServer,
    Service,
    free_port,
    get_status_location,
    hit_many,
    wait_until,
)


@pytest.fixture
def redis_server(tmp_path):
    server = RedisServer(tmp_path / "redis")
    server.start()
    yield server
    server.stop()


@pytest.fixture
def service(tmp_path, redis_server):
    svc = Service(tmp_path / "svc", redis_server)
    yield svc
    svc.stop_all()


@pytest.fixture(scope="module")
def shared_redis(tmp_path_factory):
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def running(tmp_path_factory, shared_redis):
    """One running service (`tracker serve`) shared by a module's tests."""
    svc = Service(tmp_path_factory.mktemp("svc"), shared_redis)
    svc.serve()
    yield svc
    svc.stop_all()


# The servers of the tracking routes (/c/{slug}, /p.gif): the llhttp fast path with its
# compiled click core (when built) and with the pure-Python one, and aiohttp's own routes
# (what the fast path hands over, and all of it when it is off).
TRACKING_SERVERS = {
    "fast_path": {"TRACKER_HTTP_FAST_PATH": "true"},
    "fast_path_pure": {"TRACKER_HTTP_FAST_PATH": "true", "TRACKER_NO_EXTENSIONS": "1"},
    "aiohttp": {"TRACKER_HTTP_FAST_PATH": "false"},
}


@pytest.fixture(scope="module", params=list(TRACKING_SERVERS))
def tracking(request, tmp_path_factory):
    """A running service per server of the tracking routes, as aiohttp runs its tests on
    both its parsers: a module's click, pixel and bad-input tests run once on each. Each
    gets a Redis of its own, so the next starts as clean as the first."""
    folder = tmp_path_factory.mktemp(f"tracking-{request.param}")
    redis_server = RedisServer(folder / "redis")
    redis_server.start()
    svc = Service(folder / "svc", redis_server, **TRACKING_SERVERS[request.param])
    svc.serve()
    assert served_by(svc.port) == request.param.removesuffix("_pure")  # the switch took
    yield svc
    svc.stop_all()
    redis_server.stop()


def served_by(port: int) -> str:
    """Which server answers the tracking routes, asked without recording anything: a
    malformed header is refused by either parser, and the fast path names itself."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(b"GET /c/probe HTTP/1.1\r\nHost: t\r\nno colon here\r\n\r\n")
        head = sock.recv(65536).split(b"\r\n\r\n")[0].decode("latin-1")
    assert head.split(" ")[1] == "400", head
    return "fast_path" if "\r\nServer: tracker\r\n" in head + "\r\n" else "aiohttp"


# chDB allows one engine per process: every in-process test shares this one, and each
# test gets a database of its own in it.
_db_numbers = itertools.count()


@pytest.fixture(scope="session")
def chdb_engine(tmp_path_factory):
    from tracker.clickhouse import ClickHouse

    ch = ClickHouse(f"chdb://{tmp_path_factory.mktemp('chdb')}", "tracker")
    yield ch
    ch.close()


@pytest.fixture
def chdb_database(chdb_engine, tmp_path):
    """The in-process engine switched to a fresh database with the real migrations applied."""
    from tracker import config, migrations

    settings = config.load(
        env={
            "TRACKER_DATA_DIR": str(tmp_path),
            "TRACKER_CLICKHOUSE_DATABASE": f"t{next(_db_numbers)}",
        }
    )
    chdb_engine.database = settings.clickhouse.database
    assert migrations.apply(chdb_engine, settings)
    return chdb_engine


def pytest_terminal_summary(terminalreporter, config):
    """The tests run in random order (pytest-randomly): say how to replay this order, also
    under -q, so a failure that depends on it can be reproduced."""
    seed = getattr(config.option, "randomly_seed", None)
    if isinstance(seed, int) and config.pluginmanager.has_plugin("randomly"):
        terminalreporter.write_line(f"random test order: replay it with --randomly-seed={seed}")
