"""The cgroup v1 tier: the kernel enforces each job's memory, CPU and process limits.

Layout, per controller hierarchy (memory, cpu, cpuacct, pids, freezer - each its own mount or co-mounted):

    <mount>/<jobs_root>/                 set_jobs_limits: all jobs together (host less serving's share)
    <mount>/<jobs_root>/<pipeline>/      set_pipeline_limits: the pipeline's quota
    <mount>/<jobs_root>/<pipeline>/<id>  one job: its request

The jobs root is a sibling of the agent's own cgroup, never inside it: a job inside the agent's unit
would count against the agent's MemoryMax and die with it on restart. Only where the hierarchy root is
not writable do jobs go under our own cgroup instead (`detail` says so).

The command's process joins the job's cgroups (the wrapper's `--procs`) before it execs, so nothing of the
job runs unlimited; the wrapper itself stays out (agent/jobs/wrapper.py says why). OOM comes from the job
cgroup's `oom_kill` counter, never from exit 137.
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

CONTROLLERS = ("memory", "cpu", "cpuacct", "pids", "freezer")
REQUIRED = ("memory", "cpu")
CFS_PERIOD_US = 100_000
UNLIMITED_MEM = -1  # what memory.limit_in_bytes takes for "no limit"


def v1_mounts(root: str = "/") -> dict[str, str]:
    """controller -> mount point of its v1 hierarchy, from the mount table under `root`."""
    text = fs.read(os.path.join(root, "proc/self/mounts")) or ""
    out: dict[str, str] = {}
    for line in text.splitlines():
        f = line.split()
        if len(f) >= 4 and f[2] == "cgroup":
            for opt in f[3].split(","):
                if opt in CONTROLLERS:
                    out[opt] = os.path.join(root, f[1].replace("\\040", " ").lstrip("/"))
    return out


def own_cgroups(root: str = "/") -> dict[str, str]:
    """controller -> our own cgroup path within its hierarchy."""
    out: dict[str, str] = {}
    for line in (fs.read(os.path.join(root, "proc/self/cgroup")) or "").splitlines():
        parts = line.split(":", 2)
        if len(parts) == 3:
            for c in parts[1].split(","):
                out[c] = parts[2]
    return out


def oom_from(oom_control: dict[str, int], failcnt: int, sig: int | None) -> bool:
    """Did the kernel OOM-kill in this cgroup? The `oom_kill` counter (kernel 4.13+) says so exactly.
    Older kernels have none: the cgroup is still `under_oom`, or it hit its limit (`failcnt`, which
    also counts reclaim that succeeded) and the command died of SIGKILL — the closest reading left."""
    if "oom_kill" in oom_control:
        return oom_control["oom_kill"] > 0
    return bool(oom_control.get("under_oom")) or (failcnt > 0 and sig == signal.SIGKILL)


def _make_root(mount: str, own: str, jobs_root: str) -> tuple[str, bool]:
    """The jobs root in one hierarchy: at its root, or — where that isn't writable (a container) — under
    our own cgroup. (path, True if it had to nest under our own cgroup)."""
    top = os.path.join(mount, jobs_root)
    try:
        os.makedirs(top, exist_ok=True)
        return top, False
    except OSError:
        nested = os.path.join(mount, own.lstrip("/"), jobs_root)
        if nested == top:
            raise
        os.makedirs(nested, exist_ok=True)
        return nested, True


def shares_from_weight(weight: int) -> int:
    """cpu.shares for a v2-style weight (1..10000, 100 = default = 1024 shares)."""
    return max(2, min(262144, round(1024 * weight / 100)))


class CgroupV1Tier:
    name = "cgroup-v1"

    def __init__(self, jobs_root: str = "watchkeeper.jobs", root: str = "/") -> None:
        fs.check_name(jobs_root, "jobs root")
        mounts = v1_mounts(root)
        missing = [c for c in REQUIRED if c not in mounts]
        if missing:
            raise OSError(f"cgroup v1 tier: no {', '.join(missing)} hierarchy mounted")
        own = own_cgroups(root)
        self._base: dict[str, str] = {}
        notes: list[str] = []
        fallback = []
        for c, mp in mounts.items():
            try:
                self._base[c], nested = _make_root(mp, own.get(c, "/"), jobs_root)
            except OSError as exc:
                if c in REQUIRED:
                    raise OSError(f"cgroup v1 tier: can't create a jobs root in the {c} hierarchy: {exc}") from exc
                notes.append(f"{c} not used (no jobs root can be created: {exc.strerror or exc})")
                continue
            if nested:
                fallback.append(c)
        self.jobs_root = jobs_root
        if fallback:
            notes.append(
                f"hierarchy root not writable for {', '.join(sorted(fallback))}: jobs live under the agent's own "
                "cgroup there and count against its limits"
            )
        if not self._ensure_hierarchy(self._base["memory"]):
            notes.append("memory.use_hierarchy is 0 and can't be set: pipeline and jobs memory caps not enforced")
        self._freezer = "freezer" in self._base
        where = self._base["memory"].removeprefix(mounts["memory"]) or "/"
        swap = os.path.exists(os.path.join(self._base["memory"], "memory.memsw.limit_in_bytes"))
        self.detail = (
            f"cgroup v1 ({', '.join(sorted(self._base))}): jobs in <controller>{where}/<pipeline>/<job>; "
            f"{'memory+swap' if swap else 'memory'}, CFS quota, pids enforced by the kernel"
            + ("" if "pids" in self._base else "; no pids hierarchy: process count not capped")
            + ("" if self._freezer else "; no freezer: kills are not race-free")
            + ("; " + "; ".join(notes) if notes else "")
        )
        self._real: dict[str, str] = {}
        self._popen: dict[str, subprocess.Popen] = {}
        self._protected: set[str] = set()
        self._lock = threading.Lock()

    # -- layout

    def _dirs(self, *parts: str) -> dict[str, str]:
        return {c: os.path.join(b, *parts) for c, b in self._base.items()}

    def _unique(self, dirs: dict[str, str]) -> list[str]:
        """One dir per hierarchy: co-mounted controllers (cpu,cpuacct) share a directory."""
        seen: dict[str, str] = {}
        for c, d in dirs.items():
            # The mount's real path, once: a realpath per dir per launch was a sixth of the runner's time.
            real = self._real.get(c)
            if real is None:
                real = self._real[c] = os.path.realpath(self._base[c]) if c in self._base else ""
            rel = os.path.relpath(d, self._base[c]) if c in self._base else d
            seen.setdefault(os.path.normpath(os.path.join(real, rel)) if real else os.path.realpath(d), d)
        return list(seen.values())

    @staticmethod
    def _ensure_hierarchy(memdir: str) -> bool:
        path = os.path.join(memdir, "memory.use_hierarchy")
        if fs.read_int(path) in (1, None):
            return True
        try:
            fs.write(path, 1)
        except OSError:
            return False
        return fs.read_int(path) == 1

    # -- limits

    def _apply(self, dirs: dict[str, str], limits: Limits, weight: int | None) -> None:
        mem = dirs.get("memory")
        if mem:
            _set_memory(mem, limits.mem if limits.mem else UNLIMITED_MEM)
        cpu = dirs.get("cpu")
        if cpu:
            _set_cpu(cpu, limits.cpu)
            if weight is not None:
                fs.write(os.path.join(cpu, "cpu.shares"), shares_from_weight(weight))
        pids = dirs.get("pids")
        if pids:
            fs.write(os.path.join(pids, "pids.max"), limits.pids if limits.pids else "max")

    def set_pipeline_limits(self, pipeline: str, limits: Limits, weight: int = 100) -> None:
        """The pipeline's quota on its parent cgroup: its jobs together can never exceed it."""
        dirs = self._dirs(fs.check_name(pipeline, "pipeline"))
        for d in self._unique(dirs):
            os.makedirs(d, exist_ok=True)
        self._ensure_hierarchy(dirs["memory"])
        self._apply(dirs, limits, weight)

    def set_jobs_limits(self, limits: Limits, idle: bool = True) -> None:
        """The limits of all jobs together (host capacity less the serving reservation)."""
        with_cpu_idle(self._base.get("cpu"), idle, lambda: self._apply(dict(self._base), limits, JOBS_CPU_WEIGHT))

    # -- lifecycle

    def prepare(self) -> None:
        """Nothing to set up beyond the constructor (kept for the Tier contract)."""

    def check_limits(self, h: JobHandle) -> str | None:
        """The kernel enforces: nothing to watch (kept for the Tier contract)."""
        return None

    def launch(self, spec: LaunchSpec) -> JobHandle:
        pipe = fs.check_name(spec.pipeline, "pipeline")
        job = fs.check_name(spec.job_id, "job id")
        for d in self._unique(self._dirs(pipe)):
            os.makedirs(d, exist_ok=True)
        dirs = self._dirs(pipe, job)
        made = []
        try:
            for d in self._unique(dirs):
                os.mkdir(d)  # a job is never started twice: an existing cgroup is an error
                made.append(d)
            self._ensure_hierarchy(dirs["memory"])
            self._apply(dirs, spec.limits, spec.cpu_weight)
            p = spawn_wrapper(spec, [os.path.join(d, "cgroup.procs") for d in self._unique(dirs)])
        except BaseException:
            for d in made:
                fs.rmdir_tree(d)
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
            cgroups=dirs,
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
            self._protect_wrapper(h)
            return None
        with self._lock:
            self._popen.pop(h.job_id, None)
        mem = h.cgroups.get("memory", "")
        ctl = fs.read_keyed(os.path.join(mem, "memory.oom_control"))
        failcnt = fs.read_int(os.path.join(mem, "memory.failcnt")) or 0
        # The wrapper kills what the job left behind; if the wrapper itself was killed, its orphans
        # are still in the cgroup: nothing of a job outlives it.
        self._kill_all(h)
        out = read_rc(h.rc_path)
        if out is None:
            if oom_from(ctl, failcnt, signal.SIGKILL):
                return Outcome(signal=signal.SIGKILL, oom=True, ended_at=time.time())
            return Outcome(lost="the job's wrapper ended without writing its exit status", ended_at=time.time())
        oom = oom_from(ctl, failcnt, out.signal)
        return Outcome(exit_code=out.exit_code, signal=out.signal, oom=oom, ended_at=out.ended_at)

    def _protect_wrapper(self, h: JobHandle) -> None:
        """Once the command is forked, make the wrapper the host-wide OOM killer's last choice. The job's own
        OOM kills can't reach it: the wrapper never joins the job's cgroups (agent/jobs/wrapper.py)."""
        if h.job_id in self._protected:
            return
        try:
            if not fs.read(f"/proc/{h.pid}/task/{h.pid}/children"):
                return  # not forked yet: the command would inherit the adjustment
            fs.write(f"/proc/{h.pid}/oom_score_adj", -1000)
        except OSError:
            pass
        self._protected.add(h.job_id)

    def usage(self, h: JobHandle) -> Usage:
        try:
            mem = h.cgroups.get("memory", "")
            cpuacct = h.cgroups.get("cpuacct")
            ns = fs.read_int(os.path.join(cpuacct, "cpuacct.usage")) if cpuacct else None
            used = fs.read_int(os.path.join(mem, "memory.usage_in_bytes"))
            stat = fs.read_keyed(os.path.join(mem, "memory.stat"))
            # The working set, as `docker stats` shows it: page cache the kernel would drop first is not the job's.
            rss = None if used is None else max(0, used - stat.get("total_inactive_file", 0))
            peak = fs.read_int(os.path.join(mem, "memory.max_usage_in_bytes"))
            return Usage(
                cpu_seconds=None if ns is None else ns / 1e9,
                rss_bytes=rss,
                peak_rss_bytes=peak,
                pids=tuple(fs.procs(mem)),
            )
        except Exception:
            return Usage()

    def terminate(self, h: JobHandle, grace_s: float = 5.0) -> None:
        mem = h.cgroups.get("memory", "")
        if wait_forked(h.pid):
            fs.wait_populated(mem)
        fs.signal_all(mem, signal.SIGTERM, spare=h.pid)
        # Always armed: a task that joined or forked after the list was read is killed at the grace.
        t = threading.Timer(grace_s, self._kill_all, args=(h, h.pid))
        t.daemon = True
        t.start()

    def _kill_all(self, h: JobHandle, spare: int | None = None) -> None:
        """SIGKILL every task of the job (but `spare`, the wrapper that must write the rc file).
        Frozen first where the freezer is mounted, so a forking job can't add tasks while we read the list."""
        mem = h.cgroups.get("memory", "")
        if not [p for p in fs.procs(mem) if p != spare]:
            return
        frz = h.cgroups.get("freezer") if self._freezer else None
        frozen = False
        if frz and os.path.isdir(frz):
            try:
                fs.write(os.path.join(frz, "freezer.state"), "FROZEN")
                frozen = True
                deadline = time.monotonic() + 1.0
                while (fs.read(os.path.join(frz, "freezer.state")) or "").strip() != "FROZEN":
                    if time.monotonic() > deadline:
                        break
                    time.sleep(0.005)
            except OSError:
                frozen = False
        try:
            for _ in range(3):  # unfrozen, a forking job may add a task between read and kill
                if not fs.signal_all(mem, signal.SIGKILL, spare=spare):
                    break
                if frozen:
                    break
        finally:
            if frozen:
                try:
                    fs.write(os.path.join(frz, "freezer.state"), "THAWED")
                except OSError:
                    pass

    def adopt(self, h: JobHandle) -> str | None:
        decided, why = rc_or_reboot(h)
        if decided:
            return why
        mem = h.cgroups.get("memory", "")
        if not os.path.isdir(mem):
            return f"the job's cgroup {mem} is gone and the job left no exit status"
        # The wrapper (pid, create time, boot id) is the proof; it never joins the job's cgroup (wrapper.py).
        return wrapper_mismatch(h)

    def release(self, h: JobHandle) -> None:
        with self._lock:
            self._popen.pop(h.job_id, None)
            self._protected.discard(h.job_id)
        if self._alive(h):
            raise OSError(f"job {h.job_id} still runs: terminate it before release")
        self._kill_all(h)
        for d in self._unique(h.cgroups):
            fs.rmdir_tree(d)


def _set_memory(memdir: str, limit: int) -> None:
    """memory.limit_in_bytes, and memory.memsw.limit_in_bytes to the same value where swap accounting
    is on, so a job can't dodge its limit by swapping. memsw must stay >= mem: the order depends on
    whether the limit goes up or down."""
    mem = os.path.join(memdir, "memory.limit_in_bytes")
    sw = os.path.join(memdir, "memory.memsw.limit_in_bytes")
    if not os.path.exists(sw):
        fs.write(mem, limit)
        return
    cur = fs.read_int(mem)
    raising = limit == UNLIMITED_MEM or (cur is not None and limit > cur)
    first, second = (sw, mem) if raising else (mem, sw)
    fs.write(first, limit)
    fs.write(second, limit)


def _set_cpu(cpudir: str, cores: float | None) -> None:
    """CFS quota. v1 refuses (EINVAL) a child quota above its parent's: a job's quota is clamped to its
    ancestors' (admission keeps requests within the quota; this keeps a racing change from failing a launch),
    and a parent lowered below a child's quota first lowers the children."""
    fs.write(os.path.join(cpudir, "cpu.cfs_period_us"), CFS_PERIOD_US)
    quota = -1 if not cores else max(1000, round(cores * CFS_PERIOD_US))
    if quota != -1:
        cap = _ancestor_quota(cpudir)
        if cap is not None:
            quota = min(quota, cap)
        _clamp_children(cpudir, quota)
    fs.write(os.path.join(cpudir, "cpu.cfs_quota_us"), quota)


def _ancestor_quota(cpudir: str) -> int | None:
    """The tightest quota above `cpudir`, in CFS_PERIOD_US units (None: unlimited)."""
    best = None
    d = os.path.dirname(cpudir)
    while os.path.isfile(os.path.join(d, "cpu.cfs_quota_us")):
        q = fs.read_int(os.path.join(d, "cpu.cfs_quota_us"))
        p = fs.read_int(os.path.join(d, "cpu.cfs_period_us")) or CFS_PERIOD_US
        if q is not None and q > 0:
            scaled = q * CFS_PERIOD_US // p
            best = scaled if best is None else min(best, scaled)
        parent = os.path.dirname(d)
        if parent == d:
            break
        d = parent
    return best


def _clamp_children(cpudir: str, quota: int) -> None:
    try:
        entries = list(os.scandir(cpudir))
    except OSError:
        return
    for e in entries:
        if not e.is_dir(follow_symlinks=False):
            continue
        f = os.path.join(e.path, "cpu.cfs_quota_us")
        q = fs.read_int(f)
        if q is not None and q > quota:
            _clamp_children(e.path, quota)
            fs.write(f, quota)
