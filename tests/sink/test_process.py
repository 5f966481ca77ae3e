"""The sink process's own set-up (tracker/sink/process.py)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tracker.testing import ROOT, clean_env

# run in a child: a thread cannot take its CPU priority back
SHOW = (
    "import os; from tracker import config; from tracker.sink.process import yield_cpu; "
    "before = os.nice(0); yield_cpu(config.load()); "
    "print(os.sched_getscheduler(0) == os.SCHED_IDLE, os.nice(0) - before)"
)


@pytest.mark.parametrize(("idle", "expected"), [("true", "True 10"), ("false", "False 10")])
def test_the_sink_yields_the_cpu_to_the_edges(idle, expected):
    if not hasattr(os, "SCHED_IDLE"):
        pytest.skip("SCHED_IDLE is Linux's")
    env = {**clean_env(), "TRACKER_SINK_IDLE_PRIORITY": idle, "TRACKER_SINK_NICE": "10"}
    shown = subprocess.run(
        [sys.executable, "-c", SHOW], env=env, cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert shown.stdout.split() == expected.split()
