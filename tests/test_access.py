"""API keys and roles as pure logic: key validation, verification, revocation, scopes and
the route policy (tests/system/test_access.py proves them against a running service)."""

from __future__ import annotations

import pytest

from tracker import access
from tracker.access import KeyError_, Role
from tracker.edge.access import allowed


def test_a_key_is_random_shown_once_and_stored_hashed():
    key, token = access.new_key({"role": "affiliate", "subject": "aff-1", "campaigns": ["c"]})
    other, other_token = access.new_key({"role": "affiliate", "subject": "aff-1"})
    assert token != other_token and key.id != other.id
    key_id, secret = access.split_token(token)
    assert key_id == key.id
    assert secret not in key.to_json().decode() and token not in key.to_json().decode()
    assert "secret_sha256" not in key.public()
    who = access.verify(key, secret)
    assert who == access.Principal(Role.AFFILIATE, "aff-1", key.id, ("c",))
    assert access.verify(key, other_token.rsplit("_", 1)[1]) is None
    assert access.verify(access.revoked(key), secret) is None


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        ({"role": "root"}, "role must be"),
        ({"role": "affiliate"}, "needs the affiliate id"),
        ({"role": "analyst", "subject": "x"}, "has no subject"),
        ({"role": "advertiser", "subject": "a b"}, "subject must be"),
        ({"role": "advertiser", "subject": "a", "campaigns": ["c"]}, "only an affiliate"),
        ({"role": "affiliate", "subject": "a", "campaigns": "c"}, "list of campaign ids"),
        ({"role": "admin", "extra": 1}, "unknown field"),
        ([], "JSON object"),
    ],
)
def test_invalid_keys_are_refused(data, reason):
    with pytest.raises(KeyError_, match=reason):
        access.new_key(data)


def test_malformed_tokens_are_not_keys():
    for token in ("", "trk_", "trk_zz_abc", "Bearer x", "trk_0123456789abcdef_short"):
        assert access.split_token(token) is None


def test_scopes():
    assert access.Principal(Role.ADMIN).scope() == {}
    assert access.Principal(Role.ANALYST).scope() == {}
    assert access.Principal(Role.ADVERTISER, "adv").scope() == {"advertiser": ("adv",)}
    assert access.Principal(Role.AFFILIATE, "aff").scope() == {"affiliate": ("aff",)}


def test_routes_not_listed_are_admin_only():
    for role in Role:
        assert allowed("GET", "/api/reports", role)
        assert allowed("GET", "/api/links", role)
        assert allowed("POST", "/api/links", role) == (role in (Role.ADMIN, Role.AFFILIATE))
        assert allowed("PATCH", "/api/links/{slug}", role) == (role == Role.ADMIN)
        assert allowed("GET", "/api/keys", role) == (role == Role.ADMIN)
        assert allowed("GET", "/api/audit", role) == (role == Role.ADMIN)
        assert allowed("GET", "/api/advertisers", role) == (role == Role.ADMIN)
        assert allowed("GET", "/api/some-new-route", role) == (role == Role.ADMIN)


def test_an_affiliate_reads_only_its_own_programme_records():
    own = {"id": "aff-1"}
    for path in (
        "/api/affiliates/{id}",
        "/api/affiliates/{id}/balance",
        "/api/affiliates/{id}/commissions",
        "/api/affiliates/{id}/payouts",
    ):
        assert allowed("GET", path, Role.AFFILIATE, own, "aff-1")
        assert not allowed("GET", path, Role.AFFILIATE, {"id": "aff-2"}, "aff-1")
        assert not allowed("GET", path, Role.ADVERTISER, own, "aff-1")
        assert allowed("GET", path, Role.ANALYST, {"id": "aff-2"})
    for path in ("/api/affiliates", "/api/campaigns", "/api/payouts"):
        assert not allowed("GET", path, Role.AFFILIATE, {}, "aff-1")
        assert allowed("GET", path, Role.ANALYST)
    assert not allowed("PATCH", "/api/affiliates/{id}", Role.AFFILIATE, own, "aff-1")
    assert not allowed("POST", "/api/payouts/runs", Role.ANALYST)


@pytest.mark.parametrize(
    ("header", "token"),
    [
        ("Bearer secret-token", "secret-token"),
        ("bearer   secret-token  ", "secret-token"),
        ("Basic secret-token", None),
        ("Bearer ", None),
        ("", None),
        (None, None),
    ],
)
def test_bearer_token(header, token):
    assert access.bearer_token(header) == token


def test_one_admin_check_for_the_edge_and_the_query_endpoint():
    admin = "admin-token-0123456789"
    assert access.is_admin(f"Bearer {admin}", admin)
    assert not access.is_admin(f"Bearer {admin}x", admin)
    assert not access.is_admin(f"Token {admin}", admin)
    assert not access.is_admin("Bearer ", "")  # no token is never the admin
