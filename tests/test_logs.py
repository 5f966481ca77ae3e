"""tracker/logs.py: malformed requests cannot flood the log."""

from __future__ import annotations

import logging

from aiohttp.http_exceptions import BadHttpMessage

from tracker import logs
from tracker.clock import FixedClock


class Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def refuse(logger: logging.Logger, n: int) -> None:
    for _ in range(n):
        try:
            raise BadHttpMessage("Invalid header value char")
        except BadHttpMessage:
            logger.exception("Error handling request from %s", "203.0.113.9")


def test_malformed_requests_log_one_counted_line_a_minute():
    logs.configure()
    logger = logging.getLogger("aiohttp.server")
    [flt] = [f for f in logger.filters if isinstance(f, logs.MalformedRequests)]
    flt.clock = clock = FixedClock(1000.0)
    flt._last, flt.count = None, 0
    lines = Lines()
    logger.addHandler(lines)
    try:
        refuse(logger, 500)
        clock.advance(61)
        refuse(logger, 1)
        logger.error("a real failure", exc_info=ValueError("bug"))
    finally:
        logger.removeHandler(lines)
    assert len(lines.records) == 3
    first, second, real = lines.records
    assert first.getMessage().startswith("malformed requests refused (400): 1 since")
    assert second.getMessage().startswith("malformed requests refused (400): 500 since")
    assert not first.exc_info and "203.0.113.9" not in first.getMessage()
    assert real.exc_info  # other errors keep their traceback
