"""The first-order Markov model: hand-computed cases, a reference implementation written
here another way (value iteration over the graph), and the paths SQL over real chDB."""

from __future__ import annotations

import random

import orjson
import pytest

from attribution import markov
from attribution.sql import markov_paths_sql
from tests.reports.conftest import click, conversion, insert, uid


def test_one_converting_channel_gets_everything():
    paths = [(["A"], 1, 0), (["B"], 0, 1)]
    assert markov.removal_effects(paths) == {"A": 1.0, "B": 0.0}
    assert markov.credits(paths) == {"A": 1.0, "B": 0.0}


def test_two_steps_needed_share_equally():
    # START->A 1; A->B 1/2, A->NULL 1/2; B->CONV 1: both are needed, P = 1/2
    paths = [(["A", "B"], 1, 0), (["A"], 0, 1)]
    assert markov.conversion_probability(markov.transitions(paths)) == pytest.approx(0.5)
    assert markov.credits(paths) == pytest.approx({"A": 0.5, "B": 0.5})


def test_the_textbook_case():
    # C1 > C2 > C3 converts; C1 and C2 > C3 do not.
    # START->C1 2/3, START->C2 1/3, C1->C2 1/2, C1->NULL 1/2, C2->C3 1, C3->CONV 1/2:
    # P = 2/3*1/2*1/2 + 1/3*1/2 = 1/3; without C1 1/6 (effect 1/2), without C2 or C3 0 (1).
    paths = [(["C1", "C2", "C3"], 1, 0), (["C1"], 0, 1), (["C2", "C3"], 0, 1)]
    graph = markov.transitions(paths)
    assert markov.conversion_probability(graph) == pytest.approx(1 / 3)
    assert markov.conversion_probability(graph, removed="C1") == pytest.approx(1 / 6)
    assert markov.removal_effects(paths) == pytest.approx({"C1": 0.5, "C2": 1.0, "C3": 1.0})
    assert markov.credits(paths) == pytest.approx({"C1": 0.2, "C2": 0.4, "C3": 0.4})


def test_loops_and_repeats():
    # A > B > A converts: the loop A->B->A must not break the solve
    paths = [(["A", "B", "A"], 2, 0), (["B"], 0, 2), (["A", "A"], 1, 1)]
    assert sum(markov.credits(paths).values()) == pytest.approx(3)
    assert markov.credits(paths) == pytest.approx(reference_credits(paths))


def test_nothing_converts():
    assert markov.credits([(["A"], 0, 3)]) == {"A": 0.0}
    assert markov.credits([]) == {}


# -- the reference: value iteration over a dict graph, removal by rewriting edges ------


def reference_probability(paths, removed=None, rounds=5000):
    edges: dict[str, dict[str, float]] = {}
    for channels, converted, lost in paths:
        states = ["start", *channels]
        for a, b in zip(states, states[1:], strict=False):
            edges.setdefault(a, {}).setdefault(b, 0.0)
            edges[a][b] += converted + lost
        edges.setdefault(states[-1], {})
        edges[states[-1]]["conv"] = edges[states[-1]].get("conv", 0.0) + converted
        edges[states[-1]]["null"] = edges[states[-1]].get("null", 0.0) + lost
    value = {state: 0.0 for state in edges}
    value.update({"conv": 1.0, "null": 0.0})
    for _ in range(rounds):
        for state, out in edges.items():
            if state == removed:
                value[state] = 0.0
                continue
            total = sum(out.values())
            value[state] = sum(w / total * value.get(t, 0.0) for t, w in out.items())
    return value["start"]


def reference_credits(paths):
    base = reference_probability(paths)
    channels = sorted({c for channels, _, _ in paths for c in channels})
    effects = {c: max(0.0, 1 - reference_probability(paths, c) / base) for c in channels}
    total = sum(effects.values())
    conversions = sum(c for _, c, _ in paths)
    return {c: conversions * e / total for c, e in effects.items()}


@pytest.mark.parametrize("seed", range(8))
def test_agrees_with_the_reference_on_random_paths(seed):
    rng = random.Random(seed)
    channels = [f"c{i}" for i in range(rng.randint(2, 6))]
    paths = []
    for _ in range(rng.randint(3, 15)):
        path = [rng.choice(channels) for _ in range(rng.randint(1, 5))]
        converted = rng.choice([0, 0, 1, 2])
        paths.append((path, converted, 0 if converted else rng.randint(1, 3)))
    if not any(c for _, c, _ in paths):
        paths.append(([channels[0]], 1, 0))
    assert markov.credits(paths) == pytest.approx(reference_credits(paths), abs=1e-6)


def test_paths_sql_over_chdb(chdb_database):
    """Visitors' journeys in, the model's paths out (flagged clicks left out)."""
    v1, v2, v3 = uid(), uid(), uid()
    insert(
        chdb_database,
        "clicks",
        [
            click("2030-01-10 10:00:00.000", campaign="C1", visitor=v1),
            click("2030-01-10 11:00:00.000", campaign="C2", visitor=v1),
            click("2030-01-10 12:00:00.000", campaign="C3", visitor=v1),
            click("2030-01-10 10:00:00.000", campaign="C1", visitor=v2),
            click("2030-01-10 10:00:00.000", campaign="C2", visitor=v3),
            click("2030-01-10 10:30:00.000", campaign="C9", visitor=v3, is_bot=1),
            click("2030-01-10 11:00:00.000", campaign="C3", visitor=v3),
        ],
    )
    insert(
        chdb_database,
        "conversions",
        [conversion("2030-01-10 13:00:00.000", visitor_id=v1, attributed=1)],
    )
    sql = markov_paths_sql(
        chdb_database.database,
        "campaign",
        date_from="2030-01-01 00:00:00",
        date_to="2030-02-01 00:00:00",
        lookback_ms=30 * 86_400_000,
    )
    _, rows = chdb_database.query(sql)
    rows = orjson.loads(orjson.dumps(rows))
    assert rows == [
        ["", ["C1"], 0, 1],
        ["", ["C2", "C3"], 0, 1],
        ["USD", ["C1", "C2", "C3"], 1, 0],
    ]
    paths = [(channels, conv, lost) for _, channels, conv, lost in rows]
    assert markov.credits(paths) == pytest.approx({"C1": 0.2, "C2": 0.4, "C3": 0.4})


def test_data_driven_column_beside_the_heuristic_models():
    columns = ["campaign_id", "currency", "linear_conversions"]
    rows = [["C1", "EUR", 0.5], ["C1", "USD", 0.5], ["C2", "USD", 0.5]]
    paths = [
        ("USD", ["C1", "C2"], 1, 0),
        ("EUR", ["C1"], 1, 0),
        ("", ["C1"], 0, 1),
    ]
    out_columns, out_rows = markov.with_data_driven(columns, rows, paths, "campaign_id")
    assert out_columns == [*columns, "data_driven_conversions"]
    # EUR: only C1 converts; USD: C1 and C2 both needed (C1 -> C2 1/2, C1 -> NULL 1/2)
    assert out_rows == [["C1", "EUR", 0.5, 1.0], ["C1", "USD", 0.5, 0.5], ["C2", "USD", 0.5, 0.5]]
