"""Attribution models as pure functions over a visitor's path of clicks (touches).

A model maps a time-ordered path to one weight per touch. `attribute` builds the path
(lookback window, named click), applies a model from `MODELS` and returns the touches
that got credit. `split_amount` turns weights into integer money parts that add up.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from fractions import Fraction

DAY_MS = 86_400_000
DEFAULT_LOOKBACK_MS = 30 * DAY_MS
DEFAULT_HALF_LIFE_MS = 7 * DAY_MS
# Conversion sources whose click_id is the click the conversion names (the path ends
# there): a postback's, and the first-party tag's (the click id kept on the merchant's
# site). A pixel's click_id is only the visitor's last click.
NAMED_CLICK_SOURCES = ("postback", "browser")


@dataclass(frozen=True, slots=True)
class Touch:
    click_id: str  # canonical (lowercase) UUID string: ties in time are ordered by it
    ts: int  # Unix ms, UTC
    campaign_id: str = ""
    affiliate_id: str = ""


@dataclass(frozen=True, slots=True)
class Credit:
    touch: Touch
    position: int  # 1-based position in the path
    weight: float


# (path ordered by time, conversion time in ms, half-life in ms) -> one weight per touch
Model = Callable[[Sequence[Touch], int, int], list[float]]


def first_click(path: Sequence[Touch], converted_at: int, half_life: int) -> list[float]:
    return [1.0] + [0.0] * (len(path) - 1)


def last_click(path: Sequence[Touch], converted_at: int, half_life: int) -> list[float]:
    return [0.0] * (len(path) - 1) + [1.0]


def linear(path: Sequence[Touch], converted_at: int, half_life: int) -> list[float]:
    return [1.0 / len(path)] * len(path)


def time_decay(path: Sequence[Touch], converted_at: int, half_life: int) -> list[float]:
    # 2^(-(t_conv - t_i)/h) is proportional to 2^(-(t_last - t_i)/h); measuring from the
    # newest touch keeps its term at 1, so the sum cannot underflow to 0 for long paths.
    newest = path[-1].ts
    raw = [2.0 ** (-(newest - touch.ts) / half_life) for touch in path]
    total = math.fsum(raw)
    return [value / total for value in raw]


def position_based(path: Sequence[Touch], converted_at: int, half_life: int) -> list[float]:
    n = len(path)
    if n <= 2:
        return [1.0 / n] * n
    return [0.4] + [0.2 / (n - 2)] * (n - 2) + [0.4]


# The one list of model names (config and SQL validate against it): a new model is a
# function above and a line here.
MODELS: dict[str, Model] = {
    "first_click": first_click,
    "last_click": last_click,
    "linear": linear,
    "time_decay": time_decay,
    "position_based": position_based,
}


def build_path(
    touches: Sequence[Touch],
    converted_at: int,
    *,
    lookback_ms: int,
    named_click_id: str | None = None,
) -> list[Touch]:
    """The touches in [converted_at - lookback_ms, converted_at], ordered by (ts, click_id);
    with a named click, the path ends at it ([] when it is not in the window)."""
    start = converted_at - lookback_ms
    path = sorted(
        (touch for touch in touches if start <= touch.ts <= converted_at),
        key=lambda touch: (touch.ts, touch.click_id),
    )
    if named_click_id is None:
        return path
    for index, touch in enumerate(path):
        if touch.click_id == named_click_id:
            return path[: index + 1]
    return []


def attribute(
    touches: Sequence[Touch],
    converted_at: int,
    model: str,
    *,
    lookback: int = DEFAULT_LOOKBACK_MS,
    half_life: int = DEFAULT_HALF_LIFE_MS,
    named_click_id: str | None = None,
) -> list[Credit]:
    """The credited touches (weight > 0) of one conversion under one model; weights sum
    to exactly 1.0 (math.fsum). An empty path gets no credits."""
    weigh = MODELS.get(model)
    if weigh is None:
        raise ValueError(f"unknown attribution model {model!r} (known: {', '.join(MODELS)})")
    if half_life <= 0:
        raise ValueError("half_life must be > 0")
    path = build_path(touches, converted_at, lookback_ms=lookback, named_click_id=named_click_id)
    if not path:
        return []
    weights = _sum_to_one(weigh(path, converted_at, half_life))
    return [
        Credit(touch, position, weight)
        for position, (touch, weight) in enumerate(zip(path, weights, strict=True), 1)
        if weight > 0
    ]


def _sum_to_one(weights: list[float]) -> list[float]:
    """Move the rounding residue onto the largest weight (the first of equals), so that
    the credited weights of a conversion add up to exactly 1.0."""
    weights = list(weights)
    largest = max(range(len(weights)), key=weights.__getitem__)
    # Converges in one or two steps; a residue smaller than half an ulp of the largest
    # weight cannot move it by addition, so step to the neighbouring float instead.
    for _ in range(64):
        residue = 1.0 - math.fsum(weights)
        if residue == 0.0:
            return weights
        moved = weights[largest] + residue
        if moved == weights[largest]:
            moved = math.nextafter(weights[largest], math.copysign(math.inf, residue))
        weights[largest] = moved
    raise ArithmeticError(f"weights do not converge to a sum of 1: {weights!r}")


def split_amount(amount_minor: int, weights: Sequence[float]) -> list[int]:
    """Split an integer amount (minor units) by weights with the largest-remainder method.

    The parts add up to amount_minor exactly; leftover units go to the largest remainders,
    the earlier position first on ties. A negative amount (a refund) is split like its
    absolute value and negated, so a refund mirrors the original split. No weights, no
    parts.
    """
    if not weights:
        return []
    # Exact rational arithmetic: floats lose units beyond 2**53 and make ties fragile.
    if not all(math.isfinite(w) and w >= 0 for w in weights):
        raise ValueError(f"weights must be finite and >= 0: {list(weights)!r}")
    exact = [Fraction(w) for w in weights]
    total = sum(exact)
    if total == 0:
        raise ValueError("weights must not all be 0")
    sign, amount = (-1 if amount_minor < 0 else 1), abs(amount_minor)
    quotas = [amount * w / total for w in exact]
    parts = [math.floor(q) for q in quotas]
    leftover = amount - sum(parts)
    by_remainder = sorted(range(len(quotas)), key=lambda i: (-(quotas[i] - parts[i]), i))
    for i in by_remainder[:leftover]:
        parts[i] += 1
    return [sign * part for part in parts]
