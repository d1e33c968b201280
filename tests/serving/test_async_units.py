"""The async queue's storage pieces on their own: blob segments, the record file, the state fold."""

from __future__ import annotations

from collections import Counter

from agent.asyncinf.blobs import BlobStore
from agent.asyncinf.records import RecordFile
from agent.asyncinf.table import AsyncTable


def test_a_segment_is_deleted_once_sealed_and_unreferenced(tmp_path):
    b = BlobStore(tmp_path, segment_bytes=100)
    r1, r2 = b.append(b"a" * 60), b.append(b"b" * 30)
    assert r1[0] == r2[0] == 1 and b.read(r2) == b"b" * 30
    r3 = b.append(b"c" * 60)  # does not fit: a new segment
    assert r3[0] == 2 and b.segments() == [1, 2]
    b.unref(r1)
    assert b.segments() == [1, 2]  # r2 still needs it
    b.unref(r2)
    assert b.segments() == [2]
    b.unref(r3)
    assert b.segments() == [2]  # the segment being written stays
    b.close()
    again = BlobStore(tmp_path, segment_bytes=100)  # a restart writes a new segment, keeps what is referred to
    again.keep(Counter())
    assert again.segments() == [3]


def test_the_record_file_skips_a_torn_tail_and_compacts_atomically(tmp_path):
    f = RecordFile(tmp_path / "q.log")
    f.append(["s", "a", "ep", 0, 1, 1.0, "admin", None, 10, 1, [1, 0, 10]])
    f.append(["r", "a", 1, 2.0])
    f.close()
    with open(tmp_path / "q.log", "ab") as fh:
        fh.write(b"\x20\x00\x00\x00garbage")  # a write cut short by a crash
    recs, torn = RecordFile.read(tmp_path / "q.log")
    assert [r[0] for r in recs] == ["s", "r"] and torn == 11
    t = AsyncTable()
    for r in recs:
        t.apply(r, live=False)
    assert t.entries["a"].state == "running" and [e.id for e in t.requeue_running()] == ["a"]
    assert t.pop("ep").id == "a" and t.entries["a"].body_ref == [1, 0, 10]
    g = RecordFile(tmp_path / "q.log")
    g.compact(t.entries["a"].records())
    assert RecordFile.read(tmp_path / "q.log") == (t.entries["a"].records(), 0)


def test_priority_then_fifo(tmp_path):
    t = AsyncTable()
    for seq, (rid, prio) in enumerate([("a", 0), ("b", 5), ("c", 0), ("d", 5), ("e", 9)], start=1):
        t.apply(["s", rid, "ep", prio, seq, float(seq), "p", None, 1, 1, None])
    t.apply(["d", "d", "cancelled", "x", 9.0, None])
    assert [t.pop("ep").id for _ in range(4)] == ["e", "b", "a", "c"] and t.pop("ep") is None
