"""Per-pipeline quotas: `[[quotas]]` from agent.toml, overridden at run time by PUT/DELETE (persisted as
events in `quota_events`), the default for unknown pipelines, the host's capacity for jobs, and usage
against the limits (what running jobs were allocated, what they measurably use).
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass

import psutil

from agent.config import JobsConfig, QuotaConfig
from agent.jobs.record import JobRecord
from agent.jobs.store import JobStore
from agent.schemas.jobs import QuotaSpec, QuotaUsage

RESOURCES = ("cpu", "mem", "gpus", "gpu_mem", "jobs")


def spec_of(q: QuotaConfig) -> QuotaSpec:
    return QuotaSpec.model_validate(q.model_dump(exclude={"pipeline"}), strict=False)


@dataclass(frozen=True)
class HostCapacity:
    """What jobs together may use on this host: capacity less the serving reservation."""

    cpu: float
    mem: int
    reserved_cpu: float
    reserved_mem: int
    cpu_ids: tuple[int, ...] = ()  # the CPUs jobs may be placed on (agent/jobs/placement.py); () = don't pin

    @classmethod
    def measure(cls, cfg: JobsConfig) -> HostCapacity:
        ids = tuple(sorted(os.sched_getaffinity(0))) if hasattr(os, "sched_getaffinity") else ()
        cpus = float(len(ids) or os.cpu_count() or 1)
        mem = int(psutil.virtual_memory().total)
        return cls(
            cpu_ids=ids,
            cpu=max(0.0, cpus - cfg.serving_reserve_cpu),
            mem=max(0, mem - cfg.serving_reserve_mem),
            reserved_cpu=cfg.serving_reserve_cpu,
            reserved_mem=cfg.serving_reserve_mem,
        )


class QuotaBook:
    """The quota of every pipeline; thread-safe. Changes over the API are durable before they apply."""

    def __init__(self, cfg: JobsConfig, configured: list[QuotaConfig], store: JobStore) -> None:
        self._store = store
        self._lock = threading.Lock()
        self.default = spec_of(cfg.default_quota)
        self._quotas: dict[str, QuotaSpec] = {q.pipeline: spec_of(q) for q in configured}
        self._seq = 0
        for seq, pipeline, body in store.quota_events():
            self._seq = max(self._seq, seq)
            if body is None:
                self._quotas.pop(pipeline, None)
            else:
                self._quotas[pipeline] = QuotaSpec.model_validate_json(body, strict=False)

    def get(self, pipeline: str) -> tuple[QuotaSpec, bool]:
        """(the quota, whether it is configured) - the default when not."""
        with self._lock:
            q = self._quotas.get(pipeline)
        return (q, True) if q is not None else (self.default, False)

    def spec(self, pipeline: str) -> QuotaSpec:
        return self.get(pipeline)[0]

    def pipelines(self) -> list[str]:
        with self._lock:
            return sorted(self._quotas)

    def put(self, pipeline: str, spec: QuotaSpec, principal: str) -> None:
        """Set a pipeline's quota (committed first; raises StoreUnavailable)."""
        with self._lock:
            self._seq += 1
            seq = self._seq
        self._store.quota_event(seq, time.time(), pipeline, spec.model_dump_json(), principal)
        with self._lock:
            self._quotas[pipeline] = spec

    def delete(self, pipeline: str, principal: str) -> bool:
        """Drop a pipeline's quota (the default applies again). False if it had none."""
        with self._lock:
            if pipeline not in self._quotas:
                return False
            self._seq += 1
            seq = self._seq
        self._store.quota_event(seq, time.time(), pipeline, None, principal)
        with self._lock:
            self._quotas.pop(pipeline, None)
        return True


def gpu_limit(q: QuotaSpec) -> int | None:
    if q.gpus is None:
        return None
    return len(q.gpus) if isinstance(q.gpus, list) else int(q.gpus)


def _held(r: JobRecord) -> tuple[float, int, int]:
    """(cores, bytes, GPUs) a running job holds: its request here; for a Slurm job what Slurm allocated
    (its TRES: whole cores, the node's memory unit) once seen running, its request until then."""
    s = r.job.slurm
    if s is not None:
        return (s.alloc_cpu if s.alloc_cpu is not None else r.job.cpu,
                s.alloc_mem if s.alloc_mem is not None else r.job.mem,
                s.alloc_gpus if s.alloc_gpus is not None else r.job.gpus_requested)  # fmt: skip
    return r.job.cpu, r.job.mem, len(r.job.gpus)


def usage_of(pipeline: str, quota: QuotaSpec, configured: bool, recs: list[JobRecord]) -> QuotaUsage:
    """A pipeline's allocation and measured use against its quota (recs: its active jobs)."""
    running = [r for r in recs if r.state == "RUNNING" or r.launching]
    pending = sum(1 for r in recs if r.state == "PENDING" and not r.launching)
    held = [_held(r) for r in running]
    alloc = {
        "cpu": sum(h[0] for h in held),
        "mem": float(sum(h[1] for h in held)),
        "gpus": float(sum(h[2] for h in held)),
        "gpu_mem": float(sum((r.job.gpu_mem or 0) * h[2] for r, h in zip(running, held, strict=True))),
        "jobs": float(len(running)),
    }
    used: dict[str, float | None] = {"cpu": None, "mem": None, "gpus": alloc["gpus"], "gpu_mem": None,
                                     "jobs": float(len(running))}  # fmt: skip
    if running:
        cpus = [r.job.cpu_now for r in running if r.job.cpu_now is not None]
        rss = [r.job.rss_bytes for r in running if r.job.rss_bytes is not None]
        used["cpu"] = sum(cpus) if cpus else None
        used["mem"] = float(sum(rss)) if rss else None
        gmem = [max(r.gpu_peaks.values(), default=0) for r in running if r.gpu_peaks]
        used["gpu_mem"] = float(sum(gmem)) if gmem else None
    else:
        used.update(cpu=0.0, mem=0.0, gpu_mem=0.0)
    limit: dict[str, float | None] = {
        "cpu": quota.cpu,
        "mem": float(quota.mem) if quota.mem is not None else None,
        "gpus": float(gl) if (gl := gpu_limit(quota)) is not None else None,
        "gpu_mem": float(quota.gpu_mem) * (gl or 1) if quota.gpu_mem is not None else None,
        "jobs": float(quota.max_running_jobs) if quota.max_running_jobs is not None else None,
    }
    near = []
    for res in RESOURCES:
        lim = limit[res]
        if not lim:
            continue
        u = used[res]
        # Whichever is higher: what is held (allocated) or what is measurably used.
        level = max(alloc[res], u if u is not None else 0.0)
        if level >= quota.near_limit * lim:
            near.append(res)
    return QuotaUsage(
        pipeline=pipeline,
        quota=quota,
        configured=configured,
        running_jobs=len(running),
        pending_jobs=pending,
        allocated=alloc,
        used=used,
        limit=limit,
        near_limit=near,
    )
