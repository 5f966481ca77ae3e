"""Where is a process that does not stop? `kill -USR1 PID` writes its stacks to its log.

Every service command registers faulthandler for SIGUSR1 (every thread's Python stack,
even when the event loop is blocked); an asyncio process also adds the stack of each of
its tasks, which is where a stuck `await` shows.
"""

from __future__ import annotations

import asyncio
import faulthandler
import io
import signal
import sys

DUMP_SIGNAL = signal.SIGUSR1


def on_signal_dump_threads() -> None:
    faulthandler.register(DUMP_SIGNAL, all_threads=True)


def on_signal_dump_tasks(loop: asyncio.AbstractEventLoop) -> None:
    """Call after the loop's own signal handlers are set: faulthandler keeps dumping the
    threads and chains to the loop's handler, which dumps the tasks."""
    faulthandler.unregister(DUMP_SIGNAL)  # registering again would keep the old chain
    loop.add_signal_handler(DUMP_SIGNAL, dump_tasks)
    faulthandler.register(DUMP_SIGNAL, all_threads=True, chain=True)


def dump_tasks() -> None:
    out = io.StringIO()
    tasks = asyncio.all_tasks()
    print(f"{len(tasks)} asyncio tasks:", file=out)
    for task in tasks:
        print(f"- {task!r}", file=out)
        task.print_stack(limit=20, file=out)
    sys.stderr.write(out.getvalue())
    sys.stderr.flush()
