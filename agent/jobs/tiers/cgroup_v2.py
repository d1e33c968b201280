"""The delegated cgroup v2 tier: the agent owns a cgroup subtree (systemd `Delegate=yes`, or a container
that hands one over) and runs jobs in it under kernel limits.

Layout under the agent's own cgroup `<own>` (v2 allows processes only in leaves, so the agent first moves
itself into a leaf of its own — `prepare()`, which the daemon calls once at start):

    <own>/agent/                       the agent's processes
    <own>/jobs/                        set_jobs_limits: all jobs together
    <own>/jobs/<pipeline>/             set_pipeline_limits: the pipeline's quota
    <own>/jobs/<pipeline>/job-<id>/    one job: memory.max (+ memory.swap.max 0), cpu.max, cpu.weight, pids.max

OOM comes from the job's `memory.events` `oom_kill`; the peak from `memory.peak` (kernel 5.19+).
`memory.oom.group` stays off: the kernel must kill the job's process, not the wrapper that reports it.
Every cgroup directory is made and removed through `_mkcg`/`_rmcg`, the one seam the tests replace to
stand an ordinary directory tree in for cgroupfs (this project's machines have no delegated v2).
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time

import psutil

from agent.jobs.tiers import cgroupfs as fs
from agent.jobs.tiers.base import (
    JOBS_CPU_WEIGHT,
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
    with_cpu_idle,
    wrapper_mismatch,
)

WANTED = ("cpu", "memory", "pids")
REQUIRED = ("cpu", "memory")
CPU_PERIOD_US = 100_000


def own_v2_dir(root: str = "/") -> str:
    """Our cgroup's directory in the unified hierarchy (`0::<path>` in /proc/self/cgroup)."""
    for line in (fs.read(os.path.join(root, "proc/self/cgroup")) or "").splitlines():
        if line.startswith("0::"):
            return os.path.join(root, "sys/fs/cgroup", line[3:].strip().lstrip("/"))
    raise OSError("cgroup v2 tier: this process is in no unified (v2) cgroup")


class CgroupV2Tier:
    name = "cgroup-v2"

    def __init__(self, own_dir: str | None = None, root: str = "/") -> None:
        self.own = own_dir or own_v2_dir(root)
        offered = (fs.read(os.path.join(self.own, "cgroup.controllers")) or "").split()
        missing = [c for c in REQUIRED if c not in offered]
        if missing:
            raise OSError(f"cgroup v2 tier: {self.own} is not delegated {', '.join(missing)} (cgroup.controllers)")
        self.controllers = [c for c in WANTED if c in offered]
        self.jobs = os.path.join(self.own, "jobs")
        pids = ", pids.max" if "pids" in self.controllers else " (no pids controller: process count not capped)"
        self.detail = (
            f"cgroup v2, delegated {self.own}: jobs in jobs/<pipeline>/job-<id>; memory.max (no swap), cpu.max, "
            f"cpu.weight{pids}"
        )
        self._prepared = False
        self._popen: dict[str, subprocess.Popen] = {}
        self._lock = threading.Lock()

    # -- the seam the tests replace (a real cgroupfs fills a new directory with its control files)

    def _mkcg(self, path: str) -> None:
        os.mkdir(path)

    def _rmcg(self, path: str) -> bool:
        return fs.rmdir_tree(path)

    # -- set-up

    def prepare(self) -> None:
        """Move every process of our cgroup into `<own>/agent/` and delegate the controllers down to
        `<own>/jobs/`. Idempotent; the daemon calls it once before the first launch."""
        if self._prepared:
            return
        agent = os.path.join(self.own, "agent")
        if not os.path.isdir(agent):
            self._mkcg(agent)
        for pid in fs.procs(self.own):
            try:
                fs.write(os.path.join(agent, "cgroup.procs"), pid)
            except OSError as exc:
                if os.path.exists(f"/proc/{pid}"):
                    raise OSError(exc.errno, f"cgroup v2 tier: can't move pid {pid} into {agent}: {exc}") from exc
        self._enable(self.own)
        if not os.path.isdir(self.jobs):
            self._mkcg(self.jobs)
        self._enable(self.jobs)
        self._prepared = True

    def _enable(self, d: str) -> None:
        have = set((fs.read(os.path.join(d, "cgroup.subtree_control")) or "").split())
        todo = [c for c in self.controllers if c not in have]
        if todo:
            fs.write(os.path.join(d, "cgroup.subtree_control"), " ".join("+" + c for c in todo))

    def _pipeline_dir(self, pipeline: str) -> str:
        self.prepare()
        d = os.path.join(self.jobs, fs.check_name(pipeline, "pipeline"))
        if not os.path.isdir(d):
            self._mkcg(d)
        self._enable(d)
        return d

    # -- limits

    def _apply(self, d: str, limits: Limits, weight: int | None, swap_off: bool) -> None:
        fs.write(os.path.join(d, "memory.max"), limits.mem if limits.mem else "max")
        if swap_off and os.path.exists(os.path.join(d, "memory.swap.max")):
            fs.write(os.path.join(d, "memory.swap.max"), 0)  # a job can't dodge memory.max by swapping
        quota = "max" if not limits.cpu else str(max(1000, round(limits.cpu * CPU_PERIOD_US)))
        fs.write(os.path.join(d, "cpu.max"), f"{quota} {CPU_PERIOD_US}")
        if weight is not None:
            fs.write(os.path.join(d, "cpu.weight"), max(1, min(10000, weight)))
        if "pids" in self.controllers:
            fs.write(os.path.join(d, "pids.max"), limits.pids if limits.pids else "max")

    def set_pipeline_limits(self, pipeline: str, limits: Limits, weight: int = 100) -> None:
        self._apply(self._pipeline_dir(pipeline), limits, weight, swap_off=False)

    def set_jobs_limits(self, limits: Limits, idle: bool = True) -> None:
        self.prepare()
        with_cpu_idle(self.jobs, idle, lambda: self._apply(self.jobs, limits, JOBS_CPU_WEIGHT, swap_off=False))

    # -- lifecycle

    def check_limits(self, h: JobHandle) -> str | None:
        """The kernel enforces: nothing to watch (kept for the Tier contract)."""
        return None

    def launch(self, spec: LaunchSpec) -> JobHandle:
        d = os.path.join(self._pipeline_dir(spec.pipeline), "job-" + fs.check_name(spec.job_id, "job id"))
        self._mkcg(d)  # raises if it exists: a job is never started twice
        try:
            self._apply(d, spec.limits, spec.cpu_weight, swap_off=True)
            p = spawn_wrapper(spec, [os.path.join(d, "cgroup.procs")])
        except BaseException:
            self._rmcg(d)
            raise
        try:
            ct = psutil.Process(p.pid).create_time()
        except psutil.Error:
            ct = 0.0
        if p.popen is not None:
            with self._lock:
                self._popen[spec.job_id] = p.popen
        return JobHandle(
            job_id=spec.job_id,
            tier=self.name,
            pid=p.pid,
            create_time=ct,
            boot_id=boot_id(),
            rc_path=str(spec.rc_path),
            cgroups={"": d},
            started_at=time.time(),
            pipeline=spec.pipeline,
        )

    def _alive(self, h: JobHandle) -> bool:
        p = self._popen.get(h.job_id)
        if p is not None:
            return p.poll() is None
        try:
            proc = psutil.Process(h.pid)
            return abs(proc.create_time() - h.create_time) < 0.05 and proc.status() != psutil.STATUS_ZOMBIE
        except psutil.Error:
            return False

    def poll(self, h: JobHandle) -> Outcome | None:
        if self._alive(h):
            return None
        with self._lock:
            self._popen.pop(h.job_id, None)
        d = h.cgroups.get("", "")
        oom = fs.read_keyed(os.path.join(d, "memory.events")).get("oom_kill", 0) > 0
        self._kill_cgroup(d)  # the wrapper is gone: whatever it left behind goes too
        out = read_rc(h.rc_path)
        if out is None:
            if oom:
                return Outcome(signal=signal.SIGKILL, oom=True, ended_at=time.time())
            return Outcome(lost="the job's wrapper ended without writing its exit status", ended_at=time.time())
        return Outcome(exit_code=out.exit_code, signal=out.signal, oom=oom, ended_at=out.ended_at)

    def usage(self, h: JobHandle) -> Usage:
        try:
            d = h.cgroups.get("", "")
            usec = fs.read_keyed(os.path.join(d, "cpu.stat")).get("usage_usec")
            cur = fs.read_int(os.path.join(d, "memory.current"))
            inactive = fs.read_keyed(os.path.join(d, "memory.stat")).get("inactive_file", 0)
            return Usage(
                cpu_seconds=None if usec is None else usec / 1e6,
                rss_bytes=None if cur is None else max(0, cur - inactive),
                peak_rss_bytes=fs.read_int(os.path.join(d, "memory.peak")),  # None before 5.19
                pids=tuple(fs.procs(d)),
            )
        except Exception:
            return Usage()

    def terminate(self, h: JobHandle, grace_s: float = 5.0) -> None:
        if wait_forked(h.pid):
            fs.wait_populated(h.cgroups.get("", ""))
        fs.signal_all(h.cgroups.get("", ""), signal.SIGTERM, spare=h.pid)
        t = threading.Timer(grace_s, self._kill_spared, args=(h,))
        t.daemon = True
        t.start()

    def _kill_spared(self, h: JobHandle) -> None:
        """SIGKILL all but the wrapper (it writes the rc file), frozen so a forking job can't slip a task
        in between the listing and the kill. `cgroup.kill` can't spare one task, so it isn't used here."""
        d = h.cgroups.get("", "")
        freeze = os.path.join(d, "cgroup.freeze")
        frozen = False
        try:
            fs.write(freeze, 1)
            frozen = True
            deadline = time.monotonic() + 1.0
            while "frozen 1" not in (fs.read(os.path.join(d, "cgroup.events")) or "frozen 1"):
                if time.monotonic() > deadline:
                    break
                time.sleep(0.005)
        except OSError:
            pass
        try:
            fs.signal_all(d, signal.SIGKILL, spare=h.pid)
        finally:
            if frozen:
                try:
                    fs.write(freeze, 0)
                except OSError:
                    pass

    def _kill_cgroup(self, d: str) -> None:
        if not fs.procs(d):
            return
        try:
            fs.write(os.path.join(d, "cgroup.kill"), 1)  # 5.14+: race-free, every task at once
        except OSError:
            fs.signal_all(d, signal.SIGKILL)

    def adopt(self, h: JobHandle) -> str | None:
        decided, why = rc_or_reboot(h)
        if decided:
            return why
        d = h.cgroups.get("", "")
        if not os.path.isdir(d):
            return f"the job's cgroup {d} is gone and the job left no exit status"
        # The wrapper (pid, create time, boot id) is the proof; it never joins the job's cgroup (wrapper.py).
        return wrapper_mismatch(h)

    def release(self, h: JobHandle) -> None:
        with self._lock:
            self._popen.pop(h.job_id, None)
        if self._alive(h):
            raise OSError(f"job {h.job_id} still runs: terminate it before release")
        d = h.cgroups.get("", "")
        self._kill_cgroup(d)
        self._rmcg(d)
