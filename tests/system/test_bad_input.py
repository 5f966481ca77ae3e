"""Junk in, clean behaviour out: redirects still happen, nothing is stored half-way."""

from __future__ import annotations

import re
import socket
import uuid

import pytest

from tracker.ids import is_uuid
from tracker.testing import Service


def raw_get(
    port: int, target: bytes, headers: dict[str, bytes] | None = None, method: bytes = b"GET"
) -> tuple[int, list[tuple[str, str]], bytes]:
    """Send one request exactly as given (bytes) and read the whole answer."""
    lines = [method + b" " + target + b" HTTP/1.1", b"Host: 127.0.0.1", b"Connection: close"]
    lines += [name.encode() + b": " + value for name, value in (headers or {}).items()]
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(b"\r\n".join(lines) + b"\r\n\r\n")
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    parsed = [tuple(part.strip() for part in line.split(":", 1)) for line in header_lines]
    return int(status_line.split()[1]), parsed, body


def header(headers: list[tuple[str, str]], name: str) -> list[str]:
    return [value for key, value in headers if key.lower() == name.lower()]


@pytest.fixture(scope="module")
def svc(tracking):  # every test here runs on the fast path and on aiohttp's routes
    tracking.add_link("junk", "https://shop.example/l?s={sub1}", campaign_id="junk")
    return tracking


def test_unknown_slug_is_a_404_page_and_an_orphan_visit(svc):
    status, headers, body = raw_get(svc.port, b"/c/no-such-link?sub1=x")
    assert status == 404 and b"Link not found" in body
    assert header(headers, "Cache-Control") == ["no-store"]
    svc.wait_count("orphan_visits", 1, "link_slug = 'no-such-link'")
    row = svc.sql(
        "SELECT reason, route FROM tracker.orphan_visits WHERE link_slug = 'no-such-link'"
    )
    assert row == [{"reason": "unknown_link", "route": "click"}]


def test_unknown_slug_goes_to_fallback_when_configured(service: Service):
    service.env["TRACKER_FALLBACK_URL"] = "https://home.example/"
    service.serve()
    status, headers, _ = raw_get(service.port, b"/c/gone")
    assert status == 302 and header(headers, "Location") == ["https://home.example/"]
    service.wait_count("orphan_visits", 1, "link_slug = 'gone'")


def test_sixteen_kb_query_string_still_redirects(svc):
    target = b"/c/junk?sub1=big&pad=" + b"x" * 16384
    status, headers, _ = raw_get(svc.port, target)
    assert status == 302
    (location,) = header(headers, "Location")
    assert location.startswith("https://shop.example/l?s=&click_id=")  # oversized query ignored
    click_id = location.rsplit("=", 1)[1]
    svc.wait_count("clicks", 1, f"click_id = '{click_id}'")
    row = svc.sql(
        f"SELECT sub1, length(request_url) AS n FROM tracker.clicks WHERE click_id = '{click_id}'"
    )
    assert row == [{"sub1": "", "n": 4096}]


@pytest.mark.parametrize(
    ("query", "stored"),
    [
        (b"sub1=%zz%4", "%zz%4"),  # invalid percent-encoding: kept as typed
        (b"sub1=%ff%fe-ok", "\ufffd\ufffd-ok"),  # invalid UTF-8: replacement characters
    ],
)
def test_bad_encodings_still_redirect(svc, query, stored):
    status, headers, _ = raw_get(svc.port, b"/c/junk?" + query)
    assert status == 302
    click_id = header(headers, "Location")[0].rsplit("=", 1)[1]
    svc.wait_count("clicks", 1, f"click_id = '{click_id}'")
    assert svc.sql(f"SELECT sub1 FROM tracker.clicks WHERE click_id = '{click_id}'") == [
        {"sub1": stored}
    ]


def test_raw_non_ascii_bytes_in_request_line_are_a_protocol_error(svc):
    # Not HTTP (clients percent-encode): the parser refuses it before any handler runs.
    status, _, _ = raw_get(svc.port, b"/c/junk?sub1=\xff\xferaw-bytes")
    assert status == 400
    svc.wait_behind_marker()
    assert svc.count("clicks", "sub1 LIKE '%raw-bytes%'") == 0


def test_crlf_in_sub_cannot_inject_headers(svc):
    status, headers, _ = raw_get(
        svc.port, b"/c/junk?sub1=a%0d%0aSet-Cookie:%20evil=1%0d%0aX-Evil:%201"
    )
    assert status == 302
    assert header(headers, "X-Evil") == []
    cookies = header(headers, "Set-Cookie")
    assert len(cookies) == 1 and cookies[0].startswith("vid=") and "evil" not in cookies[0]
    (location,) = header(headers, "Location")
    assert "\r" not in location and "\n" not in location
    # control characters are dropped from values before they reach the destination
    assert location.startswith("https://shop.example/l?s=aSet-Cookie%3A%20evil%3D1X-Evil")
    click_id = location.rsplit("=", 1)[1]
    svc.wait_count("clicks", 1, f"click_id = '{click_id}'")
    stored = svc.sql(f"SELECT sub1 FROM tracker.clicks WHERE click_id = '{click_id}'")
    assert stored == [{"sub1": "aSet-Cookie: evil=1X-Evil: 1"}]  # control characters dropped


@pytest.mark.parametrize(
    "cookie",
    [
        b"vid=" + b"a" * 10000,  # oversized
        b"vid=not-a-uuid; other",  # malformed
        b"vid=01900000-0000-7000-8000-00000000000G",  # almost a uuid
        b'vid="; click_id=../../etc; =;;;',  # junk, and a bad click_id cookie
        b"click_id=%00%ff; vid=",  # bad click_id cookie value, empty visitor id
    ],
)
def test_bad_cookies_get_a_fresh_visitor_id(svc, cookie):
    status, headers, _ = raw_get(svc.port, b"/c/junk", {"Cookie": cookie})
    assert status == 302
    (set_cookie,) = header(headers, "Set-Cookie")
    visitor_id = set_cookie.split(";")[0].removeprefix("vid=")
    assert is_uuid(visitor_id)
    click_id = header(headers, "Location")[0].rsplit("=", 1)[1]
    svc.wait_count("clicks", 1, f"click_id = '{click_id}'")
    row = svc.sql(
        f"SELECT toString(visitor_id) AS v, new_visitor FROM tracker.clicks "
        f"WHERE click_id = '{click_id}'"
    )
    assert row == [{"v": visitor_id, "new_visitor": 1}]


@pytest.mark.parametrize(
    ("method", "target", "table"),
    [
        (b"POST", b"/c/junk?sub1=", "clicks"),
        (b"PUT", b"/c/junk?sub1=", "clicks"),
        (b"DELETE", b"/p.gif?slug=junk&sub1=", "impressions"),
        (b"POST", b"/p.gif?slug=junk&sub1=", "impressions"),
    ],
)
def test_other_methods_are_405_and_not_recorded(svc, method, target, table):
    mark = f"method-{uuid.uuid4().hex[:12]}"
    status, headers, _ = raw_get(
        svc.port, target + mark.encode(), {"Content-Length": b"0"}, method=method
    )
    assert status == 405
    assert "GET" in header(headers, "Allow")[0]
    svc.wait_behind_marker()
    assert svc.count(table, f"sub1 = '{mark}'") == 0
    # the same request as a GET is recorded (the check above would have seen it)
    assert raw_get(svc.port, target + mark.encode())[0] in (200, 302)
    svc.wait_count(table, 1, f"sub1 = '{mark}'")


@pytest.mark.parametrize(
    ("body", "status", "reason_part"),
    [
        (b"{not json", 400, "valid JSON"),
        (b"[1, 2]", 400, "JSON object"),
        (b'{"slug": "x y", "destination": "https://a.example/"}', 400, "slug"),
        (b'{"slug": "ok1"}', 400, "destination"),
        (b'{"slug": "ok2", "destination": "javascript:alert(1)"}', 400, "http(s)"),
        (b'{"slug": "ok3", "destination": "https://a.example/\\r\\nX: y"}', 400, "control"),
        (
            b'{"slug": "ok4", "destination": "https://a.example/", "colour": "red"}',
            400,
            "unknown field",
        ),
        (
            b'{"slug": "ok5", "destination": "https://a.example/", "status": "paused"}',
            400,
            "status",
        ),
        (
            b'{"slug": "ok6", "destination": "https://a.example/", "campaign_id": 7}',
            400,
            "campaign_id",
        ),
    ],
)
def test_admin_api_rejects_bad_links_with_json_reason(svc, body, status, reason_part):
    code, answer = svc.api("POST", "/api/links", body)
    assert code == status
    assert answer["error"] and reason_part in answer["reason"]
    slug = re.search(rb'"slug": "(ok\d)"', body)
    if slug:  # nothing stored half-way: the well-formed slug of a refused link is free
        assert svc.api("GET", f"/api/links/{slug[1].decode()}")[0] == 404


def test_admin_api_other_errors(svc):
    assert svc.api("GET", "/api/links/none")[0] == 404
    assert svc.api("PATCH", "/api/links/none", {"status": "disabled"})[0] == 404
    code, answer = svc.api("PATCH", "/api/links/junk", {"slug": "other"})
    assert code == 400 and "slug" in answer["reason"]
    code, answer = svc.api("PATCH", "/api/links/junk", {"destination": "ftp://x.example/"})
    assert code == 400
    assert svc.api("GET", "/api/links/junk")[1]["destination"].startswith("https://shop")
    code, answer = svc.api("GET", "/api/links", token="nope")
    assert code == 401 and answer["error"] == "unauthorized"
