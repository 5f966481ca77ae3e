"""Pure rules of conversions: parameters, aliases, amounts, lifecycle, signatures."""

from __future__ import annotations

import random
from decimal import Decimal

import pytest

from attribution.money import to_minor
from tracker import signing
from tracker.edge import conversion_input
from tracker.edge.conversion_input import Rejected

CLICK = "01900000-0000-7000-8000-000000000001"


def parse(**params):
    return conversion_input.parse(
        params, default_currency="USD", max_amount=10**9, require_click=True
    )


def test_aliases_and_defaults():
    conv = parse(adv="shop", cid=CLICK.upper(), order_id="o-1", amount="12.5")
    assert (conv.advertiser, conv.click_id, conv.txid) == ("shop", CLICK, "o-1")
    assert conv.amount == Decimal("12.5") and conv.currency == "USD"
    assert conv.payout is None


def test_payout_is_not_the_amount():
    """`payout` is the advertiser's word on the affiliate's earnings, not the sale value."""
    conv = parse(adv="shop", cid=CLICK, order_id="o-1", amount="100", payout="12.5")
    assert (conv.amount, conv.payout) == (Decimal("100"), Decimal("12.5"))
    conv = parse(adv="shop", cid=CLICK, order_id="o-1", payout="12.5")
    assert (conv.amount, conv.payout) == (None, Decimal("12.5"))
    with pytest.raises(conversion_input.Rejected):
        parse(adv="shop", cid=CLICK, order_id="o-1", payout="-1")
    assert (conv.status, conv.event) == ("pending", "conversion")
    conv = parse(
        advertiser_id="shop",
        subid=CLICK,
        transaction_id="t",
        revenue="1",
        currency="jpy",
        status="APPROVED",
        event="Install",
    )
    assert (conv.currency, conv.status, conv.event) == ("JPY", "approved", "install")
    assert parse(advertiser="shop", click_id=CLICK, txid="t").amount is None


@pytest.mark.parametrize(
    ("amount", "currency", "reason"),
    [
        ("-0.01", "USD", "negative_amount"),
        ("nan", "USD", "invalid_amount"),
        ("sNaN", "USD", "invalid_amount"),
        ("1e9999", "USD", "invalid_amount"),
        ("1E+2", "USD", "invalid_amount"),
        ("1_000", "USD", "invalid_amount"),
        ("\u0661\u0662\u0663", "USD", "invalid_amount"),  # Arabic-Indic digits
        ("\uff11\uff12", "USD", "invalid_amount"),  # full-width digits
        ("+12", "USD", "invalid_amount"),
        ("1.2.3", "USD", "invalid_amount"),
        ("1.", "USD", "invalid_amount"),
        ("Infinity", "USD", "invalid_amount"),
        ("abc", "USD", "invalid_amount"),
        ("1" * 41, "USD", "invalid_amount"),
        ("1000000000.01", "USD", "amount_too_large"),
        ("1.5", "JPY", "too_many_decimals"),
        ("1.0001", "KWD", "too_many_decimals"),
        ("5", "EURO", "unknown_currency"),
    ],
)
def test_bad_amounts(amount, currency, reason):
    with pytest.raises(Rejected) as exc:
        parse(advertiser="shop", click_id=CLICK, txid="t", amount=amount, currency=currency)
    assert (exc.value.status, exc.value.reason) == (400, reason)


def test_decimals_read_off_the_text_agree_with_minor_units():
    """The refusal of too many decimals, read off the text, is exactly `to_minor`'s."""
    rng = random.Random(7)
    for _ in range(5000):
        whole = str(rng.randrange(10 ** rng.randrange(1, 8)))
        fraction = "".join(rng.choice("0000123456789") for _ in range(rng.randrange(0, 7)))
        text = f"{whole}.{fraction}" if fraction else whole
        for currency in ("JPY", "EUR", "KWD", "CLF"):
            try:
                to_minor(Decimal(text), currency)
                expected = True
            except ValueError:
                expected = False
            assert conversion_input.in_minor_units(text, currency) is expected, (text, currency)


def test_good_amounts_stay_exact():
    assert parse(advertiser="shop", click_id=CLICK, txid="t", amount="0.1").amount == (
        Decimal("0.1")
    )
    assert parse(
        advertiser="shop", click_id=CLICK, txid="t", amount="1.234", currency="KWD"
    ).amount == Decimal("1.234")


@pytest.mark.parametrize(
    ("params", "reason"),
    [
        ({"click_id": CLICK, "txid": "t"}, "missing_advertiser"),
        ({"advertiser": "a b", "click_id": CLICK, "txid": "t"}, "invalid_advertiser"),
        ({"advertiser": "s", "click_id": CLICK}, "missing_txid"),
        ({"advertiser": "s", "click_id": CLICK, "txid": "a b"}, "invalid_txid"),
        ({"advertiser": "s", "click_id": CLICK, "txid": "x" * 129}, "invalid_txid"),
        ({"advertiser": "s", "txid": "t"}, "missing_click_id"),
        ({"advertiser": "s", "click_id": "123", "txid": "t"}, "invalid_click_id"),
    ],
)
def test_bad_identities(params, reason):
    with pytest.raises(Rejected) as exc:
        parse(**params)
    assert exc.value.reason == reason


def test_lifecycle():
    t = conversion_input.transition
    assert t(None, "pending") == "new" and t(None, "approved") == "new"
    for status in ("rejected", "reversed"):
        with pytest.raises(Rejected, match="unknown_transaction"):
            t(None, status)
    assert t("pending", "pending") == "duplicate"
    assert t("pending", "approved") == "change" and t("pending", "rejected") == "change"
    assert t("approved", "reversed") == "change"
    for current, new in [
        ("approved", "pending"),
        ("rejected", "approved"),
        ("reversed", "approved"),
        ("pending", "reversed"),
        ("approved", "rejected"),
    ]:
        with pytest.raises(Rejected) as exc:
            t(current, new)
        assert (exc.value.status, exc.value.reason) == (409, "illegal_transition")


def test_signatures():
    args = ("1700000000", "POST", "/postback", "b=2&a=1", b'{"x":1}')
    good = signing.sign("secret-token-0123456", *args)
    assert good.startswith("sha256=") and len(good) == 7 + 64
    # parameter order does not matter; everything else does
    assert (
        signing.sign(
            "secret-token-0123456", "1700000000", "POST", "/postback", "a=1&b=2", b'{"x":1}'
        )
        == good
    )
    verify = signing.verify
    assert verify("secret-token-0123456", good, *args, now=1700000100, window=300) is None
    assert (
        verify("secret-token-0123456", good, *args, now=1700000400, window=300) == "stale_signature"
    )
    assert (
        verify("other-token-00000000", good, *args, now=1700000000, window=300) == "bad_signature"
    )
    tampered = (*args[:4], b'{"x":2}')
    assert (
        verify("secret-token-0123456", good, *tampered, now=1700000000, window=300)
        == "bad_signature"
    )
    assert (
        verify("secret-token-0123456", good, "soon", *args[1:], now=1700000000, window=300)
        == "bad_timestamp"
    )
