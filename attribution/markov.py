"""Data-driven attribution: a first-order Markov model and each channel's removal effect.

Paths are the ordered channels (campaigns or affiliates) of visitors' clicks, each ending
in a conversion or in nothing (a visitor who did not convert). Every step of every path
is a transition START -> c1 -> ... -> cn -> CONVERSION | NULL; the transition
probabilities are the observed shares out of each state. The probability of converting
from START is what the model explains; removing a channel (its visitors go nowhere)
lowers it, and that drop, relative to the whole, is the channel's removal effect. The
conversions are shared out in proportion to the removal effects.

Pure functions: `paths_sql` (in sql.py style) fetches the paths, grouped, from ClickHouse;
everything here works on (channels, conversions, non-conversions) triples.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence

START = "(start)"
CONVERSION = "(conversion)"
NULL = "(null)"

Path = tuple[Sequence[str], float, float]  # channels, conversions, non-conversions


def transitions(paths: Iterable[Path]) -> dict[str, dict[str, float]]:
    """state -> {next state: weight}, from every path's steps, weighted by its counts."""
    counts: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    for channels, converted, lost in paths:
        if not channels or (converted <= 0 and lost <= 0):
            continue
        weight = converted + lost
        states = [START, *channels]
        for here, there in zip(states, states[1:], strict=False):
            counts[here][there] += weight
        if converted > 0:
            counts[states[-1]][CONVERSION] += converted
        if lost > 0:
            counts[states[-1]][NULL] += lost
    return {state: dict(out) for state, out in counts.items()}


def conversion_probability(graph: dict[str, dict[str, float]], removed: str | None = None) -> float:
    """The probability of reaching CONVERSION from START; a removed channel is a dead end.

    Solves x_s = sum_t P(s -> t) x_t with x_CONVERSION = 1, x_NULL = x_removed = 0
    (Gaussian elimination with partial pivoting over the transient states).
    """
    states = [s for s in graph if s != removed]
    index = {s: i for i, s in enumerate(states)}
    n = len(states)
    if START not in index:
        return 0.0
    matrix = [[0.0] * (n + 1) for _ in range(n)]
    for s, out in graph.items():
        if s == removed:
            continue
        row = matrix[index[s]]
        total = sum(out.values())
        row[index[s]] += 1.0
        for t, weight in out.items():
            p = weight / total
            if t == CONVERSION:
                row[n] += p
            elif t in index:
                row[index[t]] -= p
            # NULL, the removed channel, or a state with no way out: contributes nothing
    for col in range(n):
        pivot = max(range(col, n), key=lambda r: abs(matrix[r][col]))
        if abs(matrix[pivot][col]) < 1e-15:
            continue  # a state that cannot be left except into itself: never converts
        matrix[col], matrix[pivot] = matrix[pivot], matrix[col]
        lead = matrix[col][col]
        matrix[col] = [v / lead for v in matrix[col]]
        for r in range(n):
            if r != col and matrix[r][col]:
                factor = matrix[r][col]
                matrix[r] = [a - factor * b for a, b in zip(matrix[r], matrix[col], strict=True)]
    value = matrix[index[START]][n]
    return min(max(value, 0.0), 1.0)


def removal_effects(paths: Iterable[Path]) -> dict[str, float]:
    """channel -> removal effect, 1 - P(conversion without it) / P(conversion), in [0, 1]."""
    graph = transitions(paths)
    channels = sorted(s for s in graph if s != START)
    for out in graph.values():
        channels += [t for t in out if t not in (CONVERSION, NULL) and t not in graph]
    base = conversion_probability(graph)
    if base <= 0:
        return {c: 0.0 for c in sorted(set(channels))}
    return {
        c: max(0.0, 1.0 - conversion_probability(graph, removed=c) / base)
        for c in sorted(set(channels))
    }


def credits(paths: Sequence[Path]) -> dict[str, float]:
    """channel -> conversions credited (they sum to the paths' conversions)."""
    effects = removal_effects(paths)
    total_effect = sum(effects.values())
    conversions = sum(converted for _, converted, _ in paths)
    if total_effect <= 0:
        return {c: 0.0 for c in effects}
    return {c: conversions * e / total_effect for c, e in effects.items()}


def credits_by_currency(path_rows: Iterable[Sequence]) -> dict[tuple[str, str], float]:
    """(channel, currency) -> conversions credited, from `markov_paths_sql` rows
    (currency, channels, conversions, lost): one model per currency, each learning from
    that currency's converted paths and every lost path."""
    lost: list[Path] = [
        (channels, 0, n) for currency, channels, _, n in path_rows if currency == ""
    ]
    converted: dict[str, list[Path]] = defaultdict(list)
    for currency, channels, n, _ in path_rows:
        if currency:
            converted[currency].append((channels, n, 0))
    out = {}
    for currency, paths in sorted(converted.items()):
        for channel, credit in credits(paths + lost).items():
            out[(channel, currency)] = credit
    return out


def with_data_driven(
    columns: list[str], rows: list[list], path_rows: Iterable[Sequence], key: str
) -> tuple[list[str], list[list]]:
    """The heuristic models' report (rows per channel and currency) with a
    `data_driven_conversions` column beside them."""
    found = credits_by_currency(path_rows)
    at, cur = columns.index(key), columns.index("currency")
    return [*columns, "data_driven_conversions"], [
        [*row, round(found.get((row[at], row[cur]), 0.0), 9)] for row in rows
    ]
