"""Identifiers: time-ordered click ids (UUIDv7) and visitor ids.

A click id is a canonical lowercase UUID string: 128 bits, URL-safe as it is, sortable by
creation time, and stored as ClickHouse UUID without conversion.

`uuid7` here is the reference and the fallback: tracker/_ids.pyx makes the same ids from
the same state in C, and is used when built (tracker/extensions.py).
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable

from tracker import extensions

# The nil UUID: "no visitor" (a no-track click) or "no click" on a conversion.
ZERO_UUID = "00000000-0000-0000-0000-000000000000"

_UUID_RE = re.compile(r"\A[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\Z")

_last_ms = 0
_seq = 0

# Random bits come from os.urandom (the kernel's CSPRNG: ids must not be guessable), read
# 4 KB at a time: one getrandom() call per 500 ids instead of one per id.
_POOL_BYTES = 4096
_pool = b""
_pool_at = 0


def _random64() -> int:
    """The next 8 bytes of the pool, big-endian (a fresh pool from the kernel when it
    holds fewer than 8 more)."""
    global _pool, _pool_at
    if _pool_at + 8 > len(_pool):
        _pool, _pool_at = os.urandom(_POOL_BYTES), 0
    _pool_at += 8
    return int.from_bytes(_pool[_pool_at - 8 : _pool_at])


def _forget_pool() -> None:  # a forked child must not hand out its parent's bits again
    global _pool_at
    _pool_at = len(_pool)


os.register_at_fork(after_in_child=_forget_pool)


def py_uuid7(now_ms: int | None = None) -> str:
    """A UUIDv7 string; ids made in one process are strictly increasing.

    The 12-bit rand_a field holds a per-millisecond counter (RFC 9562 method 1), so ids
    from the same millisecond still sort in creation order.
    """
    global _last_ms, _seq
    ms = time.time_ns() // 1_000_000 if now_ms is None else now_ms
    if not 0 <= ms < 1 << 48:
        raise ValueError("a UUIDv7 holds a Unix millisecond of 48 bits")
    if ms <= _last_ms:
        _seq += 1
        if _seq > 0xFFF:  # counter exhausted: borrow the next millisecond
            _last_ms += 1
            _seq = 0
        ms = _last_ms
    else:
        _last_ms = ms
        _seq = _random64() & 0x3F  # random start, room to count
    rand_b = _random64() & 0x3FFF_FFFF_FFFF_FFFF
    value = (ms << 80) | (0x7 << 76) | (_seq << 64) | (0b10 << 62) | rand_b
    h = f"{value:032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def py_state() -> tuple[int, int, bytes, int]:
    """(last millisecond, counter, pool, position in the pool)."""
    return _last_ms, _seq, _pool, _pool_at


def py_reset(last_ms: int, seq: int, pool: bytes, pool_at: int) -> None:
    """Set the generator's state (tests: the same state gives the same ids)."""
    global _last_ms, _seq, _pool, _pool_at
    _last_ms, _seq, _pool, _pool_at = last_ms, seq, bytes(pool), pool_at


uuid7: Callable[..., str] = py_uuid7
state: Callable[[], tuple[int, int, bytes, int]] = py_state
reset: Callable[[int, int, bytes, int], None] = py_reset
_ids = extensions.load("tracker._ids")
if _ids is not None:
    uuid7, state, reset = _ids.uuid7, _ids.state, _ids.reset


def is_uuid(value: str) -> bool:
    """True for a canonical lowercase UUID string (how click and visitor ids travel)."""
    return len(value) == 36 and _UUID_RE.match(value) is not None


def uuid7_time_ms(value: str) -> int:
    """The creation time (Unix ms) encoded in a UUIDv7 string."""
    return int(value[:8] + value[9:13], 16)
