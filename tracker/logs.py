"""Logging: one JSON object per line (errors and lifecycle; never one line per request).

A terminal gets plain text instead; `TRACKER_LOG_FORMAT=json|text` chooses explicitly.
"""

from __future__ import annotations

import logging
import os
import sys
import time

import orjson
from aiohttp.http_exceptions import HttpProcessingError

from tracker.timefmt import format_ms


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": format_ms(int(record.created * 1000)),
            "level": record.levelname.lower(),
            "logger": record.name,
            "pid": record.process,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["error"] = self.formatException(record.exc_info)
        return orjson.dumps(entry).decode()


class MalformedRequests(logging.Filter):
    """aiohttp logs every malformed request it refuses (a 400) at error level, with the
    client's address and a 1.5 KB traceback: anyone could fill the disk with them. They
    are the client's errors, not ours: one line per `interval` at most, saying how many
    there were, without traceback or address. Other errors pass untouched."""

    def __init__(self, interval: float = 60.0, clock=time.monotonic) -> None:
        super().__init__()
        self.interval = interval
        self.clock = clock
        self.count = 0
        self._last: float | None = None

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if not isinstance(exc, HttpProcessingError):
            return True
        self.count += 1
        now = self.clock()
        if self._last is not None and now - self._last < self.interval:
            return False
        record.msg = "malformed requests refused (400): %d since the last report, latest: %s"
        record.args = (self.count, type(exc).__name__)
        record.exc_info = record.exc_text = None
        self.count, self._last = 0, now
        return True


def configure(level: int = logging.INFO) -> None:
    fmt = os.environ.get("TRACKER_LOG_FORMAT") or ("text" if sys.stderr.isatty() else "json")
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(
            logging.Formatter("%(asctime)s %(levelname)s %(name)s[%(process)d]: %(message)s")
        )
    logging.basicConfig(level=level, handlers=[handler], force=True)
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)  # no line per request
    server = logging.getLogger("aiohttp.server")
    if not any(isinstance(f, MalformedRequests) for f in server.filters):
        server.addFilter(MalformedRequests())
