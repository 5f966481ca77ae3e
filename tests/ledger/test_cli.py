"""`tracker affiliates|campaigns|payouts`: the same records and rules as the API."""

from __future__ import annotations

import orjson
import pytest

from tracker import cli


@pytest.fixture
def run(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("TRACKER_DATA_DIR", str(tmp_path))

    def call(*argv: str) -> tuple[int, str, str]:
        code = cli.main(list(argv))
        out, err = capsys.readouterr()
        return code, out, err

    return call


def test_programme_from_the_command_line(run):
    assert run("affiliates", "add", "ref", "--min-payout", "1")[0] == 0
    assert run("affiliates", "add", "pub", "--parent", "ref", "--currency", "EUR")[0] == 0
    code, _, err = run("affiliates", "add", "pub")
    assert code == 1 and "already exists" in err
    code, _, err = run("affiliates", "set", "ref", "--parent", "pub")
    assert code == 1 and "cycle" in err
    assert run("affiliates", "set", "pub", "--status", "paused")[0] == 0
    listed = orjson.loads(run("affiliates", "list", "--format", "json")[1])
    assert [(a["id"], a["status"], a["parent_id"], a["min_payout"]) for a in listed] == [
        ("pub", "paused", "ref", "100.00"),
        ("ref", "active", None, "1.00"),
    ]
    plan = '{"events": {"sale": {"type": "percent", "percent": "10"}}}'
    assert run("campaigns", "add", "c1", "--advertiser", "shop", "--plan", plan)[0] == 0
    code, out, _ = run("campaigns", "set", "c1", "--plan", plan.replace("10", "12"))
    assert code == 0 and "plan version 2" in out
    code, _, err = run("campaigns", "set", "c1", "--plan", "{not json")
    assert code == 1 and "--plan must be JSON" in err
    code, _, err = run("campaigns", "add", "c2", "--advertiser", "shop", "--plan", '{"events": 1}')
    assert code == 1 and "plan.events" in err
    code, out, _ = run("payouts", "run", "--cutoff", "2026-01-31")
    assert code == 0 and "0 payouts" in out and "payout_id,affiliate_id" in out
    code, _, err = run("payouts", "mark-paid", "nope")
    assert code == 1 and "no payout" in err
    assert run("payouts", "run", "--cutoff", "tomorrow")[0] == 1
