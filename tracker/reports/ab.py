"""`tracker report ab`: an A/B test's variants side by side. Pure except the queries'
text: the caller runs them.

Per variant (of each split rule of the link): clicks, conversions (clicks' conversions,
each counted once, by its first report), conversion rate with a 95% Wilson interval,
and the probability that the variant has the highest rate, from each variant's Beta
posterior (uniform prior; seeded Monte Carlo, so the same data gives the same answer).
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

from tracker.links import SLUG_RE

Z95 = 1.959963984540054
DRAWS = 20_000


class AbError(ValueError):
    """The report cannot be asked that way (the message says why)."""


def queries(db: str, slug: str) -> tuple[str, str]:
    """(clicks per rule and variant, conversions per rule and variant)."""
    if not SLUG_RE.match(slug):
        raise AbError("link must be a slug")
    clicks = (
        f"SELECT route_rule, variant, count() AS clicks FROM {db}.clicks "
        f"WHERE link_slug = '{slug}' AND variant != '' GROUP BY route_rule, variant"
    )
    conversions = (
        f"SELECT k.route_rule AS route_rule, k.variant AS variant, "
        f"uniqExact(v.conversion_id) AS conversions FROM {db}.conversions AS v "
        f"INNER JOIN (SELECT click_id, route_rule, variant FROM {db}.clicks "
        f"WHERE link_slug = '{slug}' AND variant != '') AS k ON v.click_id = k.click_id "
        f"WHERE v.previous_status = '' GROUP BY route_rule, variant"
    )
    return clicks, conversions


@dataclass(frozen=True, slots=True)
class VariantResult:
    rule: str
    variant: str
    clicks: int
    conversions: int
    cvr: float
    low: float
    high: float
    p_best: float


def wilson(successes: int, trials: int, z: float = Z95) -> tuple[float, float]:
    if trials == 0:
        return 0.0, 1.0
    p = successes / trials
    denominator = 1 + z * z / trials
    centre = (p + z * z / (2 * trials)) / denominator
    margin = z * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / denominator
    return max(0.0, centre - margin), min(1.0, centre + margin)


def p_best(counts: list[tuple[int, int]], draws: int = DRAWS, seed: int = 0) -> list[float]:
    """P(each arm's rate is the highest), (conversions, clicks) per arm, Beta(1+c, 1+n-c)."""
    if not counts:
        return []
    rng = random.Random(seed)
    wins = [0] * len(counts)
    params = [(1 + c, 1 + max(n - c, 0)) for c, n in counts]
    for _ in range(draws):
        samples = [rng.betavariate(a, b) for a, b in params]
        wins[samples.index(max(samples))] += 1
    return [w / draws for w in wins]


def assemble(click_rows: list[list], conversion_rows: list[list]) -> list[VariantResult]:
    clicks = {(r[0], r[1]): int(r[2]) for r in click_rows}
    conversions = {(r[0], r[1]): int(r[2]) for r in conversion_rows}
    out: list[VariantResult] = []
    for rule in sorted({rule for rule, _ in clicks}):
        arms = sorted(variant for r, variant in clicks if r == rule)
        counts = [
            (min(conversions.get((rule, a), 0), clicks[(rule, a)]), clicks[(rule, a)]) for a in arms
        ]
        best = p_best(counts)
        for arm, (converted, n), chance in zip(arms, counts, best, strict=True):
            low, high = wilson(converted, n)
            out.append(
                VariantResult(
                    rule, arm, n, converted, converted / n if n else 0.0, low, high, chance
                )
            )
    return out
