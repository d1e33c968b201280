"""A crash between recording a launch and committing its handle: the next start never runs the job twice.

Real DuckDB file, the real writer thread, real subprocesses; the crash is staged by writing the rows a crashed
agent would have left (a launch on record, with and without the handle file the runner writes after spawning).
"""

from __future__ import annotations

import time
from pathlib import Path

from agent.config import load_config
from agent.jobs import logs
from agent.jobs.record import JobRecord, new_job_id
from agent.jobs.service import JobService
from agent.jobs.store import JobStore
from agent.jobs.tiers.base import LaunchSpec, Limits
from agent.jobs.tiers.psutil_tier import PsutilTier
from agent.schemas.jobs import Job
from agent.store.db import open_store
from agent.store.writer import StoreWriter


def _launching(job_id: str) -> JobRecord:
    now = time.time()
    job = Job(id=job_id, pipeline="p", state="PENDING", command=["sleep", "1"], cpu=0.1, mem=2**26,
              submitted_by="t", submitted_at=now, tier="psutil")  # fmt: skip
    return JobRecord(job=job, launching=True)


def test_restart_after_a_recorded_launch(tmp_path: Path) -> None:
    cfg = load_config(None, {"data_dir": str(tmp_path / "data")})
    cfg.data_dir.mkdir(mode=0o700)
    root = cfg.data_dir / "jobs"
    opened = open_store(cfg.db_path)
    writer = StoreWriter(opened.con, flush_interval=1)
    writer.start()
    store = JobStore(writer, opened.con)
    never, spawned = _launching(new_job_id()), _launching(new_job_id())
    store.save([never, spawned])
    # `spawned` got as far as its wrapper and handle.json (the crash came before the RUNNING commit).
    d = logs.ensure_dir(root, spawned.id)
    marks = tmp_path / "marks"
    spec = LaunchSpec(job_id=spawned.id, pipeline="p", argv=["sh", "-c", f"echo x >> {marks}; sleep 1; exit 7"],
                      env={"PATH": "/usr/bin:/bin"}, workdir=str(d), stdout_path=d / "stdout",
                      stderr_path=d / "stderr", rc_path=d / "rc", limits=Limits())  # fmt: skip
    h = PsutilTier().launch(spec)
    (d / "handle.json").write_text(h.to_json())

    svc = JobService(cfg, store, PsutilTier(), lambda: None)
    adopted, lost = svc.restore()
    assert (adopted, lost) == (1, 1)
    n = svc.get(never.id)
    assert n.state == "LOST" and "not started again" in n.reason
    svc.start()
    try:
        deadline = time.monotonic() + 20
        while svc.get(spawned.id).state == "RUNNING" and time.monotonic() < deadline:
            time.sleep(0.05)
        s = svc.get(spawned.id)
        assert s.state == "FAILED" and s.exit_code == 7 and s.pid == h.pid, s
        time.sleep(0.5)
        assert marks.read_text() == "x\n"  # ran once, adopted, never launched again
        assert svc.get(never.id).state == "LOST"
    finally:
        svc.stop()
        writer.stop()
    # What the restart decided is in the store.
    again = open_store(cfg.db_path)
    rows = dict(again.con.execute("SELECT id, state FROM jobs").fetchall())
    assert rows == {never.id: "LOST", spawned.id: "FAILED"}


def test_a_jobs_cgroup_is_released_only_once_its_end_is_saved(in_process_jobs) -> None:
    """A crash between the two must find the job's cgroup still there: re-adopted, the kernel's OOM counter
    still says whether it was OOM-killed (released first, an OOM kill came back FAILED, signal 9)."""
    from agent.schemas.jobs import JobSubmit

    seen: list[str | None] = []

    class Watching(PsutilTier):
        def release(self, h) -> None:
            cur = svc.store._con.cursor()
            try:  # what the store holds for the job at the moment its cgroup goes
                row = cur.execute("SELECT state FROM jobs WHERE id = ?", [job_id]).fetchone()
            finally:
                cur.close()
            seen.append(row[0] if row else None)
            super().release(h)

    svc = in_process_jobs(Watching())
    job_id = svc.submit(JobSubmit(pipeline="p", command=["true"], cpu=0.1, mem="16M"), "t").id
    svc.start()
    try:
        deadline = time.monotonic() + 20
        while not seen and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        svc.stop()
    assert seen == ["COMPLETED"], seen  # the end was committed first
