"""Origins: allowlist entries, a request's origin, and matching."""

from __future__ import annotations

import pytest

from tracker.origins import allowed, normalize, of_request


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("https://shop.example", "https://shop.example"),
        ("HTTPS://Shop.Example/", "https://shop.example"),
        ("https://shop.example:443", "https://shop.example"),
        ("http://localhost:8080", "http://localhost:8080"),
        ("https://*.shop.example", "https://*.shop.example"),
        ("shop.example", None),
        ("ftp://shop.example", None),
        ("https://shop.example/checkout", None),
        ("https://shop.example?x=1", None),
        ("https://user@shop.example", None),
        ("https://shop.example:99999", None),
        ("https://shop..example", None),
        ("https://*", None),
        ("https://a.*.example", None),
        ("", None),
    ],
)
def test_normalize(text, expected):
    assert normalize(text) == expected


def test_origin_of_a_request_prefers_the_origin_header():
    assert of_request("https://shop.example", "https://other.example/x") == "https://shop.example"
    assert of_request(None, "https://shop.example:8443/thanks?o=1") == "https://shop.example:8443"
    assert of_request("null", "https://shop.example/") == "https://shop.example"
    assert of_request(None, None) == ""
    assert of_request("garbage", "not a url") == ""


def test_allowlist_matching():
    shop = ["https://shop.example", "https://*.brand.example"]
    assert allowed("https://shop.example", shop)
    assert not allowed("http://shop.example", shop)  # another scheme is another origin
    assert not allowed("https://shop.example:8443", shop)
    assert not allowed("https://evil-shop.example", shop)
    assert allowed("https://brand.example", shop)
    assert allowed("https://eu.brand.example", shop)
    assert not allowed("https://evilbrand.example", shop)
    assert not allowed("", shop)
    assert allowed("", []) and allowed("https://any.example", [])  # no allowlist: any site
