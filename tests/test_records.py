"""tracker/events.py (query parsing, row building) and the pure helpers of tracker/tracking.py."""

from __future__ import annotations

import re

import pytest

from tracker.config import ROOT
from tracker.edge.clicks import MAX_COOKIE_HEADER, cookie_attributes, read_cookie
from tracker.links import Link
from tracker.records import (
    KEPT_PARAMS,
    MAX_PARAM,
    MAX_URL,
    RequestMeta,
    clean,
    click_record,
    click_row,
    impression_row,
    orphan_row,
    parse_query,
)

VID = "018f3a2b-4c5d-7e6f-8a9b-0c1d2e3f4a5b"
CID = "018f3a2b-4c5d-7e70-8a9b-0c1d2e3f4a5c"
MS = 1_700_000_000_123
EVENT_TIME = "2023-11-14 22:13:20.123"

META = RequestMeta(
    ip="1.2.3.4",
    user_agent="UA/1.0",
    referer="https://ref.example/",
    accept_language="en-US",
    url="/c/promo?sub1=a",
    method="GET",
)
LINK = Link(
    slug="promo",
    destination="https://shop.example/",
    campaign_id="camp",
    affiliate_id="aff",
    advertiser_id="adv",
)


def table_columns(table: str) -> list[str]:
    """Column names of a table in the ClickHouse migration, without defaulted columns."""
    sql = (ROOT / "config" / "migrations" / "0001_init.sql").read_text()
    match = re.search(rf"CREATE TABLE IF NOT EXISTS \$\{{db\}}\.{table}\s*\((.*?)\n\)", sql, re.S)
    assert match, table
    columns = []
    for line in match.group(1).splitlines():
        line = line.strip()
        if line and not line.startswith("--") and " DEFAULT " not in line:
            columns.append(line.split()[0])
    return columns


# -- parse_query ----------------------------------------------------------------------


def test_parse_query_basic():
    assert parse_query("sub1=a&utm_source=news+letter&x=%2F", 8192) == {
        "sub1": "a",
        "utm_source": "news letter",
        "x": "/",
    }


def test_parse_query_empty():
    assert parse_query("", 8192) == {}


def test_oversized_query_is_ignored_whole():
    raw = "sub1=" + "a" * 300
    assert parse_query(raw, len(raw) - 1) == {}
    assert parse_query(raw, len(raw)) == {"sub1": "a" * 300}


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("sub1=%zz", "%zz"),  # invalid escape kept as text
        ("sub1=%", "%"),
        ("sub1=%ff", "\ufffd"),  # invalid UTF-8
        ("sub1=%e2%82", "\ufffd"),  # truncated sequence
        ("sub1=ok%c3%28", "ok\ufffd("),
        ("sub1=%C3%A9t%C3%A9", "été"),
    ],
)
def test_bad_encoding_never_raises(raw, expected):
    assert parse_query(raw, 8192)["sub1"] == expected


def test_first_of_repeated_params_wins():
    assert parse_query("sub1=first&sub1=second&sub2=&sub2=x", 8192) == {
        "sub1": "first",
        "sub2": "",
    }


def test_blank_values_kept():
    assert parse_query("sub1=&sub2", 8192) == {"sub1": "", "sub2": ""}


def test_values_truncated_to_max_param():
    params = parse_query("sub1=" + "a" * 1000 + "&sub2=" + "%C3%A9" * 600, 100_000)
    assert params["sub1"] == "a" * MAX_PARAM
    assert params["sub2"] == "é" * MAX_PARAM


def test_control_characters_removed_from_values():
    params = parse_query("sub1=a%00b%0d%0ac%09d%7fe%1bf%c2%85g&sub2=%e2%80%8b", 8192)
    assert params["sub1"] == "abcdefg"  # C0 and C1 controls dropped
    # format characters are text (zero-width joiners build emoji): kept
    assert params["sub2"] == "\u200b"
    family = "\U0001f468\u200d\U0001f469\u200d\U0001f467"
    assert clean(family + "\u00a0x", 100) == family + "\u00a0x"


def test_clean():
    assert clean("plain text é", 100) == "plain text é"
    assert clean("abcdef", 3) == "abc"
    assert clean("a\r\nb\x00c\x7f", 100) == "abc"
    cleaned = clean("\x00" * 10 + "abcdef", 12)
    assert cleaned == "ab"
    assert len(clean("x\ny" * 1000, 50)) <= 50


# -- rows -------------------------------------------------------------------------------


def make_click_row(**overrides):
    kwargs = dict(
        ms=MS,
        click_id=CID,
        visitor_id=VID,
        new_visitor=True,
        link=LINK,
        params={"sub1": "s1", "utm_source": "news", "gclid": "g", "evil": "x"},
        meta=META,
        destination="https://shop.example/?click_id=" + CID,
    )
    kwargs.update(overrides)
    return click_row(**kwargs)


def test_click_row_keys_are_the_clickhouse_columns():
    assert list(make_click_row()) == table_columns("clicks")


def test_click_row_values():
    row = make_click_row()
    assert row["event_time"] == EVENT_TIME
    assert (row["click_id"], row["visitor_id"], row["new_visitor"]) == (CID, VID, 1)
    assert (row["link_slug"], row["campaign_id"], row["affiliate_id"], row["advertiser_id"]) == (
        "promo",
        "camp",
        "aff",
        "adv",
    )
    assert (row["sub1"], row["utm_source"], row["gclid"]) == ("s1", "news", "g")
    assert row["sub2"] == row["utm_term"] == row["msclkid"] == ""
    assert "evil" not in row
    assert (row["ip"], row["user_agent"], row["referer"]) == (
        "1.2.3.4",
        "UA/1.0",
        "https://ref.example/",
    )
    assert (row["accept_language"], row["request_url"], row["method"]) == (
        "en-US",
        "/c/promo?sub1=a",
        "GET",
    )
    assert row["destination_url"] == "https://shop.example/?click_id=" + CID
    assert set(KEPT_PARAMS) <= set(row)


def test_click_row_returning_visitor_and_long_destination():
    row = make_click_row(new_visitor=False, destination="https://x.example/" + "a" * 10_000)
    assert row["new_visitor"] == 0
    assert len(row["destination_url"]) == MAX_URL


def test_click_record():
    row = make_click_row()
    record = click_record(row, MS)
    assert record == {
        "click_id": CID,
        "visitor_id": VID,
        "ts": MS,
        "link_slug": "promo",
        "campaign_id": "camp",
        "affiliate_id": "aff",
        "advertiser_id": "adv",
        "sub1": "s1",
        "sub2": "",
        "sub3": "",
        "sub4": "",
        "sub5": "",
    }


def test_orphan_row_keys_and_values():
    row = orphan_row(
        ms=MS,
        visit_id=CID,
        visitor_id=VID,
        slug="x" * 500,
        reason="unknown_link",
        route="click",
        meta=META,
    )
    assert list(row) == table_columns("orphan_visits")
    assert row["event_time"] == EVENT_TIME
    assert row["link_slug"] == "x" * 128
    assert (row["visit_id"], row["visitor_id"], row["reason"], row["route"]) == (
        CID,
        VID,
        "unknown_link",
        "click",
    )
    assert (row["ip"], row["request_url"], row["method"]) == ("1.2.3.4", "/c/promo?sub1=a", "GET")


def test_impression_row_keys_with_and_without_link():
    with_link = impression_row(
        ms=MS,
        impression_id=CID,
        visitor_id=VID,
        link=LINK,
        campaign_id="ignored",
        params={"sub3": "s3", "affiliate_id": "ignored"},
        meta=META,
    )
    assert list(with_link) == table_columns("impressions")
    assert (with_link["link_slug"], with_link["campaign_id"], with_link["affiliate_id"]) == (
        "promo",
        "camp",
        "aff",
    )
    assert with_link["sub3"] == "s3"
    bare = impression_row(
        ms=MS,
        impression_id=CID,
        visitor_id=VID,
        link=None,
        campaign_id="c9",
        params={"affiliate_id": "a9"},
        meta=META,
    )
    assert (bare["link_slug"], bare["campaign_id"], bare["affiliate_id"]) == ("", "c9", "a9")


def test_event_time_format_at_second_boundaries():
    assert make_click_row(ms=0)["event_time"] == "1970-01-01 00:00:00.000"
    assert make_click_row(ms=1_700_000_000_999)["event_time"] == "2023-11-14 22:13:20.999"
    assert make_click_row(ms=1_700_000_001_000)["event_time"] == "2023-11-14 22:13:21.000"


# -- tracking.read_cookie / cookie_attributes ---------------------------------------------


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (f"vid={VID}", VID),
        (f"a=1; vid={VID}; b=2", VID),
        (f"a=1;vid={VID}", VID),
        (f'vid="{VID}"', VID),
        (f"  vid={VID}  ", VID),
        ("vid=not-a-uuid", None),
        (f"vid={VID.upper()}", None),
        (f"vid={VID}x", None),
        (f"vid={VID[:-1]}", None),
        ("vid=", None),
        (f"xvid={VID}", None),
        (f"VID={VID}", None),
        (f"other={VID}", None),
        ("", None),
        (None, None),
    ],
)
def test_read_cookie(header, expected):
    assert read_cookie(header, "vid") == expected


def test_read_cookie_custom_name():
    assert read_cookie(f"vid=x; visitor={VID}", "visitor") == VID


def test_read_cookie_oversized_header_ignored():
    tail = f"; vid={VID}"
    fits = "x=" + "a" * (MAX_COOKIE_HEADER - len(tail) - 2) + tail
    assert len(fits) == MAX_COOKIE_HEADER
    assert read_cookie(fits, "vid") == VID
    assert read_cookie("y" + fits, "vid") is None


def test_cookie_attributes():
    assert cookie_attributes(3600, "Lax", False, "") == (
        "; Max-Age=3600; Path=/; SameSite=Lax; HttpOnly"
    )
    assert cookie_attributes(60, "None", True, "example.com") == (
        "; Max-Age=60; Path=/; SameSite=None; HttpOnly; Secure; Domain=example.com"
    )


def test_parse_query_agrees_with_urllib_on_random_junk():
    import random
    from urllib.parse import parse_qsl

    rng = random.Random(1)
    alphabet = "ab=&%+0f;xé\x00"
    for _ in range(5000):
        raw = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 16)))
        expected: dict[str, str] = {}
        for key, value in parse_qsl(raw, keep_blank_values=True, errors="replace"):
            expected.setdefault(key, clean(value, MAX_PARAM))
        assert parse_query(raw, 8192) == expected, raw
