"""Usage of running jobs, sampled about once a second on the runner thread: CPU seconds and cores now, RSS
and its peak (from the tier), GPU memory per GPU from the latest GPU sample's processes matched to the
job's pids (NVML per-process memory), GPU-seconds held; `job_usage` and `quota_usage` rows; output caps.

A job over its `gpu_mem` (per GPU) is stopped: `CUDA_VISIBLE_DEVICES` hides other GPUs but caps nothing,
so watching is the only enforcement there is.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

from agent.jobs import logs
from agent.jobs.quotas import usage_of
from agent.jobs.record import JobRecord
from agent.schemas.jobs import GpuUse

if TYPE_CHECKING:
    from agent.jobs.service import JobService

log = logging.getLogger("watchkeeper.jobs")


class Sampler:
    def __init__(self, svc: JobService) -> None:
        self.svc = svc
        self._last_gpu_ts: float | None = None

    def sample(self, running: list[JobRecord], changed: list[JobRecord]) -> None:
        svc = self.svc
        now = time.time()
        snap = svc.snapshot()
        gpu_by_pid: dict[int, list[tuple[str, int]]] = {}
        gpu_source = snap is not None and snap.gpu_status.source != "none"
        if snap is not None:
            for g in snap.gpus:
                for p in g.processes:
                    if p.used_memory_bytes is not None:
                        gpu_by_pid.setdefault(p.pid, []).append((g.uuid, p.used_memory_bytes))
        rows = []
        for rec in running:
            h = rec.handle
            if h is None:
                continue
            try:
                u = svc.tier.usage(h)
            except Exception as e:  # usage must never stop the runner
                log.debug("job %s: usage failed: %s", rec.id, e)
                continue
            gpu_now = self._gpu(rec, u.pids, gpu_by_pid, gpu_source)
            with svc.lock:
                j = rec.job
                mono = time.monotonic()
                if u.cpu_seconds is not None:
                    if rec.last_cpu is not None and mono > rec.last_cpu[0]:
                        j.cpu_now = max(0.0, (u.cpu_seconds - rec.last_cpu[1]) / (mono - rec.last_cpu[0]))
                    rec.last_cpu = (mono, u.cpu_seconds)
                    j.cpu_seconds = u.cpu_seconds
                j.rss_bytes = u.rss_bytes
                if u.peak_rss_bytes is not None:
                    j.peak_rss_bytes = max(j.peak_rss_bytes or 0, u.peak_rss_bytes)
                if j.started_at is not None:
                    j.elapsed_s = now - j.started_at
                j.gpu_use = self._gpu_use(rec, gpu_source)
            rows.append((now, j.id, j.attempt, j.pipeline, j.cpu_seconds, j.cpu_now, j.rss_bytes, gpu_now))
            self._gpu_limit(rec, changed)
            d = logs.job_dir(svc.root, rec.id)
            for stream in logs.STREAMS:
                try:
                    logs.cap(d, stream, svc.cfg.log_max_bytes)
                except OSError as e:
                    log.warning("job %s: could not cap %s: %s", rec.id, stream, e)
        if rows:
            svc.store.usage(rows)
        self._quota_rows(now)

    def final(self, rec: JobRecord) -> None:
        """One last look before a job's end is recorded (its CPU seconds from the tier)."""
        if rec.handle is None:
            return
        try:
            u = self.svc.tier.usage(rec.handle)
        except Exception:
            return
        with self.svc.lock:
            if u.cpu_seconds is not None and u.cpu_seconds >= (rec.job.cpu_seconds or 0):
                rec.job.cpu_seconds = u.cpu_seconds
            if u.peak_rss_bytes is not None:
                rec.job.peak_rss_bytes = max(rec.job.peak_rss_bytes or 0, u.peak_rss_bytes)
            rec.job.rss_bytes = None
            rec.job.cpu_now = None

    # ------------------------------------------------------------------ GPUs

    def _gpu(self, rec: JobRecord, pids: tuple[int, ...], by_pid: dict[int, list[tuple[str, int]]],
             source: bool) -> int | None:  # fmt: skip
        """This sample's GPU memory of the job's processes, per GPU into the record; total bytes."""
        if not source or not rec.job.gpus:
            return None
        per: dict[str, int] = {}
        for pid in pids:
            for uuid, used in by_pid.get(pid, ()):
                per[uuid] = per.get(uuid, 0) + used
        interval = self.svc.cfg.usage_interval
        for uuid in rec.job.gpus:
            rec.gpu_seconds[uuid] = rec.gpu_seconds.get(uuid, 0.0) + interval
        for uuid, used in per.items():
            rec.gpu_peaks[uuid] = max(rec.gpu_peaks.get(uuid, 0), used)
        rec.gpu_now = per
        return sum(per.values())

    def _gpu_use(self, rec: JobRecord, source: bool) -> list[GpuUse]:
        return [
            GpuUse(
                uuid=u,
                seconds=rec.gpu_seconds.get(u) if source else None,
                peak_mem_bytes=rec.gpu_peaks.get(u) if source else None,
            )
            for u in rec.job.gpus
        ]

    def _gpu_limit(self, rec: JobRecord, changed: list[JobRecord]) -> None:
        limit = rec.job.gpu_mem
        per = rec.gpu_now
        if not limit or rec.stopping is not None or rec.handle is None:
            return
        over = [(u, b) for u, b in per.items() if b > limit]
        if not over:
            return
        uuid, used = over[0]
        rec.stopping = "gpu_mem"
        rec.stop_reason = f"stopped: GPU memory {used} bytes on {uuid} is over the job's gpu_mem limit of {limit} bytes"
        self.svc.tier.terminate(rec.handle, self.svc.cfg.terminate_grace)
        changed.append(rec)

    # ------------------------------------------------------------------ quota series

    def _quota_rows(self, now: float) -> None:
        svc = self.svc
        with svc.lock:
            by_pipe: dict[str, list[JobRecord]] = {}
            for r in svc.jobs.values():
                if r.active:
                    by_pipe.setdefault(r.job.pipeline, []).append(r)
        pipes = set(by_pipe) | set(svc.quotas.pipelines())
        rows = []
        for p in sorted(pipes):
            spec, configured = svc.quotas.get(p)
            with svc.lock:
                u = usage_of(p, spec, configured, by_pipe.get(p, []))
            for res, alloc in u.allocated.items():
                rows.append((now, p, res, alloc, u.used.get(res), u.limit.get(res)))
        if rows:
            svc.store.quota_usage(rows)
