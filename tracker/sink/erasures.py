"""Events of erased visitors that were still on their way when the erasure ran.

`privacy_ops.erase` marks the visitor in Redis (`K.ERASED_VISITORS`: visitor -> when)
before it deletes what is stored. An event of theirs still in the events stream then, or
in an edge's spool while Redis was away, would otherwise be stored after that delete. The
sink reads the marks with each batch (one HGETALL of a hash that is usually empty) and
drops such events (clicks, impressions and orphan visits from before the mark) and blanks
the identity of such conversions, as `erase` does to stored ones, and the Redis records
the edges wrote with those clicks (the hot window) go again. Two cases are caught
after the insert instead: a visitor marked while the batch was being stored (the marks
were read before the mark, the insert came after the delete), and a batch read again
after a crash whose first insert, made before the mark, ClickHouse keeps (it skips the
second as a duplicate): their rows in the batch are erased in ClickHouse.
"""

from __future__ import annotations

import re

import orjson

from tracker import privacy_ops
from tracker.clickhouse import ClickHouse
from tracker.ids import is_uuid
from tracker.timefmt import parse_ms
from tracker.types import SyncRedis

TABLES = (*privacy_ops.ERASED_TABLES, "conversions")
KEY = b'"visitor_id":"'  # how a row names its visitor (rows are flat JSON objects)
VISITORS = re.compile(rb'"visitor_id":"([^"]{36})"')
# Up to this many marks, a part is searched for each marked visitor; with more, every
# visitor it names is listed at once (0.05 µs per row and mark against 0.2 per row).
FEW = 4


def visitor_of(line: bytes) -> str | None:
    """The visitor id a row names, read off its bytes (a key's quotes are never inside a
    JSON string, so the first match is the key)."""
    at = line.find(KEY)
    if at < 0:
        return None
    start = at + len(KEY)
    return line[start : start + 36].decode("ascii", "replace")


class Erasures:
    def __init__(
        self, redis: SyncRedis, ch: ClickHouse, cluster: str = "", hot_hours: int = 48
    ) -> None:
        self.redis = redis
        self.ch = ch
        self.cluster = cluster
        self.hot_hours = hot_hours

    def marks(self) -> dict[str, int]:
        return privacy_ops.erased_marks(self.redis)

    def drop(self, payloads: dict[str, list[bytes]], marks: dict[str, int]) -> dict[str, set]:
        """Drop (or blank, for conversions) the rows of marked visitors from before their
        mark; the tables each such visitor had rows in."""
        found: dict[str, set] = {}
        if not marks:
            return found
        needles = [KEY + v.encode() for v in marks]
        named = {v.encode() for v in marks}
        for table in TABLES:
            parts = payloads.get(table)
            if not parts:
                continue
            kept: list[bytes] = []
            for part in parts:
                if len(needles) <= FEW:
                    anyone = any(n in part for n in needles)
                else:
                    anyone = not named.isdisjoint(VISITORS.findall(part))
                if not anyone:
                    kept.append(part)
                    continue
                lines, touched = [], False
                for line in part.split(b"\n"):
                    row = self._erased(line, marks) if line else None
                    if row is None:
                        if line:
                            lines.append(line)
                        continue
                    touched = True
                    found.setdefault(row["visitor_id"], set()).add(table)
                    if table == "conversions":
                        row.update(privacy_ops.CONVERSION_BLANKS)
                        lines.append(orjson.dumps(row))
                if not touched:
                    kept.append(part)
                elif lines:
                    kept.append(b"\n".join(lines))
            payloads[table] = kept
        return found

    def forget_hot(self, dropped: dict[str, set]) -> None:
        """The Redis records the edges wrote with the clicks just dropped (their batch
        script writes the hot window as it appends to the stream, so after the erasure
        ran): the visitors' records go again, as `erase` removes them."""
        for visitor, tables in dropped.items():
            if "clicks" in tables:
                privacy_ops.erase_redis(self.redis, visitor, (), self.hot_hours)

    @staticmethod
    def _erased(line: bytes, marks: dict[str, int]) -> dict | None:
        """The row, decoded, when it is a marked visitor's from before the mark."""
        at = marks.get(visitor_of(line) or "")
        if at is None:
            return None
        row = orjson.loads(line)
        visitor, when = row.get("visitor_id"), row.get("event_time")
        if visitor not in marks or not isinstance(when, str) or parse_ms(when) > at:
            return None
        return row

    def sweep(
        self,
        payloads: dict[str, list[bytes]],
        before: dict[str, int],
        dropped: dict[str, set],
        redelivered: bool,
    ) -> list[str]:
        """After the batch's insert: erase in ClickHouse the batch's rows of visitors
        marked since `before` was read, and, for a batch read before, of those whose rows
        were dropped (its first insert may be the one ClickHouse keeps). The visitors
        erased."""
        late = {v: at for v, at in self.marks().items() if before.get(v) != at}
        targets: dict[str, tuple[int, set]] = {}
        for visitor, at in late.items():
            needle = KEY + visitor.encode()
            tables = {t for t in TABLES for part in payloads.get(t, ()) if needle in part}
            if tables:
                targets[visitor] = (at, tables)
        if redelivered:
            for visitor, tables in dropped.items():
                at, known = targets.get(visitor, (before[visitor], set()))
                targets[visitor] = (at, known | tables)
        for visitor, (at, tables) in targets.items():
            if not is_uuid(visitor):  # marks are checked ids; anything else is not SQL
                continue
            where = (
                f"visitor_id = toUUID('{visitor}') "
                f"AND event_time <= fromUnixTimestamp64Milli({int(at)})"
            )
            privacy_ops.erase_rows(self.ch, where, self.cluster, tables)
        return sorted(targets)
