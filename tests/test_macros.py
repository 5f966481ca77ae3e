"""tracker/macros.py: destination rendering and validation."""

from __future__ import annotations

from urllib.parse import parse_qs, urlsplit

import pytest

from tracker.macros import (
    MACROS,
    append_param,
    compile_template,
    normalize_destination,
    render,
    validate_destination,
)

CLICK = "018f3a2b-4c5d-7e6f-8a9b-0c1d2e3f4a5b"

ALL_VALUES = {
    "click_id": CLICK,
    "visitor_id": "018f3a2b-0000-7000-8000-000000000001",
    "campaign_id": "camp-1",
    "affiliate_id": "aff_2",
    "sub1": "s1",
    "sub2": "s2",
    "sub3": "s3",
    "sub4": "s4",
    "sub5": "s5",
}


def test_every_macro_is_substituted():
    template = "https://shop.example/p?" + "&".join(f"{m}={{{m}}}" for m in sorted(MACROS))
    url = render(template, ALL_VALUES)
    assert "{" not in url and "}" not in url
    query = parse_qs(urlsplit(url).query)
    assert {k: v for k, (v,) in query.items()} == ALL_VALUES
    # {click_id} is in the template, so no extra click_id parameter is appended
    assert url.count("click_id=") == 1


def test_macros_in_path_and_repeated():
    url = render("https://shop.example/{campaign_id}/{sub1}-{sub1}?c={click_id}", ALL_VALUES)
    assert url == f"https://shop.example/camp-1/s1-s1?c={CLICK}"


def test_missing_values_render_empty():
    url = render("https://shop.example/?a={sub2}&c={click_id}", {"click_id": CLICK})
    assert url == f"https://shop.example/?a=&c={CLICK}"


@pytest.mark.parametrize(
    ("value", "encoded"),
    [
        ("a b", "a%20b"),
        ("x&y=z", "x%26y%3Dz"),
        ("p#q?r/s", "p%23q%3Fr%2Fs"),
        ("100%", "100%25"),
        ("é", "%C3%A9"),
        ("a+b", "a%2Bb"),
        ("line\r\nSet-Cookie: x=1", "line%0D%0ASet-Cookie%3A%20x%3D1"),
    ],
)
def test_values_are_percent_encoded(value, encoded):
    url = render("https://shop.example/?s={sub1}&c={click_id}", {**ALL_VALUES, "sub1": value})
    assert url == f"https://shop.example/?s={encoded}&c={CLICK}"
    assert parse_qs(urlsplit(url).query)["s"] == [value]


@pytest.mark.parametrize(
    "template",
    [
        "https://shop.example/{sub1}",
        "https://shop.example/?s={sub1}",
        "https://shop.example/?s={sub1}&c={click_id}#{sub1}",
    ],
)
def test_hostile_values_never_appear_raw(template):
    hostile = "a b&zz=1\r\nLocation: https://evil.example/\x00\t#?"
    values = {key: hostile for key in MACROS}
    url = render(template, values)
    for ch in (" ", "&zz", "zz=", "\r", "\n", "\x00", "\t", "evil.example/"):
        assert ch not in url
    assert validate_destination(url) is None
    assert urlsplit(url).hostname == "shop.example"


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        ("https://shop.example/land", f"https://shop.example/land?click_id={CLICK}"),
        ("https://shop.example/land?x=1", f"https://shop.example/land?x=1&click_id={CLICK}"),
        (
            "https://shop.example/land?x=1#frag",
            f"https://shop.example/land?x=1&click_id={CLICK}#frag",
        ),
        ("https://shop.example/land#frag", f"https://shop.example/land?click_id={CLICK}#frag"),
        (
            "https://shop.example/land#a?b=c",
            f"https://shop.example/land?click_id={CLICK}#a?b=c",
        ),
        ("https://shop.example/land?", f"https://shop.example/land?click_id={CLICK}"),
        ("https://shop.example/land?x=1&", f"https://shop.example/land?x=1&click_id={CLICK}"),
    ],
)
def test_click_id_appended_when_no_macro(template, expected):
    assert render(template, {"click_id": CLICK}) == expected


def test_click_id_appended_after_other_macros():
    url = render("https://shop.example/{sub1}?a={affiliate_id}#top", ALL_VALUES)
    assert url == f"https://shop.example/s1?a=aff_2&click_id={CLICK}#top"


def test_appended_click_id_not_misplaced_by_encoded_value():
    # the value contains '#' and '?': encoded, they must not move the click_id parameter
    url = render("https://shop.example/{sub1}", {"click_id": CLICK, "sub1": "a#b?c"})
    assert url == f"https://shop.example/a%23b%3Fc?click_id={CLICK}"


def test_appended_click_id_is_encoded():
    assert render("https://x.example/", {"click_id": "a&b"}) == "https://x.example/?click_id=a%26b"


def test_unknown_macros_left_alone():
    template = "https://shop.example/{foo}/{SUB1}/{ sub1 }?q={sub1}&c={click_id}"
    url = render(template, {**ALL_VALUES, "foo": "FOO"})
    assert url == f"https://shop.example/{{foo}}/{{SUB1}}/{{ sub1 }}?q=s1&c={CLICK}"


def test_compile_template_shape():
    literals, names, has_click = compile_template("https://a.example/{sub1}?c={click_id}&z")
    assert literals == ("https://a.example/", "?c=", "&z")
    assert names == ("sub1", "click_id")
    assert has_click is True
    literals, names, has_click = compile_template("https://a.example/")
    assert (literals, names, has_click) == (("https://a.example/",), (), False)


def test_append_param_direct():
    assert append_param("http://a.example/p?x", "k", "v w") == "http://a.example/p?x&k=v%20w"


# -- validate_destination ---------------------------------------------------------------


@pytest.mark.parametrize(
    "template",
    [
        "https://shop.example/",
        "http://shop.example",
        "https://shop.example:8443/p?c={click_id}&s={sub1}#x",
        "https://shop.example/{sub1}/p?{sub2}#{sub3}",
        "http://[2001:db8::1]/p",
        "http://127.0.0.1:8080/p",
        "https://shop.example/" + "a" * (4096 - len("https://shop.example/")),
    ],
)
def test_valid_destinations(template):
    assert validate_destination(template) is None


@pytest.mark.parametrize(
    ("template", "reason"),
    [
        ("ftp://shop.example/file", "absolute http(s) URL"),
        ("javascript:alert(1)", "absolute http(s) URL"),
        ("mailto:a@shop.example", "absolute http(s) URL"),
        ("data:text/html,hi", "absolute http(s) URL"),
        ("/relative/path", "absolute http(s) URL"),
        ("shop.example/path", "absolute http(s) URL"),
        ("//shop.example/path", "absolute http(s) URL"),
        ("https://", "absolute http(s) URL"),
        ("https:///path-only", "absolute http(s) URL"),
        ("https://shop.example/a b", "spaces or control characters"),
        ("https://shop.example/\tx", "spaces or control characters"),
        ("https://shop.example/\r\nSet-Cookie:x", "spaces or control characters"),
        ("https://shop.example/\x00", "spaces or control characters"),
        ("https://shop.example/\x7f", "spaces or control characters"),
        (" https://shop.example/", "spaces or control characters"),
        ("http://[::1/p", "not a valid URL"),
        ("", "1 to 4096 characters"),
        # the host and port are fixed when the link is saved: no macro can move them
        ("https://{sub1}/landing", "not the host or port"),
        ("https://{sub1}.shop.example/p", "not the host or port"),
        ("https://shop.example{sub1}/", "not the host or port"),
        ("https://shop.example{sub1}", "not the host or port"),
        ("https://shop.example:{sub1}/", "not the host or port"),
        ("https://{sub1}@shop.example/", "not the host or port"),
        ("https://shop.example@evil.example/", "user name or password"),
        ("https://user:pw@shop.example/", "user name or password"),
        ("https://shop.example:443@evil.example/", "user name or password"),
        ("https://evil.example\\@shop.example/", "backslash"),
        ("https://shop.example\\evil.example/", "backslash"),
        ("https://%65vil.example/", "valid domain name"),
        ("https://shop.example:0/", "port must be a number"),
        ("https://shop.example:99999/", "port must be a number"),
        ("https://shop.example:8a/", "port must be a number"),
        ("https://[::1]x/", "port must be a number"),
        ("https://shop.example/" + "a" * 4096, "1 to 4096 characters"),
    ],
)
def test_invalid_destinations(template, reason):
    why = validate_destination(template)
    assert why is not None
    assert reason in why


@pytest.mark.parametrize(
    ("template", "stored"),
    [
        ("HTTPS://Shop.Example/P?Q", "https://shop.example/P?Q"),
        ("https://bücher.example/{sub1}", "https://xn--bcher-kva.example/{sub1}"),
        ("https://ÉCOLE.example:8443/", "https://xn--cole-9oa.example:8443/"),
        ("http://[2001:DB8::1]:81/", "http://[2001:db8::1]:81/"),
    ],
)
def test_destinations_are_stored_with_a_normalized_idna_host(template, stored):
    assert normalize_destination(template) == stored


def test_no_macro_value_moves_the_rendered_origin():
    """Whatever a clicker puts in the macros, the redirect stays on the saved origin."""
    template = normalize_destination("https://shop.example/{sub1}?a={sub2}#{sub3}")
    hostile = ["//evil.example", "@evil.example", "\\evil.example", "?x#y/../@e", "%2F%2Fe"]
    for value in hostile:
        url = render(template, {"sub1": value, "sub2": value, "sub3": value, "click_id": "c"})
        parts = urlsplit(url)
        assert (parts.scheme, parts.netloc) == ("https", "shop.example"), url


def test_quote_value_matches_quote_on_random_text():
    import random
    from urllib.parse import quote

    from tracker.macros import quote_value

    chars = "aZ09_.~-/?&=%+ é\n\x00€😀:#@!$'()*,;[]"
    rnd = random.Random(3)
    for _ in range(20_000):
        value = "".join(rnd.choice(chars) for _ in range(rnd.randint(0, 12)))
        assert quote_value(value) == quote(value, safe=""), value


def test_a_link_is_saved_with_its_fixed_origin():
    from tracker.links import LinkError, new_link

    link = new_link({"slug": "idn", "destination": "https://Bücher.example/{sub1}"})
    assert link.destination == "https://xn--bcher-kva.example/{sub1}"
    with pytest.raises(LinkError, match="not the host or port"):
        new_link({"slug": "open", "destination": "https://{sub1}/landing"})


def test_a_link_saved_before_the_rule_is_served_disabled():
    from tracker.links import Link, servable

    old = Link(slug="old", destination="https://{sub1}/landing")
    assert not servable(old.to_json()).active  # never redirected by the edge
    fine = Link(slug="fine", destination="https://shop.example/{sub1}")
    assert servable(fine.to_json()).active
