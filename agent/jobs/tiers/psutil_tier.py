"""The psutil tier: no cgroup is writable, so the agent watches and enforces itself.

The job's processes are the wrapper's descendants (the wrapper is a child subreaper, so double-forked
children stay among them). Usage is summed over that tree; CPU seconds of reaped children come from
the wrapper's `children_user/system`. Limits are enforced by watching (`check_limits`), not by the
kernel: a tree over its memory is stopped (SIGSTOP, so it can't grow while we act) and then killed,
and the job ends OUT_OF_MEMORY with the reason said. CPU is not capped here (only `nice`); the API says so.
"""

from __future__ import annotations

import signal
import subprocess
import threading
import time

import psutil

from agent.jobs.tiers.base import JobHandle, LaunchSpec, Outcome, Usage, boot_id, read_rc, spawn_wrapper


class PsutilTier:
    name = "psutil"
    detail = "no writable cgroup: memory watched and enforced by the agent (stop, then kill); CPU not capped"

    def __init__(self) -> None:
        self._popen: dict[str, subprocess.Popen] = {}
        self._peak: dict[str, int] = {}
        self._oom: set[str] = set()
        self._mem: dict[str, int] = {}
        self._lock = threading.Lock()

    # -- lifecycle

    def launch(self, spec: LaunchSpec) -> JobHandle:
        p = spawn_wrapper(spec)
        try:
            ct = psutil.Process(p.pid).create_time()
        except psutil.Error:
            ct = 0.0
        with self._lock:
            self._popen[spec.job_id] = p
            if spec.limits.mem:
                self._mem[spec.job_id] = spec.limits.mem
        return JobHandle(
            job_id=spec.job_id,
            tier=self.name,
            pid=p.pid,
            create_time=ct,
            boot_id=boot_id(),
            rc_path=str(spec.rc_path),
            started_at=time.time(),
        )

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
        w, kids = self._tree(h)
        if w is None:
            return Usage(peak_rss_bytes=self._peak.get(h.job_id))
        cpu = 0.0
        rss = 0
        pids = [w.pid]
        for p in [w, *kids]:
            try:
                t = p.cpu_times()
                cpu += t.user + t.system
                if p is w:
                    cpu += t.children_user + t.children_system
                    continue  # the wrapper's own memory is ours, not the job's
                rss += p.memory_info().rss
                pids.append(p.pid)
            except psutil.Error:
                continue
        peak = max(self._peak.get(h.job_id, 0), rss)
        self._peak[h.job_id] = peak
        return Usage(cpu_seconds=cpu, rss_bytes=rss, peak_rss_bytes=peak, pids=tuple(pids))

    def check_limits(self, h: JobHandle) -> str | None:
        """Enforce the memory limit by watching: stop the tree, kill it, say why. Called each tick."""
        limit = self._mem.get(h.job_id)
        if not limit or h.job_id in self._oom:
            return None
        u = self.usage(h)
        if u.rss_bytes is None or u.rss_bytes <= limit:
            return None
        _, kids = self._tree(h)
        for p in kids:
            _signal(p, signal.SIGSTOP)
        for p in kids:
            _signal(p, signal.SIGKILL)
        self._oom.add(h.job_id)
        return f"memory {u.rss_bytes} bytes over the limit {limit} (psutil tier: stopped, then killed)"

    def terminate(self, h: JobHandle, grace_s: float = 5.0) -> None:
        _, kids = self._tree(h)
        for p in kids:
            _signal(p, signal.SIGTERM)
        if kids:
            t = threading.Timer(grace_s, self._kill_rest, args=(h,))
            t.daemon = True
            t.start()

    def _kill_rest(self, h: JobHandle) -> None:
        _, kids = self._tree(h)
        for p in kids:
            _signal(p, signal.SIGKILL)

    def adopt(self, h: JobHandle) -> str | None:
        if h.boot_id and h.boot_id != boot_id():
            return "the host rebooted since the job started" if read_rc(h.rc_path) is None else None
        if read_rc(h.rc_path) is not None:
            return None
        try:
            proc = psutil.Process(h.pid)
        except psutil.NoSuchProcess:
            return f"pid {h.pid} is gone and the job left no exit status"
        except psutil.Error as exc:
            return f"pid {h.pid} can't be inspected: {exc}"
        if abs(proc.create_time() - h.create_time) >= 0.05:
            return f"pid {h.pid} is now another process"
        return None

    def release(self, h: JobHandle) -> None:
        with self._lock:
            self._popen.pop(h.job_id, None)
            self._mem.pop(h.job_id, None)
            self._peak.pop(h.job_id, None)
            self._oom.discard(h.job_id)


def _signal(p: psutil.Process, sig: int) -> None:
    try:
        p.send_signal(sig)
    except psutil.Error:
        pass
