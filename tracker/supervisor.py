"""`tracker serve`: Redis (optional), the sink, the delivery worker and N edge processes,
as one service.

Children are separate Python processes (`tracker sink`, `tracker edge --worker N`), so
each has its own interpreter, event loop and (for the sink) chDB engine. A child that
dies is restarted. On SIGTERM / SIGINT the edges stop first (they flush to Redis), then
the delivery worker (its calls in flight end and their attempts are logged), then the
sink (it drains the stream into ClickHouse), then a managed Redis (it writes its AOF).
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from urllib.parse import urlsplit

from tracker import datalock, metrics, metrics_dir
from tracker.config import Settings
from tracker.redis_connection import sync_client
from tracker.redis_persistence import REDIS_PERSISTENCE

log = logging.getLogger(__name__)

EDGE_STOP_SECONDS = 15
SINK_STOP_SECONDS = 60
SENDER_STOP_SECONDS = 330  # calls in flight end within deliveries.timeout_seconds (<= 300)


def redis_command(settings: Settings) -> list[str]:
    """redis-server with AOF persistence under <data_dir>/redis, on the configured port."""
    url = urlsplit(settings.redis.url)
    folder = settings.data_path / "redis"
    folder.mkdir(parents=True, exist_ok=True)
    return [
        shutil.which("redis-server") or "redis-server",
        "--port",
        str(url.port or 6379),
        "--bind",
        url.hostname or "127.0.0.1",
        "--dir",
        str(folder),
        *REDIS_PERSISTENCE,
        "--daemonize",
        "no",
        "--loglevel",
        "warning",
    ]


def wait_for_redis(settings: Settings, seconds: float = 10.0) -> None:
    client = sync_client(settings.redis.url, timeout=1.0)
    deadline = time.monotonic() + seconds
    while True:
        try:
            client.ping()
            return
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


class Child:
    def __init__(self, name: str, args: list[str], env: dict[str, str]) -> None:
        self.name, self.args, self.env = name, args, env
        self.proc: subprocess.Popen | None = None
        self.restarts = 0

    def start(self) -> None:
        self.proc = subprocess.Popen(self.args, env=self.env)

    def signal(self, sig: int) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)

    def stop(self, seconds: float) -> None:
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(seconds)
        except subprocess.TimeoutExpired:
            log.error("%s did not stop in %ss; killing it", self.name, seconds)
            proc.kill()
            proc.wait()


def redis_answers(settings: Settings) -> bool:
    try:
        return bool(sync_client(settings.redis.url, timeout=0.5).ping())
    except Exception:
        return False


def ensure_demo_link(settings: Settings) -> None:
    """A `demo` link, so a new install has something to click."""
    from tracker.links import create, new_link

    create(
        sync_client(settings.redis.url),
        new_link(
            {
                "slug": "demo",
                "destination": "https://example.com/landing?click_id={click_id}&aff={affiliate_id}",
                "campaign_id": "demo-campaign",
                "affiliate_id": "demo-affiliate",
            }
        ),
    )


def serve(settings: Settings, manage_redis: bool, demo: bool = False) -> int:
    lock = datalock.hold(settings.data_path)  # noqa: F841 - held until the process ends
    stopping = False

    def on_signal(*_):
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    metrics_dir.clear(metrics_dir.use(settings.data_path / "metrics"))
    env = dict(os.environ, TRACKER_ADMIN_TOKEN=settings.admin_token)
    python = [sys.executable, "-m", "tracker"]
    redis = None
    if manage_redis and redis_answers(settings):
        log.info("redis already answers at %s; using it", settings.redis.url)
    elif manage_redis:
        redis = Child("redis", redis_command(settings), env)
        redis.start()
        wait_for_redis(settings)
    if demo:
        ensure_demo_link(settings)
    sink = Child("sink", python + ["sink"], env)
    # postbacks out and webhooks: its own process, so a slow receiver holds up nothing else
    sender = Child("deliver", python + ["deliver"], env)
    edges = [
        Child(f"edge-{i}", python + ["edge", "--worker", str(i)], env)
        for i in range(settings.worker_count)
    ]
    for child in [sink, sender, *edges]:
        child.start()
    print(
        f"tracker: {len(edges)} edge process(es) on http://{settings.http.host}:"
        f"{settings.http.port}, sink SQL on {settings.sink.query_host}:"
        f"{settings.sink.query_port}; Ctrl-C stops",
        flush=True,
    )
    if demo:
        base = f"http://127.0.0.1:{settings.http.port}"
        print(
            "\nTry:\n"
            f"  curl -i {base}/c/demo?sub1=hello\n"
            f"  curl -s -o /dev/null -w '%{{http_code}}\\n' '{base}/p.gif?slug=demo'\n"
            '  .venv/bin/tracker sql "SELECT event_time, click_id, link_slug, sub1 '
            'FROM tracker.clicks ORDER BY event_time DESC LIMIT 5"\n'
            f"  curl -H 'Authorization: Bearer <token in {settings.data_path}/admin_token>' "
            f"{base}/api/links\n",
            flush=True,
        )
    while not stopping:
        time.sleep(0.2)
        for child in [sink, sender, *edges, *([redis] if redis else [])]:
            if not stopping and child.proc is not None and child.proc.poll() is not None:
                metrics.mark_dead(child.proc.pid)
                child.restarts += 1
                log.error("%s exited (%s); restarting", child.name, child.proc.returncode)
                time.sleep(min(child.restarts, 5))
                child.start()

    for edge in edges:  # all at once: they stop accepting together, then flush
        edge.signal(signal.SIGTERM)
    for edge in edges:
        edge.stop(EDGE_STOP_SECONDS)
    sender.stop(SENDER_STOP_SECONDS)
    sink.stop(SINK_STOP_SECONDS)
    if redis:
        redis.stop(30)
    print("tracker: stopped", flush=True)
    return 0
