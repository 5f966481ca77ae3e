"""The test harness: a real redis-server on a free loopback port and the real service
processes (`tracker serve`, or `tracker sink` / `tracker edge` one by one), configured
through TRACKER_* as an operator would. The tests and the load tests both use it, as
aiohttp's own `test_utils` serves its users.
"""

from __future__ import annotations

import asyncio
import http.client
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import NoReturn

import aiohttp
import orjson
import redis

from tracker import redis_keys as K
from tracker.redis_persistence import REDIS_PERSISTENCE

ROOT = Path(__file__).resolve().parent.parent  # the repository
TOKEN = "test-admin-token-0123456789"
BROWSER_UA = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/131.0.0.0 Safari/537.36"
)


# What a service process inherits from the test process: enough to run Python and find
# the tree under test, and none of the developer's own TRACKER_* settings (nor a
# PROMETHEUS_MULTIPROC_DIR that an in-process test left behind).
INHERITED_ENV = ("PATH", "HOME", "PYTHONPATH", "LANG", "LANGUAGE", "TZ", "TMPDIR", "USER")


def clean_env() -> dict[str, str]:
    return {
        k: v for k, v in os.environ.items() if k in INHERITED_ENV or k.startswith(("LC_", "PYTHON"))
    }


def click_id_at(ms: int) -> str:
    """A UUIDv7 of that millisecond, also in the past (`tracker.ids.uuid7` never goes back
    in time within a process): a click id made then."""
    value = (ms << 80) | (0x7 << 76) | (random.getrandbits(12) << 64) | (0b10 << 62)
    h = f"{value | random.getrandbits(62):032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def free_port() -> int:
    """A loopback port free now. Under pytest-xdist each worker takes ports of its own
    residue: an edge binds its port with SO_REUSEPORT a second or two later, and had two
    workers been handed the same free port meanwhile, their services would share that
    port's connections (one test's clicks answered by another's edge)."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0")
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    index = int(worker.removeprefix("gw")) if worker.removeprefix("gw").isdigit() else 0
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        # Linux hands bind(0) odd ports (even ones are left to connect()): split on the rest
        if (port >> 1) % workers == index % workers:
            return port


def compiled_missing(what: str) -> NoReturn:
    """A compiled case whose extension is not built: skipped in a work tree that has not
    built it, a failure where it must be (`make test` sets TRACKER_REQUIRE_EXTENSIONS, so a
    build that silently fell back to pure Python does not pass)."""
    import pytest  # only tests call this; the harness also serves the benchmarks

    why = f"{what} is not built (python setup.py build_ext --inplace)"
    if os.environ.get("TRACKER_REQUIRE_EXTENSIONS") == "1":
        pytest.fail(why)
    pytest.skip(why)


def wait_until(predicate, timeout: float, what: str, interval: float = 0.05):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def get_status_location(url: str) -> tuple[int, str]:
    """One GET without following redirects: (status, Location or "")."""
    parts = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=10)
    try:
        conn.request("GET", parts.path + ("?" + parts.query if parts.query else ""))
        response = conn.getresponse()
        response.read()
        return response.status, response.getheader("Location") or ""
    finally:
        conn.close()


async def hit_many(url: str, count: int, concurrency: int = 64, **kwargs) -> list[int]:
    """GET url count times from `concurrency` concurrent clients; the statuses."""
    statuses: list[int] = []
    queue = iter(range(count))

    async def client(session):
        for _ in queue:
            async with session.get(url, allow_redirects=False, **kwargs) as r:
                await r.read()
                statuses.append(r.status)

    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(
        connector=connector, headers={"User-Agent": BROWSER_UA}
    ) as session:
        await asyncio.gather(*(client(session) for _ in range(concurrency)))
    return statuses


def can_mount() -> bool:
    """A tmpfs can be mounted here (root, as in CI)."""
    return os.geteuid() == 0 and shutil.which("mount") is not None


@contextmanager
def small_disk(folder: Path, size_kb: int = 64) -> Iterator[Path]:
    """A tmpfs of `size_kb` mounted on `folder` (root only): a real disk that fills up,
    and turns read-only with `remount(folder, read_only=True)`."""
    folder.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size_kb}k", "tmpfs", str(folder)], check=True
    )
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


def remount(folder: Path, read_only: bool) -> None:
    option = "remount,ro" if read_only else "remount,rw"
    subprocess.run(["mount", "-o", option, str(folder)], check=True)


def fill_disk(folder: Path) -> Path:
    """Write a file until the disk under `folder` is full; delete it to free the space."""
    filler = folder / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        while True:
            os.write(fd, b"\0" * 4096)
    except OSError:
        pass
    finally:
        os.close(fd)
    return filler


class RedisServer:
    """redis-server with AOF in its own folder; stop() and start() keep port and data.

    `password`: clients must AUTH (the URL carries it). `tls`: the port speaks TLS only,
    with a self-signed certificate made by openssl (the URL is `rediss://`, unverified).
    `unix_socket`: also listens on `folder/redis.sock` (`socket_path`)."""

    def __init__(
        self,
        folder: Path,
        *,
        password: str | None = None,
        tls: bool = False,
        unix_socket: bool = False,
    ) -> None:
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.password = password
        self.tls = tls
        self.socket_path = folder / "redis.sock" if unix_socket else None
        auth = f":{urllib.parse.quote(password, safe='')}@" if password else ""
        if tls:
            self.url = f"rediss://{auth}127.0.0.1:{self.port}/0?ssl_cert_reqs=none"
        else:
            self.url = f"redis://{auth}127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen | None = None

    def _options(self) -> list[str]:
        options = ["--port", str(self.port)]
        if self.tls:
            cert, key = self.folder / "cert.pem", self.folder / "key.pem"
            if not cert.exists():
                subprocess.run(
                    ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2"]
                    + ["-subj", "/CN=127.0.0.1", "-keyout", str(key), "-out", str(cert)],
                    check=True,
                    capture_output=True,
                )
            options = ["--port", "0", "--tls-port", str(self.port), "--tls-auth-clients", "no"]
            options += ["--tls-cert-file", str(cert), "--tls-key-file", str(key)]
            options += ["--tls-ca-cert-file", str(cert)]
        if self.password:
            options += ["--requirepass", self.password]
        if self.socket_path:
            options += ["--unixsocket", str(self.socket_path)]
        return options

    def start(self) -> None:
        binary = shutil.which("redis-server")
        assert binary, "redis-server is not installed (make test installs it)"
        self.proc = subprocess.Popen(
            [
                binary,
                *self._options(),
                "--bind",
                "127.0.0.1",
                "--dir",
                str(self.folder),
                *REDIS_PERSISTENCE,  # as the service runs it
                "--loglevel",
                "warning",
            ],
            stdout=subprocess.DEVNULL,
        )
        client = self.client()
        wait_until(lambda: _pings(client), 10, "redis-server to answer")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)

    def client(self) -> redis.Redis:
        return redis.Redis.from_url(self.url, socket_timeout=5)


POSTGRES_BIN_DIRS = sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True)


class PostgresServer:
    """A throwaway PostgreSQL server on a free loopback port, in its own temp folder.

    PostgreSQL refuses to run as root: as root, the folder belongs to the `postgres` user
    (created by Debian's package) and the server runs as that user.
    """

    def __init__(self) -> None:
        self.port = free_port()
        self.folder = Path(tempfile.mkdtemp(prefix="tracker-pg-"))
        self.proc: subprocess.Popen | None = None
        found = next((d for d in POSTGRES_BIN_DIRS if (d / "initdb").exists()), None)
        assert found, "PostgreSQL is not installed (make test installs it)"
        self.bin: Path = found
        self.dsn = f"postgresql://tracker@127.0.0.1:{self.port}/tracker"
        self._as: list[str] = []
        if os.geteuid() == 0:
            self._as = ["runuser", "-u", "postgres", "--"]
            shutil.chown(self.folder, "postgres", "postgres")

    def start(self) -> None:
        data = self.folder / "data"
        subprocess.run(
            [*self._as, str(self.bin / "initdb"), "-D", str(data), "-U", "tracker", "-A", "trust"],
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self.proc = subprocess.Popen(
            [
                *self._as,
                str(self.bin / "postgres"),
                "-D",
                str(data),
                "-p",
                str(self.port),
                "-h",
                "127.0.0.1",
                "-k",
                str(self.folder),
                "-c",
                "fsync=off",
                "-c",
                "max_connections=100",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_until(self._createdb, 30, "postgres to accept connections", interval=0.1)

    def _createdb(self) -> bool:
        result = subprocess.run(
            [
                str(self.bin / "createdb"),
                "-h",
                "127.0.0.1",
                "-p",
                str(self.port),
                "-U",
                "tracker",
                "tracker",
            ],
            capture_output=True,
        )
        return result.returncode == 0 or b"already exists" in result.stderr

    def create_database(self, name: str) -> str:
        """A fresh database on this server; its DSN."""
        subprocess.run(
            [str(self.bin / "createdb"), "-h", "127.0.0.1", "-p", str(self.port)]
            + ["-U", "tracker", name],
            check=True,
            capture_output=True,
        )
        return f"postgresql://tracker@127.0.0.1:{self.port}/{name}"

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()  # runuser passes the signal on: a smart shutdown
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        shutil.rmtree(self.folder, ignore_errors=True)


def _pings(client: redis.Redis) -> bool:
    try:
        return client.ping()
    except redis.RedisError:
        return False


class Service:
    """The tracker's processes, configured through TRACKER_* like an operator would."""

    def __init__(self, folder: Path, redis_server: RedisServer, **overrides: str) -> None:
        self.folder = folder
        self.redis = redis_server
        self.port = free_port()
        self.query_port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.env = {
            **clean_env(),
            "TRACKER_DATA_DIR": str(folder / "data"),
            "TRACKER_REDIS_URL": redis_server.url,
            "TRACKER_HOST": "127.0.0.1",
            "TRACKER_PORT": str(self.port),
            "TRACKER_SINK_QUERY_PORT": str(self.query_port),
            "TRACKER_WORKERS": "2",
            "TRACKER_ADMIN_TOKEN": TOKEN,
            "TRACKER_TRACKING_LINK_REFRESH_SECONDS": "0.2",
            "TRACKER_REDIS_TIMEOUT_SECONDS": "0.5",
            "TRACKER_SINK_RECLAIM_IDLE_SECONDS": "2",
            "TRACKER_SINK_INSERT_INTERVAL_MS": "50",  # tests wait for rows: insert soon
            "TRACKER_SINK_CONSUMER": "sink-test",
            # tests wait for rows while the other test worker may keep the CPU busy: a sink
            # running only on idle CPU time (as shipped) could wait behind it for seconds
            "TRACKER_SINK_IDLE_PRIORITY": "false",
            # every test client shares 127.0.0.1 and clicks fast: fraud rules off unless a
            # test turns them on
            "TRACKER_FRAUD_IP_CLICKS_PER_MINUTE": "100000000",
            "TRACKER_FRAUD_VISITORS_PER_IP_PER_HOUR": "100000000",
            "TRACKER_FRAUD_DUPLICATE_CLICK_SECONDS": "0",
            "TRACKER_FRAUD_MIN_CLICK_TO_CONVERSION_SECONDS": "0",
            **overrides,
        }
        self.procs: dict[str, subprocess.Popen] = {}
        self.logs = folder / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)

    # -- processes --------------------------------------------------------------------

    def spawn(self, name: str, *args: str, clock_at: float | None = None) -> subprocess.Popen:
        """`tracker *args` as process `name`; `clock_at`: its edge's clock stands still at
        that instant (see pinned_main)."""
        pinned = (
            ["tracker.testing", "--clock-at", repr(clock_at)]
            if clock_at is not None
            else ["tracker"]
        )
        log = open(self.logs / f"{name}.log", "ab")  # noqa: SIM115 - kept open by the child
        proc = subprocess.Popen(
            [sys.executable, "-m", *pinned, *args],
            env=self.env,
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        self.procs[name] = proc
        return proc

    def cli(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """`tracker *args` run to its end against this service: exit code and output."""
        return subprocess.run(
            [sys.executable, "-m", "tracker", *args],
            env=self.env,
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def serve(self) -> subprocess.Popen:
        proc = self.spawn("serve", "serve")
        self.wait_ready()
        return proc

    def start_sink(self) -> subprocess.Popen:
        proc = self.spawn("sink", "sink")
        wait_until(self._query_up, 30, "the sink's SQL endpoint")
        return proc

    def start_deliver(self) -> subprocess.Popen:
        """The delivery worker (postbacks out, webhooks); `serve` starts it too."""
        return self.spawn("deliver", "deliver")

    def start_edges(self, count: int = 1, clock_at: float | None = None) -> None:
        """`count` edge processes; `clock_at`: their clock stands still at that instant."""
        for i in range(count):
            self.spawn(f"edge-{i}", "edge", "--worker", str(i), clock_at=clock_at)
        wait_until(self._edge_up, 30, "the edge to answer")

    def wait_ready(self) -> None:
        wait_until(self._edge_up, 30, "the edge to answer")
        wait_until(self._query_up, 30, "the sink's SQL endpoint")

    def signal(self, name: str, sig: int) -> None:
        self.procs[name].send_signal(sig)

    def stop(self, name: str, timeout: float = 60) -> int:
        proc = self.procs[name]
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        return self.wait_exit(name, timeout)

    def wait_exit(self, name: str, timeout: float = 60) -> int:
        """The process's exit code; one that has not exited in time writes its threads'
        stacks to its log (SIGUSR1), and the failure carries that log's tail."""
        proc = self.procs[name]
        try:
            return proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGUSR1)
            time.sleep(1)
            tail = (self.logs / f"{name}.log").read_text(errors="replace")[-6000:]
            raise AssertionError(f"{name} did not exit within {timeout} s:\n{tail}") from None

    def stop_all(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for name, proc in self.procs.items():
            try:
                self.wait_exit(name)
            except AssertionError as stuck:
                print(stuck)  # shown with the test's output
                proc.kill()

    def log_text(self) -> str:
        return "\n".join(
            f"--- {p.name}\n{p.read_text(errors='replace')[-4000:]}"
            for p in self.logs.glob("*.log")
        )

    def _edge_up(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.base_url}/healthz", timeout=1) as r:
                return r.status == 200
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            return False

    def _query_up(self) -> bool:
        try:
            self.sql("SELECT 1")
            return True
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            return False

    # -- ClickHouse through the sink ------------------------------------------------

    def sql(self, query: str) -> list[dict]:
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.query_port}/query",
            data=orjson.dumps({"sql": query}),
            headers={"Authorization": f"Bearer {TOKEN}"},
            method="POST",
        )
        with urllib.request.urlopen(request, timeout=60) as response:
            answer = orjson.loads(response.read())
        return [dict(zip(answer["columns"], row, strict=True)) for row in answer["rows"]]

    def count(self, table: str, where: str = "1") -> int:
        return self.sql(f"SELECT count() AS n FROM tracker.{table} WHERE {where}")[0]["n"]

    def settle_seconds(self) -> float:
        """How long counts must stay still before a test trusts them: longer than the
        sink's reclaim interval, after which a batch left pending would be stored again."""
        return float(self.env["TRACKER_SINK_RECLAIM_IDLE_SECONDS"]) + 0.5

    def wait_count(self, table: str, expected: int, where: str = "1", timeout: float = 60) -> int:
        """Wait until the count reaches expected, then until it has not moved for longer
        than the sink's reclaim interval (so a late duplicate would show); the count."""
        try:
            wait_until(
                lambda: self.count(table, where) >= expected,
                timeout,
                f"{expected} rows in {table}",
                interval=0.2,
            )
        except AssertionError:
            raise AssertionError(
                f"{table}: {self.count(table, where)} rows, expected {expected}\n" + self.log_text()
            ) from None
        return self.wait_stable(lambda: self.count(table, where), timeout)

    def wait_stable(self, read, timeout: float = 60):
        """Poll `read` until its value has stayed the same for `settle_seconds`; the value."""
        settle = self.settle_seconds()
        value, since = read(), time.monotonic()
        deadline = since + timeout + settle
        while time.monotonic() - since <= settle:
            if time.monotonic() > deadline:
                raise AssertionError(f"still changing after {timeout}s: {value}")
            time.sleep(0.2)
            now = read()
            if now != value:
                value, since = now, time.monotonic()
        return value

    def wait_behind_marker(self, timeout: float = 60) -> None:
        """Before checking that a request stored nothing: send a marker event after it and
        wait until the sink has stored the marker and acknowledged every stream entry, so
        whatever the request could have written would be in ClickHouse by now. (The marker
        is an orphan visit on a slug of its own: it needs no link.)"""
        slug = f"marker-{uuid.uuid4().hex}"
        status, _ = get_status_location(f"{self.base_url}/c/{slug}")
        assert status in (302, 404), status
        wait_until(
            lambda: self.count("orphan_visits", f"link_slug = '{slug}'") == 1,
            timeout,
            "the marker event to be stored",
            interval=0.1,
        )
        wait_until(self.stream_drained, timeout, "the sink to acknowledge every entry")

    def stream_drained(self) -> bool:
        """Every entry of every events stream shard read and acknowledged by the sink."""
        client = self.redis.client()
        for shard in range(int(self.env.get("TRACKER_REDIS_STREAM_SHARDS", "1"))):
            stream = K.events_stream(shard)
            # (not the group's lag: Redis cannot tell it once the sink deleted entries)
            last = client.xinfo_stream(stream)["last-generated-id"]
            groups = client.xinfo_groups(stream)
            sink = [g for g in groups if g["name"] in (K.SINK_GROUP, K.SINK_GROUP.encode())]
            if not sink or sink[0]["pending"] or sink[0]["last-delivered-id"] != last:
                return False
        return True

    # -- admin API ---------------------------------------------------------------------

    def api(self, method: str, path: str, body=None, token: str | None = TOKEN):
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        data = (
            body if isinstance(body, bytes) else (orjson.dumps(body) if body is not None else None)
        )
        request = urllib.request.Request(
            self.base_url + path, data=data, headers=headers, method=method
        )
        try:
            with urllib.request.urlopen(request, timeout=10) as r:
                return r.status, orjson.loads(r.read())
        except urllib.error.HTTPError as exc:
            raw = exc.read()
            try:
                return exc.code, orjson.loads(raw)
            except orjson.JSONDecodeError:
                return exc.code, raw

    def add_link(self, slug: str, destination: str = "https://shop.example/landing", **fields):
        status, body = self.api(
            "POST", "/api/links", {"slug": slug, "destination": destination, **fields}
        )
        assert status == 201, body
        time.sleep(0.6)  # every edge process reloads links within 0.2 s (set above)
        return body


def pinned_main(argv: list[str]) -> int:
    """`python -m tracker.testing --clock-at SECONDS edge --worker N`: a tracker command
    whose edge stamps every event with that instant (a test that counts per calendar
    minute or hour then cannot straddle one)."""
    from tracker import cli
    from tracker.clock import FixedClock

    assert argv[0] == "--clock-at", "usage: --clock-at SECONDS <tracker arguments>"
    return cli.main(argv[2:], clock=FixedClock(float(argv[1])))


if __name__ == "__main__":
    sys.exit(pinned_main(sys.argv[1:]))
