"""UTC timestamps with millisecond precision, as ClickHouse DateTime64(3, 'UTC') reads them."""

import time
from datetime import UTC, datetime
from functools import lru_cache

_cached_second = -1
_cached_prefix = ""


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def format_ms(ms: int) -> str:
    """'YYYY-MM-DD HH:MM:SS.mmm' in UTC; the second part is cached (one format per second)."""
    global _cached_second, _cached_prefix
    second, milli = divmod(ms, 1000)
    if second != _cached_second:
        _cached_prefix = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(second))
        _cached_second = second
    return f"{_cached_prefix}.{milli:03d}"


def parse_ms(text: str) -> int:
    """Inverse of format_ms (also accepts ISO 8601 with 'T' and a UTC offset)."""
    if len(text) == 23 and text[19] == "." and text[10] == " ":  # our own format, fast
        return _second(text[:19]) * 1000 + int(text[20:])
    dt = datetime.fromisoformat(text.replace(" ", "T"))
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return int(dt.timestamp() * 1000)


@lru_cache(maxsize=4096)
def _second(text: str) -> int:
    return int(datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp())
