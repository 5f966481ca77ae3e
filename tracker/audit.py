"""The append-only audit log: every write through the admin API and the CLI.

One Redis stream (AOF-persisted with the rest of Redis' data), never trimmed: an entry is
appended with XADD and nothing in the service deletes or edits one; the API only reads it
(`GET /api/audit`, admin), as does `tracker audit`. An entry says who (the key id and its
role, or `cli:<os user>`), when (the stream id's time, and `at` in UTC), what (`action`:
the route or CLI command, a bounded set, never built from input; `target`: the object's
id) and the object before and after (secrets left out).
"""

from __future__ import annotations

import getpass
from typing import Any

import orjson

from tracker.redis_keys import AUDIT_STREAM
from tracker.timefmt import format_ms, now_ms
from tracker.types import StreamFields, SyncRedis

SECRET_FIELDS = ("token", "secret_sha256", "key")


def _redact(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: ("<redacted>" if k in SECRET_FIELDS else _redact(v)) for k, v in value.items()}
    return value


def entry(
    *,
    actor: str,
    role: str,
    action: str,
    target: str = "",
    before: Any = None,
    after: Any = None,
    status: int = 0,
) -> StreamFields:
    """The stream fields of one audit entry."""
    return {
        "at": format_ms(now_ms()).encode(),
        "actor": actor.encode(),
        "role": role.encode(),
        "action": action.encode(),
        "target": target[:200].encode(),
        "status": str(status).encode(),
        "before": orjson.dumps(_redact(before)),
        "after": orjson.dumps(_redact(after)),
    }


def cli_actor() -> str:
    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):
        return "cli:unknown"


def record_cli(
    redis: SyncRedis, action: str, target: str = "", before: Any = None, after: Any = None
) -> None:
    """Append one entry for a CLI write (sync client)."""
    redis.xadd(
        AUDIT_STREAM,
        entry(
            actor=cli_actor(),
            role="admin",
            action=action,
            target=target,
            before=before,
            after=after,
        ),
    )


def parse(entry_id: bytes | str, fields: dict) -> dict[str, Any]:
    def text(name: str) -> str:
        value = fields.get(name.encode(), fields.get(name, b""))
        return value.decode() if isinstance(value, bytes) else str(value)

    return {
        "id": entry_id.decode() if isinstance(entry_id, bytes) else entry_id,
        "at": text("at"),
        "actor": text("actor"),
        "role": text("role"),
        "action": text("action"),
        "target": text("target"),
        "status": int(text("status") or 0),
        "before": orjson.loads(text("before") or "null"),
        "after": orjson.loads(text("after") or "null"),
    }


def matches(item: dict[str, Any], actor: str | None, action: str | None) -> bool:
    return (not actor or item["actor"] == actor) and (not action or item["action"] == action)
