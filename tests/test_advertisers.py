"""Advertiser definitions: validation of the browser-conversion settings."""

from __future__ import annotations

import pytest

from tracker.advertisers import Advertiser, AdvertiserError, apply_changes, new_advertiser


def test_new_advertiser_defaults_allow_any_origin_and_click_id_param():
    adv = new_advertiser({"id": "shop"})
    assert (adv.allowed_origins, adv.click_param, adv.status) == ([], "click_id", "active")
    assert Advertiser.from_json(adv.to_json()) == adv


def test_an_old_record_without_the_new_fields_still_loads():
    adv = Advertiser.from_json(
        b'{"id": "shop", "token": "x" , "status": "active", "created_at": 1}'
    )
    assert adv.allowed_origins == [] and adv.click_param == "click_id"


def test_allowed_origins_are_normalized_and_deduplicated():
    adv = new_advertiser(
        {"id": "shop", "allowed_origins": ["https://Shop.example/", "https://shop.example:443"]}
    )
    assert adv.allowed_origins == ["https://shop.example"]


@pytest.mark.parametrize(
    "change",
    [
        {"allowed_origins": "https://shop.example"},
        {"allowed_origins": ["https://shop.example/path"]},
        {"allowed_origins": [1]},
        {"allowed_origins": [f"https://s{i}.example" for i in range(51)]},
        {"click_param": ""},
        {"click_param": "a b"},
        {"status": "gone"},
        {"token": "too-short"},  # a token may be set (or rotated), but must be long
        {"id": "other"},
    ],
)
def test_bad_changes_are_refused(change):
    with pytest.raises(AdvertiserError):
        apply_changes(new_advertiser({"id": "shop"}), change)


def test_changes_keep_the_rest():
    adv = new_advertiser({"id": "shop"})
    changed = apply_changes(adv, {"click_param": "ref", "status": "disabled"})
    assert (changed.click_param, changed.status, changed.token) == ("ref", "disabled", adv.token)
    assert adv.click_param == "click_id"  # a copy


def test_patch_rotates_or_sets_the_token():
    from tracker.advertisers import AdvertiserError, apply_changes, new_advertiser

    adv = new_advertiser({"id": "shop", "token": "t" * 20})
    rotated = apply_changes(adv, {"rotate_token": True})
    assert rotated.token != adv.token and len(rotated.token) >= 16
    assert apply_changes(adv, {"token": "u" * 20, "status": "disabled"}).token == "u" * 20
    for bad in (
        {"token": "short"},
        {"rotate_token": "yes"},
        {"rotate_token": True, "token": "v" * 20},
    ):
        with pytest.raises(AdvertiserError):
            apply_changes(adv, bad)
    with pytest.raises(AdvertiserError):
        new_advertiser({"id": "x", "rotate_token": True})  # only a change rotates
