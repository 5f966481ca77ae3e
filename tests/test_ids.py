"""tracker/ids.py: UUIDv7 click ids, from the Python generator and the compiled one
(tracker/_ids.pyx), which must make the same ids from the same state."""

from __future__ import annotations

import os
import random
import re
import time
import uuid
from types import SimpleNamespace

import pytest

from tracker import ids
from tracker.ids import is_uuid, uuid7_time_ms
from tracker.testing import compiled_missing

try:
    from tracker import _ids as compiled
except ImportError:  # not built: the compiled cases say so
    compiled = None  # type: ignore[assignment]

CANONICAL = re.compile(r"\A[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}\Z")
PYTHON = SimpleNamespace(uuid7=ids.py_uuid7, state=ids.py_state, reset=ids.py_reset)


@pytest.fixture(params=["python", "compiled"])
def generator(request):
    """Each generator, starting with its per-process state cleared (restored after)."""
    if request.param == "compiled" and compiled is None:
        compiled_missing("the compiled id generator")
    gen = PYTHON if request.param == "python" else compiled
    saved = gen.state()
    gen.reset(0, 0, b"", 0)
    yield gen
    gen.reset(*saved)


@pytest.fixture
def uuid7(generator):
    return generator.uuid7


def counter(value: str) -> int:
    """The 12-bit rand_a field (the per-millisecond counter)."""
    return int(value[15:18], 16)


def test_format_is_canonical_v7(uuid7):
    for _ in range(200):
        value = uuid7()
        assert CANONICAL.match(value), value
        parsed = uuid.UUID(value)
        assert str(parsed) == value
        assert parsed.version == 7
        assert parsed.variant == uuid.RFC_4122


def test_ten_thousand_ids_strictly_increasing_and_unique(uuid7):
    values = [uuid7() for _ in range(10_000)]
    assert len(set(values)) == len(values)
    assert all(a < b for a, b in zip(values, values[1:], strict=False))
    # string order and 128-bit integer order agree
    ints = [uuid.UUID(v).int for v in values]
    assert ints == sorted(ints)


@pytest.mark.parametrize("ms", [1, 1_700_000_000_000, 1_700_000_000_999, (1 << 48) - 1])
def test_time_round_trip_given_ms(uuid7, ms):
    assert uuid7_time_ms(uuid7(ms)) == ms


def test_time_round_trip_current_clock(uuid7):
    before = time.time_ns() // 1_000_000
    value = uuid7()
    after = time.time_ns() // 1_000_000
    assert before <= uuid7_time_ms(value) <= after


def test_many_ids_in_one_millisecond_keep_increasing(uuid7):
    ms = 1_700_000_000_000
    values = [uuid7(ms) for _ in range(10_000)]
    assert len(set(values)) == len(values)
    assert all(a < b for a, b in zip(values, values[1:], strict=False))
    for value in values:
        assert CANONICAL.match(value)
    times = [uuid7_time_ms(v) for v in values]
    assert times[0] == ms
    # the 12-bit counter starts below 64, so at least 4032 ids fit per millisecond;
    # when it runs out the generator borrows the next millisecond
    assert 4032 * (times[-1] - ms + 1) >= 10_000
    assert times[-1] <= ms + 2
    for prev, cur in zip(values, values[1:], strict=False):
        if uuid7_time_ms(prev) == uuid7_time_ms(cur):
            assert counter(cur) == counter(prev) + 1
        else:
            assert uuid7_time_ms(cur) == uuid7_time_ms(prev) + 1
            assert counter(prev) == 0xFFF
            assert counter(cur) == 0


def test_first_id_of_a_millisecond_leaves_room_to_count(uuid7):
    for ms in range(1_700_000_000_000, 1_700_000_000_200):
        assert counter(uuid7(ms)) < 64


def test_clock_going_backwards_still_increasing(uuid7):
    first = uuid7(1_700_000_000_500)
    second = uuid7(1_700_000_000_100)
    assert second > first
    assert uuid7_time_ms(second) == 1_700_000_000_500


@pytest.mark.parametrize(
    "value",
    [
        "018f3a2b-4c5d-7e6f-8a9b-0c1d2e3f4a5b",
        "00000000-0000-0000-0000-000000000000",
        "9f1c2d3e-4b5a-4c6d-8e7f-0a1b2c3d4e5f",  # a version 4 id
    ],
)
def test_is_uuid_accepts(value):
    assert is_uuid(value)


def test_is_uuid_accepts_generated(uuid7):
    assert is_uuid(uuid7())


@pytest.mark.parametrize(
    "value",
    [
        "",
        "018F3A2B-4C5D-7E6F-8A9B-0C1D2E3F4A5B",
        "018f3a2b4c5d7e6f8a9b0c1d2e3f4a5b",
        "{018f3a2b-4c5d-7e6f-8a9b-0c1d2e3f4a5b}",
        "018f3a2b-4c5d-7e6f-8a9b-0c1d2e3f4a5",
        "018f3a2b-4c5d-7e6f-8a9b-0c1d2e3f4a5bb",
        "018f3a2b-4c5d-7e6f-8a9b-0c1d2e3f4a5g",
        "018f3a2b-4c5d-7e6f-8a9b-0c1d2e3f4a5\n",
        "018f3a2b_4c5d_7e6f_8a9b_0c1d2e3f4a5b",
        "018f3a2b-4c5d7-e6f-8a9b-0c1d2e3f4a5b",
        "urn:uuid:018f3a2b-4c5d-7e6f-8a9b-0c",
    ],
)
def test_is_uuid_rejects(value):
    assert not is_uuid(value)


def test_a_forked_process_does_not_repeat_its_parents_random_bits(uuid7):
    """Random bits are read from the kernel in blocks; a fork must not share a block."""
    uuid7()  # the parent holds a block of random bytes now
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its next ids, then out without running pytest's teardown
        os.write(write, ",".join(uuid7() for _ in range(5)).encode())
        os._exit(0)
    os.close(write)
    child = os.read(read, 4096).decode().split(",")
    os.waitpid(pid, 0)
    parent = [uuid7() for _ in range(5)]
    assert len(child) == 5
    assert not {c[19:] for c in child} & {p[19:] for p in parent}  # variant + rand_b


@pytest.mark.parametrize("ms", [-1, 1 << 48])
def test_a_millisecond_outside_48_bits_is_refused(uuid7, ms):
    with pytest.raises(ValueError, match="48 bits"):
        uuid7(ms)


def test_the_compiled_generator_makes_the_python_generators_ids():
    """From the same state (random pools and positions, clocks going back and forth,
    counters running out), the same ids and the same state after each. (A call that
    draws a fresh pool from the kernel can only agree on the time and the position.)"""
    if compiled is None:
        compiled_missing("the compiled id generator")
    saved = compiled.state(), ids.py_state()
    rng = random.Random(7)
    try:
        for _ in range(300):
            start = (
                rng.choice([0, 1_700_000_000_000, (1 << 48) - 2]),
                rng.choice([0, 5, 0xFFE, 0xFFF]),
                bytes(rng.getrandbits(8) for _ in range(rng.choice([0, 8, 12, 24, 4096]))),
                rng.choice([0, 3, 8, 16]),
            )
            compiled.reset(*start)
            ids.py_reset(*start)
            for _ in range(rng.randint(1, 6)):
                ms = rng.choice([None, start[0], start[0] + 1, max(start[0] - 5, 0)])
                _, _, pool, at = ids.py_state()
                fresh_pool = at + 16 > len(pool)  # may draw from the kernel
                made = compiled.uuid7(ms), ids.py_uuid7(ms)
                after = compiled.state(), ids.py_state()
                if ms is not None or uuid7_time_ms(made[0]) == uuid7_time_ms(made[1]):
                    if fresh_pool:
                        assert made[0][:14] == made[1][:14]  # the millisecond
                        assert after[0][0] == after[1][0] and after[0][3] == after[1][3]
                    else:
                        assert made[0] == made[1], start
                        assert after[0] == after[1]
                compiled.reset(*after[1])  # (the clock ticked between the two, or a refill)
    finally:
        compiled.reset(*saved[0])
        ids.py_reset(*saved[1])


def test_ids_uses_the_compiled_generator_when_built():
    assert ids.uuid7 is (compiled.uuid7 if compiled is not None else ids.py_uuid7)
