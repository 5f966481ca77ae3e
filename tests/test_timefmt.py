"""UTC millisecond timestamps: formatting, parsing, and the dates operators type."""

import random
from datetime import UTC, datetime

import pytest

from tracker.timefmt import format_ms, parse_ms, parse_when


def test_format_and_parse_round_trip_to_the_millisecond():
    ms = 1_764_460_800_123  # 2025-11-30 00:00:00.123 UTC
    assert format_ms(ms) == "2025-11-30 00:00:00.123"
    assert parse_ms(format_ms(ms)) == ms
    assert parse_ms("2025-11-30T01:00:00.123+01:00") == ms


def test_a_date_means_the_whole_utc_day():
    start = parse_when("2025-11-30", end_of_day=False)
    end = parse_when("2025-11-30")
    assert start == 1_764_460_800_000
    assert end == start + 86_400_000 - 1


def test_an_iso_time_without_offset_is_utc_and_blank_is_none():
    assert parse_when("2025-11-30T00:00:00") == 1_764_460_800_000
    assert parse_when("2025-11-30T00:00:00Z") == 1_764_460_800_000
    assert parse_when("") is None
    assert parse_when(None) is None


@pytest.mark.parametrize("junk", ["30/11/2025", "2025-13-01", "tomorrow"])
def test_junk_is_a_value_error_with_a_reason(junk):
    with pytest.raises(ValueError, match="YYYY-MM-DD"):
        parse_when(junk)


def test_times_of_many_seconds_format_right_in_any_order():
    rng = random.Random(5)
    times = [0, 1_796_000_000_123, 0, 1_796_000_000_999, 999] + [
        rng.randrange(0, 4_102_444_800_000)
        for _ in range(10_000)  # more than the cache holds
    ]
    for ms in times + times[::-1]:
        expected = datetime.fromtimestamp(ms // 1000, UTC).strftime("%Y-%m-%d %H:%M:%S")
        assert format_ms(ms) == f"{expected}.{ms % 1000:03d}"
