"""The jobs store's group commit (a real DuckDB file and the real writer thread) and the output files' caps."""

from __future__ import annotations

import threading
import time
from pathlib import Path

from agent.jobs import logs
from agent.jobs.record import JobRecord, new_job_id
from agent.jobs.store import JobStore
from agent.schemas.jobs import Job
from agent.store.db import open_store
from agent.store.writer import StoreWriter


def _rec(pipeline: str = "p") -> JobRecord:
    now = time.time()
    job = Job(id=new_job_id(now), pipeline=pipeline, state="PENDING", command=["true"], cpu=1, mem=1,
              submitted_by="t", submitted_at=now)  # fmt: skip
    return JobRecord(job=job)


def test_concurrent_saves_share_commits_and_all_land(tmp_path: Path) -> None:
    opened = open_store(tmp_path / "s.duckdb")
    writer = StoreWriter(opened.con, flush_interval=5)
    writer.start()
    store = JobStore(writer, opened.con)
    recs = [_rec() for _ in range(400)]
    # Hold the writer busy so saves queue up behind it: they must then go in together.
    gate = threading.Event()
    blocker = threading.Thread(target=lambda: writer.call(lambda _c: gate.wait(5)))
    blocker.start()
    time.sleep(0.05)
    threads = [threading.Thread(target=store.save, args=([r],)) for r in recs[:200]]
    for t in threads:
        t.start()
    time.sleep(1.0)  # every save queued behind the blocker (200 thread starts take well under this)
    gate.set()
    for t in threads:
        t.join()
    blocker.join()
    assert store.stats.commits < 20, store.stats  # 200 saves, a handful of commits
    # Later saves of the same rows are UPDATEs: state moves, no duplicate rows.
    for r in recs[:200]:
        r.job.state = "RUNNING"
    store.save(recs[:200])
    store.save(recs[200:])
    writer.stop()
    opened.con.close()
    again = open_store(tmp_path / "s.duckdb")
    rows = again.con.execute("SELECT state, count(*) FROM jobs GROUP BY state ORDER BY state").fetchall()
    assert rows == [("PENDING", 200), ("RUNNING", 200)]
    loaded = JobStore(writer, again.con).load(ended_since=0)
    assert len(loaded) == 400 and {r.id for r in loaded} == {r.id for r in recs}


def test_ids_sort_by_submit_time_and_never_repeat() -> None:
    ids = [new_job_id() for _ in range(2000)]
    assert len(set(ids)) == 2000 and ids == sorted(ids)
    assert all(i.startswith("j-") and len(i) == 12 for i in ids)


def test_output_cap_keeps_the_tail_and_counts_what_it_dropped(tmp_path: Path) -> None:
    d = logs.ensure_dir(tmp_path / "jobs", "j-x")
    data = b"".join(b"line %05d\n" % i for i in range(1000))  # 11,000 bytes
    (d / "stdout").write_bytes(data)
    cut = logs.cap(d, "stdout", 4000)
    assert cut == len(data) - 2000 and (d / "stdout").stat().st_size == 2000
    assert (d / "stdout").read_bytes() == data[-2000:]
    start, nxt, got, dropped = logs.read(d, "stdout", 0, 100)
    assert dropped == cut and start == cut and got == data[cut : cut + 100] and nxt == cut + 100
    # Logical offsets go on across cuts: appending and cutting again keeps them.
    with open(d / "stdout", "ab") as f:
        f.write(data)
    cut2 = logs.cap(d, "stdout", 4000)
    start, _, got, dropped = logs.read(d, "stdout", 0, 50)
    assert dropped == cut + cut2 and start == dropped and got == data[-2000:][:50]
    assert logs.cap(d, "stdout", 4000) == 0
    # Retention removes the output of jobs that ended long enough ago, and only theirs.
    logs.ensure_dir(tmp_path / "jobs", "j-new")
    gone = logs.sweep(tmp_path / "jobs", {"j-x": time.time() - 100, "j-new": time.time()}, 50)
    assert gone == ["j-x"] and not d.exists() and (tmp_path / "jobs" / "j-new").exists()


def test_old_finished_jobs_leave_memory_but_not_the_store(tmp_path: Path) -> None:
    from agent.config import load_config
    from agent.jobs.service import JobService
    from agent.jobs.tiers.psutil_tier import PsutilTier

    cfg = load_config(None, {"data_dir": str(tmp_path / "d"), "jobs.log_retention": 3600})
    cfg.data_dir.mkdir()
    opened = open_store(cfg.db_path)
    writer = StoreWriter(opened.con, flush_interval=5)
    writer.start()
    old, recent, pending = _rec(), _rec(), _rec()
    for r, ended in ((old, time.time() - 7200), (recent, time.time() - 60)):
        r.job.state, r.job.ended_at, r.job.exit_code = "COMPLETED", ended, 0
    JobStore(writer, opened.con).save([old, recent, pending])
    svc = JobService(cfg, JobStore(writer, opened.con), PsutilTier(), lambda: None)
    svc.restore()
    try:
        assert set(svc.jobs) == {recent.id, pending.id}  # the old one stayed in the store
        assert svc.get(old.id).state == "COMPLETED"  # and is still found
        assert {j.id for j in svc.list(None, None, 100, None).jobs} == {recent.id, pending.id}
        assert svc.state_of(old.id) == "COMPLETED"  # a dependency on it is satisfied
        recent.job.ended_at = time.time() - 7200
        svc.jobs[recent.id].job.ended_at = recent.job.ended_at
        assert svc.evict(time.time() - 3600) == 1 and set(svc.jobs) == {pending.id}
        again = svc.requeue(old.id, "t")  # an old job can still be run again
        assert again.attempt == 2 and svc.get(old.id).state == "PENDING"
    finally:
        writer.stop()


def test_a_read_far_past_the_end_is_empty_not_an_error(tmp_path):
    # Found by the API fuzzer: `?offset=9007199254740991` made the seek fail (EINVAL past the filesystem's
    # largest file) and the agent answered 500.
    (tmp_path / "stdout").write_bytes(b"hello\n")
    for offset in (6, 10, 2**53 - 1, 2**62):
        start, nxt, data, cut = logs.read(tmp_path, "stdout", offset, 65536)
        assert (start, nxt, data, cut) == (offset, offset, b"", 0)
    assert logs.read(tmp_path, "stdout", 2, 65536)[2] == b"llo\n"
