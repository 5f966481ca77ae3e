"""The CPU a benchmark's processes used, children included.

Redis forks to rewrite its append-only file; that child's work is the clicks' as much as
the parent's, and on a small machine it competes with them for the same cores. A count
of the parent alone left it out (about a quarter of Redis's CPU at 9,000 clicks/s).
"""

from __future__ import annotations

import os
from pathlib import Path

TICKS = os.sysconf("SC_CLK_TCK")


def children(pid: int) -> list[int]:
    """The running children of a process (of any of its threads)."""
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            found += [int(p) for p in (task / "children").read_text().split()]
        except FileNotFoundError:  # the thread ended meanwhile
            continue
    return found


def process_cpu(pid: int, apart: frozenset[int] = frozenset()) -> float:
    """CPU seconds (user + system) of a process, all its threads, its children that have
    ended (reaped: the kernel adds them to the parent) and those still running, but for
    the running ones in `apart` (counted on their own). A child's CPU moves from the
    second kind to the first when it is reaped, so the sum never counts it twice."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    own_and_reaped = sum(int(f) for f in fields[11:15])  # utime stime cutime cstime
    running = 0.0
    for child in children(pid):
        if child in apart:
            continue
        try:
            running += process_cpu(child, apart)
        except FileNotFoundError:  # ended and reaped meanwhile: in cutime next time
            continue
    return own_and_reaped / TICKS + running


def threads_cpu(pid: int, name: str) -> float:
    """CPU seconds of a process's running threads whose name starts with `name` (chDB
    names its pools' threads: its background merges run in "MergeMutate" threads)."""
    used = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            if not (task / "comm").read_text().startswith(name):
                continue
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
        except FileNotFoundError:  # the thread ended meanwhile
            continue
        used += int(fields[11]) + int(fields[12])  # utime stime
    return used / TICKS


def cpu_seconds(pids: dict[str, int]) -> dict[str, float]:
    """`process_cpu` of each named process still running; a named process's running
    children that are named too (a server's forked workers) are counted on their own."""
    apart = frozenset(pids.values())
    used = {}
    for name, pid in pids.items():
        try:
            used[name] = process_cpu(pid, apart)
        except FileNotFoundError:
            continue
    return used


def redis_by_command(redis, rows: int) -> dict[str, float]:
    """Redis's time per row (or click) in each command since the last CONFIG RESETSTAT:
    where its CPU goes, but for the AOF, its rewrite and the network (EVALSHA, a script,
    includes the commands it runs, which are listed too)."""
    stats = redis.info("commandstats")
    spent = {name.removeprefix("cmdstat_"): value["usec"] / rows for name, value in stats.items()}
    ranked = sorted(spent.items(), key=lambda item: -item[1])
    return {name: round(us, 2) for name, us in ranked if us >= 0.01}
