"""The first-party tag's file, its caching rules and its script tags."""

from __future__ import annotations

import gzip

from tracker.edge.tag import HOUR, YEAR, cache_control, snippets, tag


def test_the_tag_is_small_and_its_version_is_its_hash():
    t = tag()
    assert len(t.body) < 6 * 1024 and len(t.gzipped) < 2 * 1024
    assert gzip.decompress(t.gzipped) == t.body
    assert len(t.version) == 12 and t.etag == f'"{t.version}"'
    assert b"import " not in t.body and b"require(" not in t.body  # no dependencies


def test_a_versioned_url_is_cached_for_a_year_a_plain_one_for_an_hour():
    version = tag().version
    assert cache_control(version, version) == f"public, max-age={YEAR}, immutable"
    assert cache_control("0" * 12, version) == f"public, max-age={HOUR}"
    assert cache_control(None, version) == f"public, max-age={HOUR}"


def test_snippets_name_the_advertiser_the_version_and_a_custom_parameter():
    plain = snippets("https://track.example", "shop", "click_id")
    src = f'src="https://track.example/t.js?v={tag().version}"'
    assert src in plain["every_page"] and 'data-advertiser="shop"' in plain["every_page"]
    assert "data-param" not in plain["every_page"]
    assert 'data-txid="ORDER_ID"' in plain["thank_you_page"]
    assert "data-lookback-days" not in plain["every_page"]
    custom = snippets("https://track.example", "shop", "ref", lookback_days=90)
    assert 'data-param="ref" data-lookback-days="90"' in custom["every_page"]
