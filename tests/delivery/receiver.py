"""A real HTTP receiver in a thread, for tests whose own code blocks (system tests)."""

from __future__ import annotations

import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class ThreadedReceiver:
    """Answers each request with the next action of `plan` (an HTTP status or "hang":
    wait for `release`); the last action repeats."""

    def __init__(self, plan: list) -> None:
        self.plan = list(plan)
        self.requests: list[dict] = []
        self.release = threading.Event()
        self.hanging = 0
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def _any(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                with receiver._lock:
                    receiver.requests.append(
                        {
                            "at": time.monotonic(),
                            "method": self.command,
                            "path": self.path,
                            "headers": dict(self.headers),
                            "body": body,
                        }
                    )
                    plan = receiver.plan
                    action = plan.pop(0) if len(plan) > 1 else plan[0]
                if action == "hang":
                    with receiver._lock:
                        receiver.hanging += 1
                    receiver.release.wait(120)
                    action = 200
                self.send_response(action)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            do_GET = do_POST = _any

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> ThreadedReceiver:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()
