"""A scripted fleet with jobs and quotas for the jobs screens' snapshot and size tests (real agents are
used by the behaviour tests; snapshots need figures that do not move)."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from agent.schemas.jobs import Job, JobLog, JobsSummary, QuotaList, QuotaSpec, QuotaUsage
from console.core.feeds import FeedState
from console.core.poller import AgentStatus, FleetStatus
from console.jobs.client import JobsFeed, with_jobs
from tests.console.wk_fakes import FROZEN_NOW, FakeSource, down, fleet, up

GIB = 2**30


def make_job(job_id: str, state: str = "RUNNING", pipeline: str = "training", **kw: Any) -> Job:
    age = kw.pop("age", 300.0)
    started = FROZEN_NOW - age + 5 if state != "PENDING" else None
    values: dict[str, Any] = {
        "id": job_id,
        "pipeline": pipeline,
        "state": state,
        "command": ["python", "train.py", "--epochs", "3"],
        "cpu": 2.0,
        "mem": 4 * GIB,
        "submitted_by": "alice",
        "submitted_at": FROZEN_NOW - age,
        "started_at": started,
        "tier": "cgroup-v1" if started else None,
        "time_limit": 3600.0,
    }
    if state == "RUNNING":
        values.update(cpu_now=1.9, rss_bytes=int(1.5 * GIB), pid=4242)
    elif state not in ("PENDING",):
        values.update(ended_at=FROZEN_NOW - 60, elapsed_s=age - 65, peak_rss_bytes=int(0.8 * GIB))
    values.update(kw)
    return Job.model_validate(values)


def quota(
    pipeline: str, alloc: dict[str, float], limit: dict[str, float | None], pending: int = 0, **kw: Any
) -> QuotaUsage:
    near = [r for r, lim in limit.items() if lim and alloc.get(r, 0) / lim >= 0.9]
    return QuotaUsage(
        pipeline=pipeline,
        quota=QuotaSpec(**kw),
        configured=True,
        running_jobs=int(alloc.get("jobs", 0)),
        pending_jobs=pending,
        allocated=alloc,
        used={r: v * 0.8 for r, v in alloc.items()},
        limit=limit,
        near_limit=near,
    )


def gpu01_jobs() -> list[Job]:
    return [
        make_job("j-0001", "RUNNING", age=900, gpus=["GPU-0001"], gpus_requested=1),
        make_job("j-0002", "PENDING", reason="QuotaCpu", age=120),
        make_job("j-0003", "FAILED", exit_code=3, reason="exit code 3", pipeline="validation", age=1200),
        make_job(
            "j-0004",
            "OUT_OF_MEMORY",
            reason="memory limit 512 MiB reached",
            pipeline="batch",
            mem=512 * 2**20,
            age=600,
            exit_code=137,
            signal=9,
        ),
        make_job("j-0005", "CANCELLED", cancelled_by="bob", reason="cancelled by bob", pipeline="batch", age=700),
    ]


def gpu01_quotas() -> QuotaList:
    return QuotaList(
        quotas=[
            quota(
                "batch",
                {"cpu": 1, "mem": 1 * GIB, "gpus": 0, "jobs": 1},
                {"cpu": 8, "mem": 16 * GIB, "gpus": None, "jobs": None},
            ),
            quota(
                "training",
                {"cpu": 3.8, "mem": 7.5 * GIB, "gpus": 1, "jobs": 1},
                {"cpu": 4, "mem": 8 * GIB, "gpus": 2, "jobs": 2},
                pending=1,
                priority=10,
            ),
        ],
        host_cpu=14.0,
        host_mem=56 * GIB,
        serving_reserved_cpu=2.0,
        serving_reserved_mem=8 * GIB,
        tier="cgroup-v1",
    )


def with_summary(agent: AgentStatus, running: int, pending: int) -> AgentStatus:
    from agent.schemas import AgentSummary

    summary = AgentSummary(
        agent_name=agent.name,
        sample_interval_s=2.0,
        snapshot=agent.snapshot,
        alerts_firing={},
        alerts_pending=0,
        rollouts_active=0,
        rollouts_awaiting_approval=0,
        endpoints=[],
        jobs=JobsSummary(running=running, pending=pending, failed_recent=2, quotas_near_limit=1),
    )
    return replace(agent, summary=summary)


def jobs_fleet() -> FleetStatus:
    """gpu-01: five jobs (running, pending on its CPU quota, failed exit 3, out of memory, cancelled by bob) and
    two quotas (training near its CPU and memory limit); cpu-02: down, its last known running job stale;
    cpu-03: an agent without jobs."""
    gpu01 = with_jobs(
        with_summary(up("gpu-01", 0), 1, 1),
        JobsFeed(FeedState.OK, tuple(gpu01_jobs()), 5, gpu01_quotas(), fetched_at=FROZEN_NOW),
    )
    stale_job = make_job("j-0001", "RUNNING", pipeline="etl", age=400)
    stale_quotas = QuotaList(
        quotas=[quota("etl", {"cpu": 2, "mem": 4 * GIB, "jobs": 1}, {"cpu": None, "mem": None})],
        host_cpu=8,
        host_mem=30 * GIB,
        serving_reserved_cpu=0,
        serving_reserved_mem=0,
        tier="psutil",
    )
    cpu02 = with_jobs(down("cpu-02", 1), JobsFeed(FeedState.OK, (stale_job,), 1, stale_quotas, fetched_at=FROZEN_NOW))
    cpu03 = with_jobs(up("cpu-03", 2, gpu_utils=()), JobsFeed(FeedState.NONE))
    return fleet(gpu01, cpu02, cpu03)


@dataclass
class FakeJobsSource(FakeSource):
    """FakeSource with the job routes: logs are scripted per job; actions recorded."""

    logs: dict[str, str] = field(default_factory=dict)
    job_calls: list[tuple[str, str, str, str]] = field(default_factory=list)

    async def job_log(self, name: str, job_id: str, stream: str, offset: int, max_bytes: int,
                      task: int | None = None) -> JobLog:  # fmt: skip
        text = self.logs.get(f"{name}/{job_id}/{stream}" + (f".{task}" if task is not None else ""), "")
        chunk = text.encode()[offset : offset + max_bytes].decode(errors="replace")
        return JobLog(
            job_id=job_id, stream=stream, offset=offset, next_offset=offset + len(chunk.encode()), text=chunk, eof=True
        )

    async def job_action(self, name: str, job_id: str, action: str, reason: str) -> Job:
        self.job_calls.append((name, job_id, action, reason))
        return make_job(job_id, "CANCELLED", cancelled_by="admin")


def jobs_source() -> FakeJobsSource:
    logs = {"gpu-01/j-0001/stdout": "".join(f"epoch 1 step {i} loss {1 / (i + 1):.4f}\n" for i in range(40))}
    return FakeJobsSource(jobs_fleet(), logs=logs)
