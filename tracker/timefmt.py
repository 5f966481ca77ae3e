"""UTC timestamps with millisecond precision, as ClickHouse DateTime64(3, 'UTC') reads them."""

import time
from datetime import UTC, datetime
from functools import lru_cache


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def format_ms(ms: int) -> str:
    """'YYYY-MM-DD HH:MM:SS.mmm' in UTC."""
    second, milli = divmod(ms, 1000)
    return f"{_second_text(second)}.{milli:03d}"


@lru_cache(maxsize=4096)
def _second_text(second: int) -> str:
    """Each second formatted once while it is recent: a postback formats its own time and
    its click's, and a cache of the last second only formatted both every time (2 µs each)."""
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(second))


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


def parse_when(value: str | None, *, end_of_day: bool = True) -> int | None:
    """'YYYY-MM-DD' (the whole day, UTC) or an ISO 8601 time -> Unix ms; ValueError."""
    if value in (None, ""):
        return None
    assert value is not None
    try:
        if len(value) == 10:
            day = datetime.strptime(value, "%Y-%m-%d").replace(tzinfo=UTC)
            return int(day.timestamp() * 1000) + (86_400_000 - 1 if end_of_day else 0)
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError("give a date (YYYY-MM-DD) or an ISO 8601 time") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return int(moment.timestamp() * 1000)


def utc_day(ms: int) -> int:
    """The UTC day of a time as YYYYMMDD (what daily counters are keyed by)."""
    days = ms // 86_400_000
    # civil date from days since 1970-01-01 (Howard Hinnant's algorithm), no datetime call
    z = days + 719468
    era = z // 146097
    doe = z - era * 146097
    yoe = (doe - doe // 1460 + doe // 36524 - doe // 146096) // 365
    doy = doe - (365 * yoe + yoe // 4 - yoe // 100)
    mp = (5 * doy + 2) // 153
    d = doy - (153 * mp + 2) // 5 + 1
    m = mp + 3 if mp < 10 else mp - 9
    y = yoe + era * 400 + (1 if m <= 2 else 0)
    return y * 10000 + m * 100 + d
