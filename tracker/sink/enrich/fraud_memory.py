"""The fraud rules' counters in the sink's own memory (`fraud.counters = "memory"`, the
default): the counts fraud_counts.py keeps in Redis, with no Redis command per click.

Kept by the one sink that reads the events stream: with several sinks sharing the stream,
each would see only its share of an IP's clicks, so they count in Redis instead
(`fraud.counters = "redis"`). Per IP and calendar minute its clicks, per IP and hour its
visitors (the one visitor itself until a second comes), per "visitor link" and duplicate
bucket the latest click time: what the Redis script keeps, judged the same way click by
click in stream order (tests/sink/test_enrichment.py runs the rules on both).

A restart neither forgets nor counts twice. What a batch counted changes the counts at
once (its later clicks see its earlier ones) but is kept only once the batch is stored:
`stored`, called after its inserts and before its acknowledgement, appends the batch's
clicks to a journal in the sink's data folder (fraud_journal.py) with the batch's last
entry id. A batch that fails before that is undone when the next begins (it is read
again, and counted again, as the same batch). At start the journal is replayed; a batch
read again after a crash whose entries the journal already holds was stored (ClickHouse
deduplicates its insert by token) and is not counted again.

Counts older than the windows the rules read are dropped as newer clicks come (by event
time): an IP's minute after `MINUTES_KEPT` minutes, its visitors after the hour and the
next, a duplicate bucket after the next bucket. A click arriving later than that (a spool
replayed after a long Redis outage) is counted afresh, as the Redis keys' expiry does.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path

from tracker import extensions
from tracker import redis_keys as K
from tracker.ids import ZERO_UUID
from tracker.sink.enrich.fraud_counts import ClickCounts
from tracker.sink.enrich.fraud_journal import Journal
from tracker.timefmt import parse_ms
from tracker.types import Row

MINUTES_KEPT = 10  # calendar minutes of per-IP click counts behind the newest click
HOURS_KEPT = 2  # the newest click's hour and the one before
_ABSENT = object()  # undo: the key was not there
_ADDED = object()  # undo: the visitor was added to the IP's set

# A journaled click: event time (ms), IP (or its key), visitor, link slug ("": the
# duplicate rule was off for its campaign, nothing kept for it).
Counted = tuple[int, str, str, str]


def stream_position(entry_id: str) -> tuple[int, int]:
    """An events stream entry id ("ms-seq") as a comparable pair."""
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


class MemoryCounter:
    """Counts clicks for the click rules in memory, in stream order; journaled per batch
    (`begin` ... `count` ... `stored`) when given a folder."""

    ABSENT, ADDED = _ABSENT, _ADDED  # for the compiled count, which cannot import them

    def __init__(
        self,
        bucket_seconds: int,
        window_seconds: Callable[[str], float],
        journal_dir: Path | None = None,
    ) -> None:
        self.bucket_ms = bucket_seconds * 1000  # of the duplicate rule's buckets
        self.window_seconds = window_seconds  # a campaign's duplicate window
        self.minutes: dict[int, dict[str, int]] = {}  # minute -> IP -> clicks
        self.hours: dict[int, dict[str, str | set[str]]] = {}  # hour -> IP -> visitor(s)
        self.duplicates: dict[int, dict[str, int]] = {}  # bucket -> "visitor link" -> ms
        self.positions: dict[str, tuple[int, int]] = {}  # stream -> last entry id stored
        self.forgotten: set[str] = set()  # erased visitors already taken out
        self.newest_ms = 0
        self._undo: list[tuple[dict | set, object, object]] = []
        self._counted: list[Counted] = []  # this batch's clicks, for the journal
        self._batch: tuple[str, str] | None = None  # (stream, last entry id) being counted
        self._again = False  # the batch is one the journal holds: undone, not stored
        self._windows: dict[str, int] = {}  # campaign -> duplicate window (ms), per batch
        self.journal: Journal | None = None
        if journal_dir is not None:
            # kept while a journaled click can still count: the hour before, and two buckets
            keep_ms = max(HOURS_KEPT * 3_600_000, 2 * self.bucket_ms)
            self.journal = Journal(journal_dir, keep_ms)
            self._replay(self.journal.load())

    # -- one batch ------------------------------------------------------------------------

    def begin(self, stream: str, last_id: str, redelivered: bool) -> None:
        """A batch of the stream up to `last_id` is about to be counted. A batch counted
        before but never stored is undone first (it is this one, read again)."""
        self._rollback()
        self._batch = (stream, last_id)
        held = self.positions.get(stream)
        self._again = redelivered and held is not None and stream_position(last_id) <= held
        self._windows = {}

    def count(self, events: list[Row]) -> list[ClickCounts]:
        """Each click's counts, in order, the clicks counted as they come."""
        return count_clicks(self, events)

    def stored(self) -> None:
        """The batch is in ClickHouse: keep its counts (journaled) and drop old windows."""
        if self._again:  # stored before the crash, journaled then: counted there already
            self._rollback()
            return
        if self._counted and self._batch is not None:
            stream, last_id = self._batch
            if self.journal is not None:
                self.journal.append(stream, last_id, self._counted)
            self.positions[stream] = stream_position(last_id)
        self._undo.clear()
        self._counted = []
        self._batch = None
        self._prune()

    def forget(self, visitors: Iterable[str]) -> None:
        """Take erased visitors out of the counts (tracker/privacy_ops.py marks them; the
        sink hands the marks over each batch, each visitor is taken out once), journaled
        so a replay takes them out again."""
        new = [v for v in visitors if v not in self.forgotten]
        if not new:
            return
        self._forget(new)
        if self.journal is not None:
            self.journal.forget(new)

    # -- the counting -----------------------------------------------------------------------

    def _count(self, ms: int, ip: str, visitor: str, slug: str, window: int) -> ClickCounts:
        undo = self._undo
        if ms > self.newest_ms:
            self.newest_ms = ms
        minute = ms // 60_000
        clicks = _counts_in(self.minutes, minute)
        before = clicks.get(ip, 0)
        undo.append((clicks, ip, before or _ABSENT))
        clicks[ip] = before + 1
        if visitor == ZERO_UUID:  # no visitor: counted in its minute only
            return ClickCounts(before + 1, False, 0)
        seen_ips = _counts_in(self.hours, minute // 60)
        known = seen_ips.get(ip)
        if known is None:
            undo.append((seen_ips, ip, _ABSENT))
            seen_ips[ip] = visitor
            visitors = 1
        elif isinstance(known, str):
            if known == visitor:
                visitors = 1
            else:
                undo.append((seen_ips, ip, known))
                seen_ips[ip] = {known, visitor}
                visitors = 2
        else:
            if visitor not in known:
                undo.append((known, visitor, _ADDED))
                known.add(visitor)
            visitors = len(known)
        seen = False
        if slug:
            field = K.fraud_duplicate_field(visitor, slug)
            bucket = ms // self.bucket_ms
            latest = _counts_in(self.duplicates, bucket)
            own = latest.get(field, 0)
            earlier = self.duplicates.get(bucket - 1)
            last = max(own, earlier.get(field, 0) if earlier else 0)
            seen = last > 0 and last > ms - window
            if ms > own:
                undo.append((latest, field, own or _ABSENT))
                latest[field] = ms
        return ClickCounts(before + 1, seen, visitors)

    def _rollback(self) -> None:
        """Undo what the batch being counted changed, latest first."""
        for where, key, was in reversed(self._undo):
            if was is _ADDED:
                where.discard(key)
            elif was is _ABSENT:
                where.pop(key, None)
            else:
                where[key] = was
        self._undo.clear()
        self._counted = []
        self._again = False

    def _prune(self) -> None:
        minute = self.newest_ms // 60_000
        for kept, oldest in (
            (self.minutes, minute - MINUTES_KEPT + 1),
            (self.hours, minute // 60 - HOURS_KEPT + 1),
            (self.duplicates, self.newest_ms // self.bucket_ms - 1),
        ):
            for window in [w for w in kept if w < oldest]:
                del kept[window]

    def _forget(self, visitors: list[str]) -> None:
        gone = set(visitors)
        for seen_ips in self.hours.values():
            for ip, known in list(seen_ips.items()):
                if isinstance(known, str):
                    if known in gone:
                        del seen_ips[ip]
                else:
                    known -= gone
                    if len(known) == 1:
                        seen_ips[ip] = next(iter(known))
                    elif not known:
                        del seen_ips[ip]
        prefixes = tuple(K.fraud_duplicate_field(v, "") for v in gone)
        for latest in self.duplicates.values():
            for field in [f for f in latest if f.startswith(prefixes)]:
                del latest[field]
        self.forgotten |= gone

    def _replay(self, records: Iterable[tuple]) -> None:
        """Counts as the journal left them (`Journal.load`: batches and erasures, in order)."""
        for record in records:
            if record[0] == Journal.FORGET:
                self._forget(record[1])
                continue
            _, stream, last_id, clicks = record
            replay_clicks(self, clicks)
            self._undo.clear()
            self.positions[stream] = stream_position(last_id)
            self._prune()


def _counts_in(kept: dict[int, dict], key: int) -> dict:
    """The counts of one window (a minute, an hour, a duplicate bucket), made when first
    needed."""
    counts = kept.get(key)
    if counts is None:
        counts = kept[key] = {}
    return counts


def py_count(counter: MemoryCounter, events: list[Row]) -> list[ClickCounts]:
    """`MemoryCounter.count`: the reference for the compiled `count`
    (_fraud_memory.pyx), which does the same without a call per click."""
    out = []
    windows = counter._windows
    counted = counter._counted
    for event in events:
        ms = parse_ms(event["event_time"])  # its second parsed once (timefmt's cache)
        ip = event.get("ip_key") or event["ip"]
        visitor = event["visitor_id"]
        campaign = event["campaign_id"]
        window = windows.get(campaign)
        if window is None:
            window = windows[campaign] = round(counter.window_seconds(campaign) * 1000)
        slug = event["link_slug"] if window > 0 else ""
        counted.append((ms, ip, visitor, slug))
        out.append(counter._count(ms, ip, visitor, slug, window))
    return out


def py_replay(counter: MemoryCounter, clicks: list) -> None:
    """Journaled clicks (`Counted`) counted again, at start: the reference for the
    compiled `replay`, which skips the verdicts and the undo entries."""
    for ms, ip, visitor, slug in clicks:
        # a journaled slug means the rule was on: any window > 0 counts it the same
        counter._count(ms, ip, visitor, slug, 1)


count_clicks: Callable[[MemoryCounter, list[Row]], list[ClickCounts]] = py_count
replay_clicks: Callable[[MemoryCounter, list], None] = py_replay
_compiled = extensions.load("tracker.sink.enrich._fraud_memory")
if _compiled is not None:
    count_clicks, replay_clicks = _compiled.count, _compiled.replay
