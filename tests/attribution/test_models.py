"""Attribution models, paths, money splitting and currency helpers (pure functions)."""

from __future__ import annotations

import math
import random
from decimal import Decimal

import pytest

from attribution import MODELS, Credit, Touch, attribute, build_path, split_amount
from attribution.models import DEFAULT_HALF_LIFE_MS, DEFAULT_LOOKBACK_MS
from attribution.money import CURRENCY_EXPONENTS, from_minor, is_currency, to_minor

DAY = 86_400_000
CONV = 1_700_000_000_000  # conversion time used by most tests


def uid(n: int) -> str:
    return f"00000000-0000-0000-0000-{n:012x}"


def touches_before(*days: float) -> list[Touch]:
    """One touch per entry, `days` before CONV, click ids in the same order."""
    return [Touch(uid(i), CONV - int(d * DAY), f"camp-{i}") for i, d in enumerate(days, 1)]


def weights(model: str, touches: list[Touch], **kwargs) -> list[float]:
    """Weight per path position (0 for touches the model does not credit)."""
    path = build_path(
        touches,
        CONV,
        lookback_ms=kwargs.get("lookback", DEFAULT_LOOKBACK_MS),
        named_click_id=kwargs.get("named_click_id"),
    )
    out = [0.0] * len(path)
    for credit in attribute(touches, CONV, model, **kwargs):
        assert credit.touch is path[credit.position - 1]
        out[credit.position - 1] = credit.weight
    return out


def test_defaults_and_registry():
    assert DEFAULT_LOOKBACK_MS == 30 * DAY and DEFAULT_HALF_LIFE_MS == 7 * DAY
    assert list(MODELS) == ["first_click", "last_click", "linear", "time_decay", "position_based"]


@pytest.mark.parametrize("model", list(MODELS))
def test_single_touch_gets_everything(model):
    touch = Touch(uid(1), CONV - 3 * DAY, "c", "a")
    assert attribute([touch], CONV, model) == [Credit(touch, 1, 1.0)]


def test_two_touches():
    path = touches_before(14, 7)
    assert weights("first_click", path) == [1.0, 0.0]
    assert weights("last_click", path) == [0.0, 1.0]
    assert weights("linear", path) == [0.5, 0.5]
    assert weights("position_based", path) == [0.5, 0.5]
    assert weights("time_decay", path) == pytest.approx([1 / 3, 2 / 3], abs=1e-15)


def test_five_touches():
    path = touches_before(20, 15, 10, 5, 1)
    assert weights("first_click", path) == [1.0, 0, 0, 0, 0]
    assert weights("last_click", path) == [0, 0, 0, 0, 1.0]
    assert weights("linear", path) == pytest.approx([0.2] * 5, abs=1e-15)
    assert weights("position_based", path) == pytest.approx(
        [0.4, 0.2 / 3, 0.2 / 3, 0.2 / 3, 0.4], abs=1e-15
    )
    raw = [2 ** (-d / 7) for d in (20, 15, 10, 5, 1)]
    assert weights("time_decay", path) == pytest.approx([r / sum(raw) for r in raw], abs=1e-15)


def test_only_credited_touches_are_returned_with_their_path_position():
    path = touches_before(20, 15, 10)
    assert [(c.position, c.touch.click_id) for c in attribute(path, CONV, "last_click")] == [
        (3, uid(3))
    ]
    assert [c.position for c in attribute(path, CONV, "linear")] == [1, 2, 3]


def test_time_decay_exact_values_and_half_life():
    path = touches_before(14, 7)  # 2 and 1 half-lives before the conversion
    assert weights("time_decay", path) == pytest.approx([1 / 3, 2 / 3], abs=1e-15)
    # One day half-life: 7 days apart means 2^-7 relative weight.
    assert weights("time_decay", path, half_life=DAY) == pytest.approx(
        [1 / 129, 128 / 129], abs=1e-15
    )
    # Touches at the same time weigh the same whatever the half-life.
    assert weights("time_decay", touches_before(3, 3, 3)) == pytest.approx([1 / 3] * 3)


def test_time_decay_far_apart_touches_do_not_divide_by_zero():
    # 2^-(30 days / 1 ms) underflows to 0: the old touch simply gets no credit.
    credits = attribute(touches_before(29, 0), CONV, "time_decay", half_life=1)
    assert [(c.touch.click_id, c.weight) for c in credits] == [(uid(2), 1.0)]


def test_equal_timestamps_are_ordered_by_click_id():
    t = CONV - DAY
    touches = [
        Touch(uid(3), t, "c3"),
        Touch(uid(1), t, "c1"),
        Touch(uid(2), t - 1, "c2"),
        Touch(uid(0xA), t, "ca"),
    ]
    path = build_path(touches, CONV, lookback_ms=DEFAULT_LOOKBACK_MS)
    assert [p.click_id for p in path] == [uid(2), uid(1), uid(3), uid(0xA)]
    assert attribute(touches, CONV, "first_click")[0].touch.click_id == uid(2)
    assert attribute(touches, CONV, "last_click")[0].touch.click_id == uid(0xA)
    # Input order does not matter.
    assert build_path(touches[::-1], CONV, lookback_ms=DEFAULT_LOOKBACK_MS) == path


def test_touches_outside_the_window_and_after_the_conversion_are_dropped():
    lookback = DEFAULT_LOOKBACK_MS
    touches = [
        Touch(uid(1), CONV - lookback - 1, "too-old"),
        Touch(uid(2), CONV - lookback, "oldest-kept"),  # bounds are inclusive
        Touch(uid(3), CONV - DAY, "mid"),
        Touch(uid(4), CONV, "at-conversion"),
        Touch(uid(5), CONV + 1, "after"),
    ]
    path = build_path(touches, CONV, lookback_ms=lookback)
    assert [t.campaign_id for t in path] == ["oldest-kept", "mid", "at-conversion"]
    assert [c.touch.campaign_id for c in attribute(touches, CONV, "linear")] == [
        "oldest-kept",
        "mid",
        "at-conversion",
    ]
    assert attribute(touches[:1] + touches[-1:], CONV, "linear") == []
    assert build_path(touches, CONV, lookback_ms=DAY) == touches[2:4]


def test_named_click_in_the_middle_ends_the_path():
    touches = touches_before(9, 6, 3, 1)
    named = uid(2)
    path = build_path(touches, CONV, lookback_ms=DEFAULT_LOOKBACK_MS, named_click_id=named)
    assert [t.click_id for t in path] == [uid(1), uid(2)]
    assert attribute(touches, CONV, "last_click", named_click_id=named)[0].touch.click_id == named
    assert weights("linear", touches, named_click_id=named) == [0.5, 0.5]
    # Ties in time: the touches ordered after the named click (by click id) are dropped too.
    tied = [Touch(uid(i), CONV - DAY) for i in (1, 2, 3)]
    assert build_path(tied, CONV, lookback_ms=DAY, named_click_id=uid(2)) == tied[:2]


def test_named_click_outside_the_window_or_unknown_gives_no_credit():
    touches = touches_before(40, 6, 3)
    for named in (uid(1), uid(99)):
        assert (
            build_path(touches, CONV, lookback_ms=DEFAULT_LOOKBACK_MS, named_click_id=named) == []
        )
        assert attribute(touches, CONV, "linear", named_click_id=named) == []
    after = touches + [Touch(uid(7), CONV + 5)]
    assert attribute(after, CONV, "linear", named_click_id=uid(7)) == []


def test_empty_path_and_unknown_model():
    assert attribute([], CONV, "linear") == []
    with pytest.raises(ValueError, match="first_click.*position_based"):
        attribute(touches_before(1), CONV, "u_shaped")
    with pytest.raises(ValueError, match="unknown attribution model"):
        attribute([], CONV, "nope")  # refused even when there is nothing to credit
    with pytest.raises(ValueError, match="half_life"):
        attribute(touches_before(1), CONV, "time_decay", half_life=0)


def test_a_new_model_is_one_function_and_one_registry_line(monkeypatch):
    def second_click(path, converted_at, half_life):
        return [1.0 if i == min(1, len(path) - 1) else 0.0 for i in range(len(path))]

    monkeypatch.setitem(MODELS, "second_click", second_click)
    [credit] = attribute(touches_before(3, 2, 1), CONV, "second_click")
    assert (credit.position, credit.weight) == (2, 1.0)


@pytest.mark.parametrize("model", list(MODELS))
def test_weights_sum_to_exactly_one_on_random_paths(model):
    rng = random.Random(f"sum-{model}")
    for _ in range(10_000):
        n = rng.randint(1, 40)
        touches = [Touch(uid(i), CONV - rng.randint(0, DEFAULT_LOOKBACK_MS)) for i in range(n)]
        half_life = rng.choice([DEFAULT_HALF_LIFE_MS, DAY, rng.randint(1, 60 * DAY)])
        credits = attribute(touches, CONV, model, half_life=half_life)
        assert credits, touches
        credited = [c.weight for c in credits]
        assert math.fsum(credited) == 1.0, (model, credited)
        assert all(0 < w <= 1 for w in credited)
        positions = [c.position for c in credits]
        assert positions == sorted(positions) and positions[-1] <= n


# -- split_amount ------------------------------------------------------------------------


def test_split_preserves_the_sum_on_random_inputs():
    rng = random.Random("split")
    for _ in range(5_000):
        n = rng.randint(1, 10)
        raw = [rng.random() for _ in range(n)]
        weights_ = [w / sum(raw) for w in raw]
        amount = rng.choice([0, 1, 7, rng.randint(-(10**6), 10**6), rng.randint(0, 10**18)])
        parts = split_amount(amount, weights_)
        assert sum(parts) == amount and len(parts) == n
        # Largest remainder: every part is within one unit of its exact share.
        assert all(
            abs(p - amount * w) < 1 + 1e-6 * abs(amount)
            for p, w in zip(parts, weights_, strict=True)
        )


def test_split_largest_remainder():
    assert split_amount(100, [0.5, 0.3, 0.2]) == [50, 30, 20]
    assert split_amount(10, [0.55, 0.25, 0.2]) == [6, 2, 2]  # 5.5, 2.5, 2.0: one left, to .5s
    assert split_amount(7, [0.16, 0.5, 0.34]) == [1, 4, 2]  # 1.12, 3.5, 2.38
    assert split_amount(10_000, [0.4, 0.2, 0.4]) == [4000, 2000, 4000]
    assert split_amount(1_000, [2 / 3, 1 / 3]) == [667, 333]


def test_split_ties_go_to_the_earlier_position():
    assert split_amount(100, [1 / 3] * 3) == [34, 33, 33]
    assert split_amount(2, [1 / 3] * 3) == [1, 1, 0]
    assert split_amount(1, [0.25] * 4) == [1, 0, 0, 0]
    assert split_amount(3, [0.25] * 4) == [1, 1, 1, 0]


def test_one_cent_over_three_touches():
    assert split_amount(1, [1 / 3, 1 / 3, 1 / 3]) == [1, 0, 0]
    credits = attribute(touches_before(3, 2, 1), CONV, "linear")
    assert split_amount(1, [c.weight for c in credits]) == [1, 0, 0]


def test_split_negative_and_zero_amounts():
    assert split_amount(-100, [1 / 3] * 3) == [-34, -33, -33]  # a refund mirrors the sale
    assert split_amount(-1, [0.5, 0.5]) == [-1, 0]
    assert split_amount(0, [0.2, 0.8]) == [0, 0]
    assert split_amount(5, [1.0]) == [5]
    assert split_amount(5, [0.0, 1.0, 0.0]) == [0, 5, 0]
    assert split_amount(0, []) == [] and split_amount(9, []) == []


def test_split_is_exact_beyond_float_precision():
    amount = 10**18 + 1
    assert split_amount(amount, [0.5, 0.5]) == [5 * 10**17 + 1, 5 * 10**17]


def test_split_rejects_bad_weights():
    for bad in ([-0.5, 1.5], [0.0, 0.0], [math.nan, 1.0], [math.inf]):
        with pytest.raises(ValueError):
            split_amount(10, bad)


# -- money ----------------------------------------------------------------------------------


def test_currency_table():
    assert len(CURRENCY_EXPONENTS) >= 150
    for code in ("USD", "EUR", "GBP", "CHF", "CNY", "INR", "BRL", "MXN"):
        assert CURRENCY_EXPONENTS[code] == 2
    for code in ("JPY", "KRW", "VND", "CLP", "ISK", "UGX", "XAF", "XOF", "PYG", "XPF"):
        assert CURRENCY_EXPONENTS[code] == 0
    for code in ("BHD", "IQD", "JOD", "KWD", "LYD", "OMR", "TND"):
        assert CURRENCY_EXPONENTS[code] == 3
    assert all(len(c) == 3 and c.isalpha() and c.isupper() for c in CURRENCY_EXPONENTS)


def test_is_currency():
    assert is_currency("EUR") and is_currency("JPY")
    for bad in ("eur", "EURO", "EU", "XXQ", "", " EUR", None, 978):
        assert not is_currency(bad)


def test_to_minor():
    assert to_minor(Decimal("100.00"), "EUR") == 10_000
    assert to_minor(Decimal("0.1"), "USD") == 10
    assert to_minor(Decimal("100.000"), "USD") == 10_000  # trailing zeros are fine
    assert to_minor(Decimal("5"), "JPY") == 5
    assert to_minor(Decimal("1E+3"), "JPY") == 1000
    assert to_minor(Decimal("1.234"), "KWD") == 1234
    assert to_minor(Decimal("-12.34"), "EUR") == -1234
    assert to_minor(Decimal("0"), "EUR") == 0
    assert to_minor(7, "EUR") == 700
    assert to_minor(Decimal("123456789012345678901234567890.12"), "USD") == (
        12345678901234567890123456789012
    )


def test_to_minor_refuses_extra_decimals_floats_and_unknown_codes():
    for amount, currency in [
        ("1.5", "JPY"),
        ("0.001", "EUR"),
        ("1.0001", "KWD"),
        ("NaN", "EUR"),
        ("Infinity", "EUR"),
    ]:
        with pytest.raises(ValueError):
            to_minor(Decimal(amount), currency)
    with pytest.raises(ValueError):
        to_minor(Decimal("1"), "EURO")
    with pytest.raises(TypeError):
        to_minor(1.5, "EUR")  # type: ignore[arg-type]


def test_from_minor():
    assert from_minor(10_050, "EUR") == Decimal("100.50")
    assert str(from_minor(10_050, "EUR")) == "100.50"
    assert str(from_minor(-5, "KWD")) == "-0.005"
    assert str(from_minor(5, "JPY")) == "5"
    assert str(from_minor(0, "USD")) == "0.00"
    for minor in (0, 1, -1, 99, 10**20 + 7):
        for code in ("EUR", "JPY", "KWD", "CLF"):
            assert to_minor(from_minor(minor, code), code) == minor
    with pytest.raises(TypeError):
        from_minor(1.0, "EUR")  # type: ignore[arg-type]


def test_credited_amounts_add_up_in_minor_units():
    credits = attribute(touches_before(10, 5, 1), CONV, "time_decay")
    minor = to_minor(Decimal("99.99"), "EUR")
    parts = split_amount(minor, [c.weight for c in credits])
    assert sum(from_minor(p, "EUR") for p in parts) == Decimal("99.99")
