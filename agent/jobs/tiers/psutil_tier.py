"""The psutil tier: no cgroup is writable, so the agent watches and enforces itself.

The job's processes are the wrapper's descendants (the wrapper is a child subreaper, so double-forked
children stay among them). Usage is summed over that tree, read from one /proc scan per runner tick
shared by every job (`proctable.py`); CPU seconds of reaped children come from their parents' child
times. Limits are enforced by watching (`check_limits`, each tick), not
by the kernel: a job over its memory, or the largest job of a pipeline (or of all jobs) over its cap, is
stopped (SIGSTOP, so it can't grow while we act) and then killed, and ends OUT_OF_MEMORY with the reason
said. Between two ticks a job can overshoot. CPU is not capped here, only weighted with `nice`;
process counts are not capped. The API says so (`detail`).
"""

from __future__ import annotations

import math
import signal
import subprocess
import threading
import time

import psutil

from agent.jobs.tiers.base import (
    JobHandle,
    LaunchSpec,
    Limits,
    Outcome,
    Usage,
    boot_id,
    rc_or_reboot,
    read_rc,
    spawn_wrapper,
    wait_forked,
    wrapper_mismatch,
)
from agent.jobs.tiers.proctable import TableCache

_ALL = ""  # the key of the jobs-wide cap in `_caps`


def nice_from_weight(weight: int) -> int:
    """A nice level for a CPU weight (100 = nice 0). Each nice step is ~1.25x the scheduler weight; a
    weight above 100 still gets nice 0: jobs never outrank the agent and serving."""
    if weight >= 100:
        return 0
    return min(19, round(math.log(100 / max(1, weight), 1.25)))


class PsutilTier:
    name = "psutil"
    detail = (
        "no writable cgroup: memory watched and enforced by the agent each tick (stop, then kill; a job can "
        "overshoot between ticks), per job, per pipeline and for all jobs; CPU not capped (nice from weight); "
        "process count not capped"
    )

    def __init__(self) -> None:
        self._popen: dict[str, subprocess.Popen] = {}
        self._handles: dict[str, JobHandle] = {}
        self._peak: dict[str, int] = {}
        self._rss: dict[str, int] = {}  # each job's RSS at its last usage() (this tick's, for the group sums)
        self._oom: set[str] = set()
        self._breach: dict[str, str] = {}  # job -> why it was killed by a pipeline/jobs cap, said once
        self._caps: dict[str, int] = {}  # pipeline (or _ALL) -> memory cap in bytes
        self._lock = threading.Lock()
        self._procs = TableCache()  # one /proc scan per runner tick, shared by every job's usage and check

    def new_tick(self) -> None:
        """The runner starts a tick: the next usage or limit check scans /proc again (once for all jobs)."""
        self._procs.new_tick()

    # -- limits

    def set_pipeline_limits(self, pipeline: str, limits: Limits, weight: int = 100) -> None:
        """Only memory is enforced (the pipeline's jobs' summed RSS, watched); `weight` goes to new jobs
        through LaunchSpec.cpu_weight."""
        with self._lock:
            if limits.mem:
                self._caps[pipeline] = limits.mem
            else:
                self._caps.pop(pipeline, None)

    def set_jobs_limits(self, limits: Limits, idle: bool = True) -> None:
        with self._lock:
            if limits.mem:
                self._caps[_ALL] = limits.mem
            else:
                self._caps.pop(_ALL, None)

    # -- lifecycle

    def prepare(self) -> None:
        """Nothing to set up beyond the constructor (kept for the Tier contract)."""

    def launch(self, spec: LaunchSpec) -> JobHandle:
        p = spawn_wrapper(spec, nice=nice_from_weight(spec.cpu_weight))
        try:
            ct = psutil.Process(p.pid).create_time()
        except psutil.Error:
            ct = 0.0
        h = JobHandle(
            job_id=spec.job_id,
            tier=self.name,
            pid=p.pid,
            create_time=ct,
            boot_id=boot_id(),
            rc_path=str(spec.rc_path),
            started_at=time.time(),
            pipeline=spec.pipeline,
            mem_limit=spec.limits.mem,
        )
        with self._lock:
            if p.popen is not None:
                self._popen[spec.job_id] = p.popen
            self._handles[spec.job_id] = h
        return h

    def poll(self, h: JobHandle) -> Outcome | None:
        p = self._popen.get(h.job_id)
        if p is not None:
            if p.poll() is None:
                return None
        elif self._alive(h):
            return None
        with self._lock:
            self._popen.pop(h.job_id, None)
        out = read_rc(h.rc_path)
        oom = h.job_id in self._oom
        if out is None:
            if oom:
                return Outcome(signal=signal.SIGKILL, oom=True, ended_at=time.time())
            return Outcome(lost="the job's wrapper ended without writing its exit status", ended_at=time.time())
        return Outcome(exit_code=out.exit_code, signal=out.signal, oom=oom, ended_at=out.ended_at)

    def _alive(self, h: JobHandle) -> bool:
        try:
            proc = psutil.Process(h.pid)
            return abs(proc.create_time() - h.create_time) < 0.05 and proc.status() != psutil.STATUS_ZOMBIE
        except psutil.Error:
            return False

    def _tree(self, h: JobHandle) -> tuple[psutil.Process | None, list[psutil.Process]]:
        try:
            w = psutil.Process(h.pid)
            if abs(w.create_time() - h.create_time) >= 0.05:
                return None, []
            return w, w.children(recursive=True)
        except psutil.Error:
            return None, []

    def usage(self, h: JobHandle) -> Usage:
        table = self._procs.get()
        w = table.get(h.pid)
        if w is None or abs(w.create_time - h.create_time) >= 0.05 or w.zombie:
            self._rss[h.job_id] = 0  # ended: no longer counts against its pipeline
            return Usage(peak_rss_bytes=self._peak.get(h.job_id))
        # Reaped children's CPU is in their parent's child_cpu: summed over the live tree it only grows.
        cpu = w.cpu + w.child_cpu
        rss = 0
        pids = [w.pid]
        for p in table.descendants(w.pid):
            cpu += p.cpu + p.child_cpu
            rss += p.rss  # the wrapper's own memory is ours, not the job's
            pids.append(p.pid)
        peak = max(self._peak.get(h.job_id, 0), rss)
        self._peak[h.job_id] = peak
        self._rss[h.job_id] = rss
        return Usage(cpu_seconds=cpu, rss_bytes=rss, peak_rss_bytes=peak, pids=tuple(pids))

    def check_limits(self, h: JobHandle) -> str | None:
        """Enforce memory by watching: the job's own limit, then its pipeline's and all jobs' caps (the
        largest job of a group over its cap is the one stopped, as the kernel's OOM killer would pick).
        Called each tick per running job; the reason is said once, for the job that was killed."""
        if h.job_id in self._breach:
            return self._breach.pop(h.job_id)
        if h.job_id in self._oom:
            return None
        limit = h.mem_limit
        u = self.usage(h)
        if limit and u.rss_bytes is not None and u.rss_bytes > limit:
            self._kill_oom(h)
            return f"memory {u.rss_bytes} bytes over the limit {limit} (psutil tier: stopped, then killed)"
        for key in (h.pipeline, _ALL):
            cap = self._caps.get(key)
            if not cap:
                continue
            with self._lock:
                group = [x for x in self._handles.values() if key == _ALL or x.pipeline == key]
            # Other jobs' figures from their own check this tick (one tree walk per job per tick, not n^2).
            sizes = {x.job_id: self._last_rss(x) for x in group if x.job_id not in self._oom}
            total = sum(sizes.values())
            if total <= cap:
                continue
            victim = self._handles[max(sizes, key=sizes.__getitem__)]
            self._kill_oom(victim)
            what = f"pipeline {key}" if key else "all jobs"
            self._breach[victim.job_id] = (
                f"{what} used {total} bytes over the cap {cap}; this job was the largest "
                f"({sizes[victim.job_id]} bytes) (psutil tier: stopped, then killed)"
            )
            if victim.job_id == h.job_id:
                return self._breach.pop(h.job_id)
        return None

    def _last_rss(self, h: JobHandle) -> int:
        if h.job_id in self._rss:
            return self._rss[h.job_id]
        return self.usage(h).rss_bytes or 0

    def _kill_oom(self, h: JobHandle) -> None:
        _, kids = self._tree(h)
        for p in kids:
            _signal(p, signal.SIGSTOP)
        _, kids = self._tree(h)  # again: a fork between the listing and the stop
        for p in kids:
            _signal(p, signal.SIGSTOP)
        for p in kids:
            _signal(p, signal.SIGKILL)
        self._oom.add(h.job_id)

    def terminate(self, h: JobHandle, grace_s: float = 5.0) -> None:
        wait_forked(h.pid)
        _, kids = self._tree(h)
        for p in kids:
            _signal(p, signal.SIGTERM)
        # Always armed: what was forked after the listing is killed at the grace.
        t = threading.Timer(grace_s, self._kill_rest, args=(h,))
        t.daemon = True
        t.start()

    def _kill_rest(self, h: JobHandle) -> None:
        _, kids = self._tree(h)
        for p in kids:
            _signal(p, signal.SIGKILL)

    def adopt(self, h: JobHandle) -> str | None:
        decided, why = rc_or_reboot(h)
        if why is None and not decided:
            why = wrapper_mismatch(h)
        if why is not None:
            return why
        with self._lock:
            self._handles[h.job_id] = h  # watched again, against its own limit and its pipeline's cap
        return None

    def release(self, h: JobHandle) -> None:
        with self._lock:
            self._popen.pop(h.job_id, None)
            self._handles.pop(h.job_id, None)
            self._peak.pop(h.job_id, None)
            self._rss.pop(h.job_id, None)
            self._breach.pop(h.job_id, None)
            self._oom.discard(h.job_id)


def _signal(p: psutil.Process, sig: int) -> None:
    try:
        p.send_signal(sig)
    except psutil.Error:
        pass
