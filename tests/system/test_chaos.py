"""The chaos suite's scenarios that fit in CI (loadtest/chaos.py, `--quick` waits). The
Redis, sink and whole-service faults run in test_reliability.py; the full suite with its
table is `make chaos`."""

from __future__ import annotations

import pytest

from loadtest import chaos
from tracker.testing import can_mount


async def test_one_edge_killed_under_load():
    result = await chaos.run("edge_sigkill", quick=True)
    assert result.answered > 100 and result.recover is not None
    assert result.duplicated == 0
    # a SIGKILLed edge loses only what it held unflushed (at most 20 ms of its clicks)
    assert result.lost <= 20, result
    assert result.rows == result.answered - result.lost


@pytest.mark.skipif(not can_mount(), reason="mounting a tmpfs needs root (as in CI)")
async def test_spool_disk_full_then_read_only_during_a_redis_outage():
    result = await chaos.run("spool_full_then_read_only", quick=True)
    assert result.duplicated == 0 and result.recover is not None
    assert result.lost > 0  # dropped (and counted) while nothing could take them...
    assert result.rows == result.answered - result.lost  # ...and everything else stored
