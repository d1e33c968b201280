"""The runner's tick costs what the active jobs cost: the finished jobs an agent keeps in memory for the log
retention (7 days of them on a busy host) are not looked at every tick, nor copied for every alert evaluation."""

from __future__ import annotations

import time

from agent.jobs.record import JobRecord
from agent.jobs.service import JobService
from agent.jobs.tiers.psutil_tier import PsutilTier
from agent.schemas.jobs import Job, JobSubmit


def _tick_ms(svc: JobService, n: int = 40) -> float:
    svc.runner.tick()  # the first tick also sweeps old logs (once a minute): not what is timed
    t0 = time.perf_counter()
    for _ in range(n):
        svc.runner.tick()
    return 1000 * (time.perf_counter() - t0) / n


def test_a_tick_does_not_grow_with_the_finished_jobs_kept_in_memory(in_process_jobs) -> None:
    svc = in_process_jobs(PsutilTier())
    held = svc.submit(JobSubmit(pipeline="p", command=["true"], hold=True), "t")  # one active job
    bare = _tick_ms(svc)
    now = time.time()
    done = Job.model_validate(held.model_dump() | {"state": "COMPLETED", "ended_at": now, "exit_code": 0})
    with svc.lock:
        for i in range(20_000):
            svc.put(JobRecord(job=done.model_copy(update={"id": f"j-done{i:06d}"})))
    crowded = _tick_ms(svc)
    # The alert kinds judge the active jobs and the failures of the last hour: an hour of completed jobs
    # (each a copy per evaluation) gives no signal and is not copied.
    failed = JobRecord(job=done.model_copy(update={"id": "j-failed0001", "state": "FAILED", "exit_code": 3}))
    with svc.lock:
        svc.put(failed)
    assert sorted(j.id for j in svc.alert_view()[0]) == sorted([held.id, failed.id])
    with svc.lock:
        assert [r.id for r in svc.live_records()] == [held.id]  # the finished ones left `live` at once
        svc.jobs[held.id].job.state = "CANCELLED"  # ended in place (as a cancel does)
        assert svc.live_records() == []
    # Scanning 20,000 records each tick cost ~3.5 ms here; the tick itself ~0.01 ms.
    assert crowded < bare + 1.0, f"{bare:.2f} ms per tick with 1 job, {crowded:.2f} ms with 20,000 finished"
