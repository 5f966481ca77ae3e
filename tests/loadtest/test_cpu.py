"""The benchmarks' CPU count includes a process's children (Redis's AOF rewrite)."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from loadtest.cpu import children, cpu_seconds, process_cpu, threads_cpu

BURN = 0.4  # CPU seconds the child spends
# A parent that forks a child; the child burns BURN s of CPU, says so and waits for its
# stdin to close; the parent then reaps it, says so and waits to be killed.
PARENT = f"""
import os, sys, time
pid = os.fork()
if pid == 0:
    end = time.process_time() + {BURN}
    while time.process_time() < end:
        pass
    print("burnt", flush=True)
    sys.stdin.read()
    os._exit(0)
os.waitpid(pid, 0)
print("reaped", flush=True)
time.sleep(60)
"""


@pytest.fixture
def parent() -> Iterator[subprocess.Popen]:
    """The parent, once its child has burnt its CPU."""
    proc = subprocess.Popen(
        [sys.executable, "-c", PARENT], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout and proc.stdout.readline() == "burnt\n"
        yield proc
    finally:
        proc.kill()
        proc.wait()


def test_a_childs_cpu_counts_for_its_parent_while_it_runs_and_once_reaped(parent):
    assert len(children(parent.pid)) == 1
    running = process_cpu(parent.pid)
    assert running >= BURN * 0.9  # the parent itself only waits
    parent.stdin.close()  # the child ends, the parent reaps it
    assert parent.stdout.readline() == "reaped\n"
    assert children(parent.pid) == []
    reaped = process_cpu(parent.pid)
    assert BURN * 0.9 <= reaped < running + BURN / 2  # counted once, not twice


def test_a_child_named_on_its_own_is_not_counted_for_its_parent_too(parent):
    [child] = children(parent.pid)
    used = cpu_seconds({"server": parent.pid, "worker": child})
    assert used["worker"] >= BURN * 0.9
    assert used["server"] < BURN / 2


def test_a_named_threads_cpu_is_counted_apart_from_the_others():
    def burn() -> None:
        # named as chDB names its pools' threads (the kernel's name, not Python's)
        Path(f"/proc/self/task/{threading.get_native_id()}/comm").write_text("bench-burner")
        end = time.thread_time() + BURN
        while time.thread_time() < end:
            pass
        done.set()
        stop.wait()

    done, stop = threading.Event(), threading.Event()
    thread = threading.Thread(target=burn)
    thread.start()
    try:
        done.wait()
        assert threads_cpu(os.getpid(), "bench-burn") >= BURN * 0.9
        assert threads_cpu(os.getpid(), "no-such-thread") == 0
    finally:
        stop.set()
        thread.join()
