"""The Slurm backend's retry decision (agent/jobs/slurm/backend.py `_retry`) without a cluster: which attempt
is sbatch'ed, and that a retry already in Slurm's queue under the job's tag is adopted, not submitted twice
(the crash case, which a real cluster can't stage on cue). The real round trip is in test_slurm_backend.py."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

from agent.config import SlurmConfig
from agent.jobs.record import JobRecord
from agent.jobs.slurm.backend import SlurmBackend
from agent.jobs.slurm.squeue import SlurmJob
from agent.jobs.slurm.submit import SbatchRequest, SlurmRefused
from agent.schemas.jobs import Job, QuotaSpec, RetryPolicy, SlurmInfo


class Client:
    """Records sbatch calls; answers the next Slurm id, or refuses."""

    def __init__(self, refuse: str | None = None) -> None:
        self.calls: list[SbatchRequest] = []
        self.refuse = refuse

    def sbatch(self, req: SbatchRequest, extra: list[str]) -> int:
        if self.refuse:
            raise SlurmRefused(503, self.refuse)
        self.calls.append(req)
        return 900 + len(self.calls)


def backend(tmp_path: Path, client: Client) -> SlurmBackend:
    quotas = SimpleNamespace(spec=lambda _p: QuotaSpec(mem=2**30))
    svc = SimpleNamespace(cfg=SimpleNamespace(slurm=SlurmConfig()), quotas=quotas, host_name="h", root=tmp_path)
    b = SlurmBackend(svc)  # type: ignore[arg-type]
    b.client = client  # type: ignore[assignment]
    return b


def ended(state: str, exit_code: int | None, policy: RetryPolicy) -> tuple[JobRecord, Job]:
    job = Job(id="j-1", pipeline="train", state=state, reason="", command=["x"], cpu=1, mem=2**20, submitted_at=1.0,
              submitted_by="t", host="h", tier="slurm", backend="slurm", exit_code=exit_code, attempt=1,
              max_retries=policy.max_retries, slurm=SlurmInfo(job_id=500, partition="p"))  # fmt: skip
    return JobRecord(job=job, retry=policy, hold=False), job


def test_a_failed_attempt_is_sbatched_again_with_its_backoff_as_begin(tmp_path) -> None:
    c = Client()
    rec, j = ended("FAILED", 3, RetryPolicy(max_retries=1, backoff_s=20))
    nxt = backend(tmp_path, c)._retry(rec, j, [])
    assert nxt is not None and nxt.job.attempt == 2 and nxt.job.slurm.job_id == 901  # type: ignore[union-attr]
    assert len(c.calls) == 1 and 18 <= (c.calls[0].begin_s or 0) <= 22 and c.calls[0].partition == "p"
    # the last retry used: no more
    last, lj = ended("FAILED", 3, RetryPolicy(max_retries=1))
    lj.attempt = last.job.attempt = 2
    assert backend(tmp_path, c)._retry(last, lj, []) is None and len(c.calls) == 1


def test_a_retry_already_queued_under_the_jobs_tag_is_adopted_not_submitted_twice(tmp_path) -> None:
    c = Client()
    b = backend(tmp_path, c)
    rec, j = ended("FAILED", 3, RetryPolicy(max_retries=2, backoff_s=0))
    queued = [SlurmJob(job_id=499, state="COMPLETED", comment=b.comment("j-1")),  # older: not a retry of 500
              SlurmJob(job_id=612, state="PENDING", comment=b.comment("j-1")),
              SlurmJob(job_id=613, state="PENDING", comment=b.comment("j-other"))]  # fmt: skip
    nxt = b._retry(rec, j, queued)
    assert nxt is not None and nxt.job.slurm.job_id == 612 and c.calls == []  # type: ignore[union-attr]


def test_a_refused_retry_leaves_the_attempt_failed_saying_why(tmp_path) -> None:
    rec, j = ended("FAILED", 3, RetryPolicy(max_retries=2, backoff_s=0))
    assert backend(tmp_path, Client(refuse="Unable to contact slurm controller"))._retry(rec, j, []) is None
    assert j.state == "FAILED" and "not retried: Slurm refused the retry (Unable to contact" in j.reason


def test_out_of_memory_retries_with_more_memory_only_when_asked(tmp_path) -> None:
    c = Client()
    rec, j = ended("OUT_OF_MEMORY", None, RetryPolicy(max_retries=2, backoff_s=0))
    assert backend(tmp_path, c)._retry(rec, j, []) is None
    rec, j = ended("OUT_OF_MEMORY", None, RetryPolicy(max_retries=2, backoff_s=0, oom_mem_factor=2))
    nxt = backend(tmp_path, c)._retry(rec, j, [])
    assert nxt is not None and nxt.job.mem == 2 * 2**20 and c.calls[-1].mem_bytes == 2 * 2**20
