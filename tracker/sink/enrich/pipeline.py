"""The sink's enrichment pipeline: one ordered list of small steps over events.

A step takes an event's row (a dict whose keys are ClickHouse columns) and returns it, enriched
or flagged, or None to drop it (the step names the reason). A step that needs I/O gets
the whole batch, so it costs one round trip per batch, not per event: `prepare` sees the
batch before `run` sees each event (reloads, marks), and a `batch` step (the fraud
counters) takes the batch and returns it whole, so what it counted for each event never
has to be kept between two calls. Every step is timed and counted by name.

A step that keeps state across batches (the fraud counters in the sink's memory) hears
of each batch's life through `Pipeline.begin`, `stored` and `forget` (a `BatchState`):
the sink calls them around a batch, so what the step kept is what was stored.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Protocol

from tracker import metrics
from tracker.reasons import BotReason, FraudFlag, flag_label
from tracker.types import Row


@dataclass
class Step:
    name: str
    run: Callable[[Row], Row | None] | None  # one event at a time, or
    tables: tuple[str, ...] = ("clicks",)
    prepare: Callable[[list[Row]], None] | None = None
    batch: Callable[[list[Row]], list[Row]] | None = None  # the whole batch at once


class BatchState(Protocol):
    def begin(self, stream: str, last_id: str, redelivered: bool) -> None:
        """A batch of `stream` up to entry `last_id` is about to be enriched."""

    def stored(self) -> None:
        """The batch is stored (before it is acknowledged): keep what it changed."""

    def forget(self, visitors: Iterable[str]) -> None:
        """These visitors were erased: keep nothing of them."""


@dataclass
class StepStats:
    events: int = 0
    seconds: float = 0.0  # wall time, waiting for Redis included
    cpu_seconds: float = 0.0  # this thread's CPU time: what the step itself costs
    dropped: int = 0


@dataclass
class Pipeline:
    steps: list[Step]
    stats: dict[str, StepStats] = field(default_factory=dict)
    # table -> every field its steps read or write: its rows are enriched where they lie
    # (rows.py); a table not here is decoded and encoded whole
    fields: dict[str, tuple[str, ...]] = field(default_factory=dict)
    flags: Counter = field(default_factory=Counter)  # (table, flag) -> events flagged
    states: list[BatchState] = field(default_factory=list)  # steps' state across batches

    def begin(self, stream: str, last_id: str, redelivered: bool) -> None:
        for state in self.states:
            state.begin(stream, last_id, redelivered)

    def stored(self) -> None:
        for state in self.states:
            state.stored()

    def forget(self, visitors: Iterable[str]) -> None:
        for state in self.states:
            state.forget(visitors)

    def process(self, table: str, events: list[Row]) -> list[Row]:
        for step in self.steps:
            if table not in step.tables or not events:
                continue
            stats = self.stats.setdefault(step.name, StepStats())
            started, cpu = time.perf_counter(), time.thread_time()
            if step.prepare:
                step.prepare(events)
            if step.batch is not None:
                kept = step.batch(events)
            else:
                assert step.run is not None, f"step {step.name} has neither run nor batch"
                kept = [out for out in map(step.run, events) if out is not None]
            elapsed = time.perf_counter() - started
            stats.cpu_seconds += time.thread_time() - cpu
            stats.seconds += elapsed
            metrics.STEP_SECONDS.labels(step.name).inc(elapsed)
            stats.events += len(events)
            stats.dropped += len(events) - len(kept)
            events = kept
        # counted by the steps' own values, labelled once per batch (a label per event
        # was a third of this loop)
        rules: dict[FraudFlag, int] = {}
        bots: dict[str, int] = {}
        for event in events:
            # only the steps set these, from the closed sets in tracker.reasons
            found = event.get("fraud_flags")
            if found:
                for rule in found:
                    rules[rule] = rules.get(rule, 0) + 1
            if event.get("is_bot"):
                reason = event.get("bot_reason", "")
                bots[reason] = bots.get(reason, 0) + 1
        flags: Counter = Counter()
        for rule, n in rules.items():
            flags[(table, flag_label(rule))] += n
        for reason, n in bots.items():
            flags[(table, flag_label(BotReason(reason)))] += n
        for (flagged_table, name), n in flags.items():
            metrics.FLAGS.labels(flagged_table, name).inc(n)
        self.flags.update(flags)
        return events

    def tables(self) -> set[str]:
        return {table for step in self.steps for table in step.tables}


def flag(event: Row, name: FraudFlag) -> None:
    """Add a fraud flag (rule name) to an event once."""
    flags = event.setdefault("fraud_flags", [])
    if name not in flags:
        flags.append(name)
