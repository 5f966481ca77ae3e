"""The sink's local SQL endpoint, so `tracker sql` works while the sink owns chDB.

Embedded chDB allows one engine per process and the sink holds it; the CLI therefore
asks the sink. Loopback only, bearer token (the admin token), read-only queries within
the configured limits (tracker/clickhouse.py says how the engine enforces both), plus
`POST /migrate` so `tracker migrate` works while the service runs.

    POST /query    {"sql": "..."}  -> {"columns": [...], "rows": [[...], ...]}
    POST /migrate                  -> {"applied": [...]}
    POST /privacy/export, /privacy/erase  {"visitor_id": "..."}  (tracker/privacy_ops.py)
    GET  /metrics                  -> Prometheus text (no token: counts only)
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import orjson

from tracker.access import is_admin
from tracker.clickhouse import ClickHouse
from tracker.metrics import CONTENT_TYPE, exposition
from tracker.privacy_ops import PrivacyError

log = logging.getLogger(__name__)
MAX_SQL = 1024 * 1024


def encode_rows(columns: list[str], rows: Sequence[Sequence[Any]]) -> bytes:
    return orjson.dumps({"columns": columns, "rows": rows}, default=str)


def make_server(
    ch: ClickHouse,
    token: str,
    host: str,
    port: int,
    migrate: Callable[[], list[str]],
    actions: dict[str, Callable[[dict], Any]] | None = None,
) -> ThreadingHTTPServer:
    """`actions`: more POST paths, each a JSON object in and a JSON answer out."""
    routes: dict[str, Callable[[dict], Any]] = actions or {}

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, fmt, *args):  # no per-request logging
            pass

        def _reply(self, status: int, body: bytes) -> None:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _fail(self, status: int, reason: str) -> None:
            self._reply(status, orjson.dumps({"error": reason}))

        def do_GET(self) -> None:  # noqa: N802 - the http.server name
            if self.path != "/metrics":
                return self._fail(404, "unknown path")
            body = exposition()
            self.send_response(200)
            self.send_header("Content-Type", CONTENT_TYPE)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_POST(self) -> None:  # noqa: N802 - the http.server name
            if not is_admin(self.headers.get("Authorization"), token):
                return self._fail(401, "missing or wrong bearer token")
            length = int(self.headers.get("Content-Length") or 0)
            if length > MAX_SQL:
                return self._fail(413, "query too large")
            body = self.rfile.read(length)
            try:
                if self.path == "/query":
                    sql = orjson.loads(body)["sql"]
                    columns, rows = ch.query(sql, readonly=True)
                    return self._reply(200, encode_rows(columns, rows))
                if self.path == "/migrate":
                    return self._reply(200, orjson.dumps({"applied": migrate()}))
                if self.path in routes:
                    request = orjson.loads(body or b"{}")
                    if not isinstance(request, dict):
                        return self._fail(400, "body must be a JSON object")
                    try:
                        answer = routes[self.path](request)
                    except PrivacyError as exc:
                        return self._fail(400, str(exc))
                    except Exception as exc:  # our fault, not the body's: say what failed
                        log.exception("%s failed", self.path)
                        reason = str(exc).strip().splitlines()[0][:500] if str(exc) else ""
                        return self._fail(500, f"{self.path} failed: {type(exc).__name__} {reason}")
                    return self._reply(200, orjson.dumps(answer, default=str))
                return self._fail(404, "unknown path")
            except (orjson.JSONDecodeError, KeyError, TypeError):
                return self._fail(400, 'body must be {"sql": "..."}')
            except Exception as exc:  # a ClickHouse error: show it to the analyst
                return self._fail(400, str(exc).strip().splitlines()[0][:2000])

    server = ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    return server


def start(server: ThreadingHTTPServer) -> threading.Thread:
    thread = threading.Thread(target=server.serve_forever, name="query-server", daemon=True)
    thread.start()
    return thread
