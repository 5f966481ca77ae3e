"""A table's rows in an events stream entry, LZ4-compressed by the edge's writer.

A batch's JSONEachRow rows repeat every column name and most values (links, agents,
campaigns): LZ4 takes a click's ~900 bytes to ~150 for about 0.3 µs of the edge's CPU.
Everything Redis does with a row is paid per byte: the script's append to the stream,
the append-only file's write, the sink's read, and the AOF rewrite, which comes once the
file has grown by the data set's size (so fewer bytes per click rewrite less often).

A packed value starts with MAGIC, which no JSON row can (a row starts with `{`); other
writers (postbacks, link mirrors, deliveries) append plain rows, and `unpack` hands those
back as they are, as it does entries written before this format.
"""

from __future__ import annotations

import lz4.block

MAGIC = b"\x00lz4"
# a batch is at most `writer.batch_max_events` rows of a few KB: a stored size beyond this
# is damage, not rows, and is refused rather than allocated
MAX_ROWS_BYTES = 64 << 20


class Unreadable(ValueError):
    """A packed value that does not decompress (never written so by the edge)."""


def pack(payload: bytes) -> bytes:
    """The payload compressed (its size stored), or as it is when that is not smaller."""
    packed = MAGIC + lz4.block.compress(payload, store_size=True)
    return packed if len(packed) < len(payload) else payload


def unpack(value: bytes) -> bytes:
    """The rows of a stream entry's table field, packed or plain."""
    if not value.startswith(MAGIC):
        return value
    size = int.from_bytes(value[len(MAGIC) : len(MAGIC) + 4], "little")
    if size > MAX_ROWS_BYTES:
        raise Unreadable(f"claims {size} bytes of rows")
    try:
        return lz4.block.decompress(memoryview(value)[len(MAGIC) :])
    except (lz4.block.LZ4BlockError, ValueError) as exc:  # damaged, or too short to hold a size
        raise Unreadable(str(exc)) from None
