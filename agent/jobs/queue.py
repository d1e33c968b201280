"""Admission: which pending jobs start now, and why each of the others waits (Slurm's reasons).

Pure: given the active jobs, the quotas, the host's capacity for jobs and its GPUs, `admit` answers
the jobs to launch (with the GPUs each gets) and a reason for every job left PENDING.

- A job waits for its dependencies (`Dependency`), a hold (`Held`) or a retry's backoff (`BeginTime`);
  such a job does not hold up the others. A dependency that ended other than COMPLETED (and was not
  retried) can never be satisfied: `DependencyNeverSatisfied` (Slurm's word); the runner cancels such a
  job when it asked for that (`kill_on_invalid_dep`).
- FIFO within a pipeline; pipelines in order of quota priority (higher first), then by their oldest
  pending job.
- A job fits when its pipeline's running jobs plus it stay within the quota (else `QuotaCpu`,
  `QuotaMemory`, `QuotaGpu`, `QuotaJobs`) and the host has it (capacity less the serving reservation less
  every running job's request, free GPUs; else `Resources`).
- Backfill: behind a head that can't start, a later job starts only if it fits and is no larger than that
  head in CPU, memory and GPUs; others wait with `Priority` (a job of their own pipeline or of a
  higher-priority one is ahead of them).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from agent.jobs.quotas import HostCapacity, gpu_limit
from agent.jobs.record import JobRecord
from agent.schemas.jobs import FINAL_STATES, QuotaSpec

_EPS = 1e-9


@dataclass
class Decision:
    start: list[tuple[JobRecord, list[str]]] = field(default_factory=list)  # (job, GPU UUIDs)
    waiting: dict[str, str] = field(default_factory=dict)  # job id -> pending reason


@dataclass
class _Held:
    cpu: float = 0.0
    mem: int = 0
    gpus: int = 0
    jobs: int = 0

    def add(self, r: JobRecord, ngpus: int) -> None:
        self.cpu += r.job.cpu
        self.mem += r.job.mem
        self.gpus += ngpus
        self.jobs += 1


def gpus_wanted(r: JobRecord) -> int:
    return len(r.gpu_request) if r.gpu_request else r.job.gpus_requested


def never_fits(cpu: float, mem: int, gpus: int, quota: QuotaSpec, host: HostCapacity, inventory: int) -> str | None:
    """Why a request can never start under this quota on this host (a 409 at submit), or None."""
    if quota.cpu is not None and cpu > quota.cpu + _EPS:
        return f"cpu {cpu:g} is more than the pipeline's quota of {quota.cpu:g} cores: it never fits"
    if quota.mem is not None and mem > quota.mem:
        return f"mem {mem} bytes is more than the pipeline's quota of {quota.mem} bytes: it never fits"
    gl = gpu_limit(quota)
    if gl is not None and gpus > gl:
        return f"gpus {gpus} is more than the pipeline's quota of {gl}: it never fits"
    if cpu > host.cpu + _EPS:
        return f"cpu {cpu:g} is more than this host gives jobs ({host.cpu:g} cores after the serving reservation)"
    if mem > host.mem:
        return f"mem {mem} bytes is more than this host gives jobs ({host.mem} bytes after the serving reservation)"
    if gpus > inventory:
        return f"gpus {gpus}: this host has {inventory} GPU(s)"
    return None


def admit(
    active: list[JobRecord],
    quota_of: Callable[[str], QuotaSpec],
    host: HostCapacity,
    gpu_inventory: list[str],
    state_of: Callable[[str], str | None],
    now: float,
) -> Decision:
    """Decide for every PENDING job in `active` (see the module docstring). `state_of(job_id)` answers a
    dependency's state (None: unknown)."""
    d = Decision()
    per_pipe: dict[str, _Held] = {}
    total = _Held()
    gpu_holders: dict[str, set[str]] = {}  # GPU UUID -> pipelines holding it
    pending: dict[str, list[JobRecord]] = {}
    for r in active:
        if r.state == "RUNNING" or r.launching:
            per_pipe.setdefault(r.job.pipeline, _Held()).add(r, len(r.job.gpus))
            total.add(r, len(r.job.gpus))
            for g in r.job.gpus:
                gpu_holders.setdefault(g, set()).add(r.job.pipeline)
        elif r.state == "PENDING":
            # Held, dependent and backing-off jobs are answered here, before any sorting: a long queue of
            # held jobs costs one look each per tick, not a place in every pipeline's sort.
            waiting = _not_ready(r, state_of, now)
            if waiting is not None:
                d.waiting[r.id] = waiting
            else:
                pending.setdefault(r.job.pipeline, []).append(r)
    for jobs in pending.values():
        jobs.sort(key=lambda r: (r.job.submitted_at, r.id))
    order = sorted(pending, key=lambda p: (-quota_of(p).priority, pending[p][0].job.submitted_at))

    host_blocked: list[JobRecord] = []  # heads waiting for the host (Resources), in priority order
    for pipe in order:
        quota = quota_of(pipe)
        held = per_pipe.setdefault(pipe, _Held())
        own_head: JobRecord | None = None
        for r in pending[pipe]:
            ngpus = gpus_wanted(r)
            reason = _quota_reason(r, ngpus, held, quota)
            gpus: list[str] = []
            if reason is None:
                if total.cpu + r.job.cpu > host.cpu + _EPS or total.mem + r.job.mem > host.mem:
                    reason = "Resources"
                else:
                    got = _pick_gpus(r, ngpus, pipe, quota, quota_of, gpu_inventory, gpu_holders)
                    if got is None:
                        reason = "Resources"
                    else:
                        gpus = got
            ahead = [*host_blocked, *([own_head] if own_head is not None else [])]
            if reason is None and any(not _smaller(r, h) for h in ahead):
                reason = "Priority"
            if reason is not None:
                d.waiting[r.id] = reason
                if own_head is None:
                    own_head = r
                    if reason == "Resources":
                        host_blocked.append(r)
                continue
            d.start.append((r, gpus))
            held.add(r, len(gpus))
            total.add(r, len(gpus))
            for g in gpus:
                gpu_holders.setdefault(g, set()).add(pipe)
    return d


def _not_ready(r: JobRecord, state_of: Callable[[str], str | None], now: float) -> str | None:
    if r.hold:
        return "Held"
    if r.job.eligible_at is not None and r.job.eligible_at > now:
        return "BeginTime"
    waiting = None
    for dep in r.job.depends_on:
        state = state_of(dep)
        if state in FINAL_STATES and state != "COMPLETED":
            return "DependencyNeverSatisfied"
        if state != "COMPLETED":
            waiting = "Dependency"
    return waiting


def invalid_dependency(r: JobRecord, state_of: Callable[[str], str | None]) -> str | None:
    """The first dependency of `r` that ended other than COMPLETED, in words ("j-... ended FAILED"), or None."""
    for dep in r.job.depends_on:
        state = state_of(dep)
        if state in FINAL_STATES and state != "COMPLETED":
            return f"dependency {dep} ended {state}"
    return None


def _quota_reason(r: JobRecord, ngpus: int, held: _Held, q: QuotaSpec) -> str | None:
    if q.max_running_jobs is not None and held.jobs + 1 > q.max_running_jobs:
        return "QuotaJobs"
    if q.cpu is not None and held.cpu + r.job.cpu > q.cpu + _EPS:
        return "QuotaCpu"
    if q.mem is not None and held.mem + r.job.mem > q.mem:
        return "QuotaMemory"
    gl = gpu_limit(q)
    if gl is not None and held.gpus + ngpus > gl:
        return "QuotaGpu"
    return None


def _smaller(r: JobRecord, head: JobRecord) -> bool:
    """May `r` backfill ahead of `head`: no larger in any resource."""
    return r.job.cpu <= head.job.cpu + _EPS and r.job.mem <= head.job.mem and gpus_wanted(r) <= gpus_wanted(head)


def _pick_gpus(
    r: JobRecord,
    n: int,
    pipe: str,
    quota: QuotaSpec,
    quota_of: Callable[[str], QuotaSpec],
    inventory: list[str],
    holders: dict[str, set[str]],
) -> list[str] | None:
    """GPUs for the job, or None when the host can't give them now. A GPU held by a job is given to
    another only when every pipeline involved shares (`share_gpus`); a quota's UUID list bounds the choice."""
    if n == 0:
        return []
    allowed = inventory
    if isinstance(quota.gpus, list):
        allowed = [g for g in inventory if g in set(quota.gpus)]
    if r.gpu_request:
        allowed = [g for g in allowed if g in set(r.gpu_request)]

    def free(g: str) -> bool:
        h = holders.get(g)
        if not h:
            return True
        return quota.share_gpus and all(quota_of(p).share_gpus for p in h) and pipe not in h

    got = [g for g in allowed if free(g)][:n]
    return got if len(got) == n else None
