"""Admission (agent/jobs/queue.py, pure): priority across pipelines, FIFO within, backfill of smaller jobs only."""

from __future__ import annotations

from agent.jobs.queue import admit, never_fits
from agent.jobs.quotas import HostCapacity
from agent.jobs.record import JobRecord
from agent.schemas.jobs import Job, QuotaSpec

HOST = HostCapacity(cpu=4.0, mem=16 * 2**30, reserved_cpu=0, reserved_mem=0)
G = 2**30


def _rec(jid: str, pipeline: str, cpu: float, mem: int = G, t: float = 0.0, state: str = "PENDING",
         gpus: int = 0) -> JobRecord:  # fmt: skip
    job = Job(id=jid, pipeline=pipeline, state=state, command=["x"], cpu=cpu, mem=mem, submitted_by="t",
              submitted_at=t, gpus_requested=gpus)  # fmt: skip
    return JobRecord(job=job)


def _decide(recs, quotas=None, gpus=()):
    q = quotas or {}
    d = admit(recs, lambda p: q.get(p, QuotaSpec()), HOST, list(gpus), lambda _i: None, now=100.0)
    return [r.id for r, _ in d.start], d.waiting


def test_priority_then_fifo_and_backfill_only_when_smaller() -> None:
    recs = [
        _rec("low-1", "low", 1, t=1),
        _rec("high-big", "high", 2, t=2),
        _rec("high-next", "high", 3, t=3),
        _rec("low-small", "low", 0.5, t=4),
    ]
    started, waiting = _decide(recs, {"high": QuotaSpec(priority=10)})
    # high's head goes first although submitted later; its next job does not fit the host (2 + 3 > 4) and
    # waits for Resources; low's jobs are smaller than that head, so they backfill.
    assert started == ["high-big", "low-1", "low-small"]
    assert waiting == {"high-next": "Resources"}


def test_a_larger_job_waits_behind_a_blocked_head() -> None:
    recs = [
        _rec("run", "a", 3, state="RUNNING"),
        _rec("head", "a", 2, t=1),  # the host has 1 core left
        _rec("behind-big", "a", 1, mem=2 * G, t=2),  # fits the host, but more memory than the head
        _rec("behind-small", "a", 0.5, t=3),
        _rec("other-big", "b", 0.5, mem=3 * G, t=4),
        _rec("other-huge", "b", 2, t=5),
    ]
    started, waiting = _decide(recs)
    assert started == ["behind-small"]
    assert waiting == {"head": "Resources", "behind-big": "Priority", "other-big": "Priority",
                       "other-huge": "Resources"}  # fmt: skip


def test_quota_reasons_and_never_fits() -> None:
    quotas = {"q": QuotaSpec(cpu=2, mem=4 * G, max_running_jobs=2, gpus=1)}
    recs = [
        _rec("r1", "q", 1.5, state="RUNNING"),
        _rec("cpu", "q", 1, t=1),
        _rec("mem", "q", 0.5, mem=5 * G, t=2),
    ]
    started, waiting = _decide(recs, quotas)
    assert started == [] and waiting == {"cpu": "QuotaCpu", "mem": "QuotaMemory"}
    started, waiting = _decide([_rec("r1", "q", 0.1, state="RUNNING"), _rec("r2", "q", 0.1, state="RUNNING"),
                                _rec("jobs", "q", 0.1, t=1)], quotas)  # fmt: skip
    assert waiting == {"jobs": "QuotaJobs"}
    started, waiting = _decide([_rec("g", "q", 0.1, gpus=2, t=1)], quotas, gpus=["GPU-1", "GPU-2"])
    assert waiting == {"g": "QuotaGpu"}
    assert "never fits" in never_fits(3, G, 0, quotas["q"], HOST, 0)
    assert "this host has 0 GPU" in never_fits(1, G, 1, QuotaSpec(), HOST, 0)
    assert never_fits(1, G, 0, quotas["q"], HOST, 0) is None
