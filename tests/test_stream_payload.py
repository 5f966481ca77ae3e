"""The events stream's compressed rows: what the edge packs the sink unpacks unchanged."""

from __future__ import annotations

import os

import orjson
import pytest

from tracker.stream_payload import MAGIC, Unreadable, pack, unpack


def rows(n: int) -> bytes:
    return b"\n".join(
        orjson.dumps({"click_id": os.urandom(16).hex(), "link_slug": "spring", "sub1": str(i)})
        for i in range(n)
    )


def test_rows_round_trip_in_fewer_bytes():
    payload = rows(100)
    packed = pack(payload)
    assert packed.startswith(MAGIC) and len(packed) < len(payload) * 0.7
    assert unpack(packed) == payload


def test_what_does_not_shrink_stays_plain():
    payload = b'{"r":"' + os.urandom(48).hex().encode() + b'"}'  # one short random row
    assert pack(payload) == payload
    assert unpack(payload) == payload


def test_plain_rows_of_other_writers_pass_through():
    payload = rows(3)
    assert unpack(payload) is payload


@pytest.mark.parametrize(
    "value",
    [
        MAGIC + (1000).to_bytes(4, "little") + b"\xff" * 40,  # not an LZ4 block
        MAGIC + pack(rows(50))[len(MAGIC) : -10],  # cut short
        MAGIC + (1 << 31).to_bytes(4, "little") + b"\x00" * 8,  # claims 2 GB
        MAGIC,  # nothing after the mark
    ],
)
def test_a_damaged_value_is_refused(value):
    with pytest.raises(Unreadable):
        unpack(value)
