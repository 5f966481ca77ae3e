"""tracker/spool.py (the local spool file) and tracker/writer.py Batch serialization."""

from __future__ import annotations

import errno

import orjson
import pytest

from tracker import redis_keys as K
from tracker import stream_payload, testing
from tracker.edge.spool import Spool
from tracker.edge.writer import Batch
from tracker.testing import can_mount


@pytest.fixture
def path(tmp_path):
    return tmp_path / "spool" / "edge-0.spool"


def test_new_spool_is_empty_and_creates_folder(path):
    spool = Spool(path)
    assert path.parent.is_dir()
    assert not path.exists()
    assert (spool.size, spool.pending) == (0, False)
    assert spool.read() == []


def test_append_then_read_in_order(path):
    spool = Spool(path)
    spool.append([b"one", b"two"])
    spool.append([b"three"])
    assert spool.read() == [b"one", b"two", b"three"]
    assert spool.size == path.stat().st_size == len(b"one\ntwo\nthree\n")
    assert spool.pending


def test_append_nothing_changes_nothing(path):
    spool = Spool(path)
    spool.append([b"a"])
    spool.append([])
    assert spool.read() == [b"a"]
    assert spool.size == 2


def test_torn_last_line_is_dropped(path):
    spool = Spool(path)
    spool.append([b"first", b"second"])
    with open(path, "ab") as fh:
        fh.write(b'{"b":"half-writ')
    assert spool.read() == [b"first", b"second"]
    assert Spool(path).read() == [b"first", b"second"]


def test_empty_lines_are_skipped(path):
    path.parent.mkdir(parents=True)
    path.write_bytes(b"a\n\n\nb\n")
    assert Spool(path).read() == [b"a", b"b"]


def test_replay_goes_by_chunks_and_resumes_where_it_stopped(path):
    spool = Spool(path)
    lines = [f"batch-{n:02d}".encode() * 10 for n in range(10)]  # 81 bytes a line
    spool.append(lines)
    first = spool.read_chunk(max_bytes=200)
    assert first == lines[:2]  # whole lines only
    spool.advance(first)
    assert spool.size == 8 * 81 and spool.pending
    assert path.stat().st_size == 10 * 81  # the file is not rewritten
    spool.append([b"late"])
    restarted = Spool(path)  # a crash: the position was saved beside the file
    assert restarted.read() == lines[2:] + [b"late"]
    assert restarted.read_chunk(max_bytes=10) == [lines[2]]  # a line longer than a chunk


def test_clear_empties_the_file_and_forgets_the_position(path):
    spool = Spool(path)
    spool.append([b"one", b"two"])
    spool.advance(spool.read_chunk())
    assert not spool.pending and spool.position_path.exists()
    spool.clear()
    assert (spool.size, spool.pending) == (0, False)
    assert path.stat().st_size == 0 and not spool.position_path.exists()
    spool.append([b"three"])
    assert Spool(path).read() == [b"three"]


def test_a_position_beyond_the_file_replays_it_all(path):
    spool = Spool(path)
    spool.append([b"one", b"two"])
    spool.position_path.write_text("5000")  # stale: the file was emptied since
    assert Spool(path).read() == [b"one", b"two"]


def test_torn_tail_longer_than_a_read_is_dropped(path, monkeypatch):
    monkeypatch.setattr("tracker.edge.spool.CHUNK_BYTES", 4)
    path.parent.mkdir(parents=True)
    path.write_bytes(b"first\nsecond\n" + b'{"b":"half-written batch')
    assert Spool(path).read() == [b"first", b"second"]
    assert path.read_bytes() == b"first\nsecond\n"
    path.write_bytes(b"no newline at all")
    assert Spool(path).read() == [] and path.stat().st_size == 0


def test_clear(path):
    spool = Spool(path)
    spool.clear()  # nothing to clear yet: no error
    spool.append([b"one", b"two"])
    spool.clear()
    assert (spool.size, spool.pending) == (0, False)
    assert spool.read() == []
    spool.append([b"three"])
    assert spool.read() == [b"three"]


def test_size_and_pending_survive_a_new_instance(path):
    first = Spool(path)
    first.append([b"one", b"two"])
    second = Spool(path)
    assert second.pending
    assert second.size == first.size == len(b"one\ntwo\n")
    assert second.read() == [b"one", b"two"]
    second.clear()
    third = Spool(path)
    assert (third.size, third.pending) == (0, False)


# -- Batch ------------------------------------------------------------------------------


def make_batch() -> Batch:
    click = {"click_id": "c1", "sub1": "line\nbreak é \u2028", "n": 1}
    orphan = {"visit_id": "o1", "reason": "unknown_link"}
    record = {"click_id": "c1", "ts": 1_700_000_000_000}
    return Batch(
        id="018f3a2b-4c5d-7e6f-8a9b-0c1d2e3f4a5b",
        rows={
            "clicks": [orjson.dumps(click), orjson.dumps({**click, "click_id": "c2"})],
            "orphan_visits": [orjson.dumps(orphan)],
        },
        clicks=[
            ("c1", "v1", 1_700_000_000_000, orjson.dumps(record)),
            ("c2", "v1", 1_700_000_000_001, orjson.dumps({**record, "click_id": "c2"})),
        ],
    )


def test_batch_round_trip():
    batch = make_batch()
    raw = batch.dumps()
    assert b"\n" not in raw  # one spool line per batch
    again = Batch.loads(raw)
    assert again == batch
    assert list(again.rows) == ["clicks", "orphan_visits"]
    assert all(isinstance(r, bytes) for rows in again.rows.values() for r in rows)
    assert all(isinstance(c[3], bytes) and isinstance(c[2], int) for c in again.clicks)


def test_empty_batch_round_trip():
    batch = Batch("b-1")
    assert Batch.loads(batch.dumps()) == batch
    assert batch.count() == 0
    assert batch.entry() == [K.BATCH_ID_FIELD, "b-1"]


def test_batch_round_trip_through_spool(path):
    spool = Spool(path)
    batches = [make_batch(), Batch("second"), Batch("third", rows={"links": [b'{"slug":"x"}']})]
    spool.append([b.dumps() for b in batches])
    assert [Batch.loads(line) for line in Spool(path).read()] == batches


def test_batch_entry_layout():
    batch = make_batch()
    entry = batch.entry(compress=False)
    assert entry[0] == K.BATCH_ID_FIELD == "b"
    assert entry[1] == batch.id
    assert entry[2::2] == ["clicks", "orphan_visits"]
    clicks_payload, orphans_payload = entry[3::2]
    assert clicks_payload == b"\n".join(batch.rows["clicks"])
    # JSONEachRow: one JSON object per line, newlines inside values stay escaped
    assert [orjson.loads(line)["click_id"] for line in clicks_payload.split(b"\n")] == [
        "c1",
        "c2",
    ]
    assert orjson.loads(orphans_payload) == {"visit_id": "o1", "reason": "unknown_link"}
    assert batch.count() == 3
    assert set(entry[2::2]) <= set(K.TABLES)


def test_batch_entry_compressed_holds_the_same_rows():
    """The writer's entries carry each table's rows LZ4-compressed when that is smaller
    (tracker/stream_payload.py); the sink unpacks them to the plain entry's bytes."""
    batch = make_batch()
    batch.rows["clicks"] *= 40  # a realistic batch: rows repeat column names and values
    plain, packed = batch.entry(compress=False), batch.entry()
    assert packed[::2] == plain[::2]
    assert packed[3].startswith(stream_payload.MAGIC)
    assert len(packed[3]) < len(plain[3]) / 4
    assert [stream_payload.unpack(v) for v in packed[3::2]] == plain[3::2]


def test_loads_rejects_a_torn_line():
    raw = make_batch().dumps()
    with pytest.raises(orjson.JSONDecodeError):
        Batch.loads(raw[: len(raw) // 2])


def test_torn_tail_is_cut_before_the_next_append(tmp_path):
    path = tmp_path / "edge-0.spool"
    first = Spool(path)
    first.append([b'{"b":"one"}'])
    with open(path, "ab") as fh:
        fh.write(b'{"b":"to')  # a crash in the middle of a write
    reopened = Spool(path)
    reopened.append([b'{"b":"two"}'])
    assert reopened.read() == [b'{"b":"one"}', b'{"b":"two"}']
    assert reopened.size == path.stat().st_size


@pytest.fixture
def small_disk(tmp_path):
    """A 64 KB tmpfs (needs root, as in CI): a real disk that fills up and turns read-only."""
    if not can_mount():
        pytest.skip("mounting a tmpfs needs root")
    with testing.small_disk(tmp_path / "disk") as mount:
        yield mount


def test_a_full_disk_refuses_the_append_and_keeps_lines_whole(small_disk):
    spool = Spool(small_disk / "edge-0.spool")
    line = b"x" * 5000
    with pytest.raises(OSError) as refused:
        for _ in range(100):
            spool.append([line])
    assert refused.value.errno == errno.ENOSPC
    kept = spool.read()
    assert kept and all(got == line for got in kept)  # the half-written line was cut off
    assert spool.size == (small_disk / "edge-0.spool").stat().st_size
    assert spool.advance(spool.read_chunk()) in (True, False)  # no exception either way
    assert spool.clear()  # truncating frees the space
    spool.append([b"after"])
    assert spool.read() == [b"after"]


def test_a_read_only_disk_still_reads_and_replays_in_memory(small_disk):
    path = small_disk / "edge-0.spool"
    Spool(path).append([b"one", b"two"])
    with open(path, "ab") as fh:
        fh.write(b"torn")
    testing.remount(small_disk, read_only=True)
    spool = Spool(path)  # starting on a read-only disk works
    assert spool.read() == [b"one", b"two"]
    with pytest.raises(OSError):
        spool.append([b"three"])
    assert spool.advance(spool.read_chunk()) is False  # the position stays in memory
    assert not spool.pending
    assert spool.clear() is False
    assert path.read_bytes().startswith(b"one\ntwo\n")  # a restart replays them again
