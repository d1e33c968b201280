"""The systemd tier: each job is a transient service unit under the jobs slice, so it lives outside the
agent's unit (never counted against the agent's MemoryMax, never killed with it) and a restarted agent
finds it again by its unit name.

    systemd-run --unit=wk-job-<id> --slice=watchkeeper-jobs-<pipeline>.slice --collect -p MemoryMax=...
        -p CPUQuota=...% -p TasksMax=... -- python wrapper.py --rc ... -- COMMAND

Slice names nest by their dashes: `watchkeeper-jobs-train.slice` is a child of `watchkeeper-jobs.slice`, so
`set_pipeline_limits` and `set_jobs_limits` are `systemctl set-property` on those two slices.
Who may create such units is a privilege decision (docs/jobs.md, "Enforcement tiers"). Not runnable on
this project's machines (systemd is not PID 1): tests check the command lines built and the parsing of
`systemctl show`; every call goes through `run`, which the tests replace.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Sequence

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
    wrapper_argv,
)

JOBS_SLICE = "watchkeeper-jobs.slice"
_ACTIVE = {"active", "activating", "deactivating", "reloading"}
_UNSET = {"", "[not set]", "18446744073709551615"}  # systemd's "no value" for a uint64 property
SHOW_PROPS = "LoadState,ActiveState,SubState,Result,MainPID,ControlGroup,CPUUsageNSec,MemoryCurrent,MemoryPeak"

Runner = Callable[..., subprocess.CompletedProcess]

log = logging.getLogger(__name__)


def escape(name: str) -> str:
    """systemd-escape for one unit-name component: a dash would nest the slice, so it becomes \\x2d."""
    out = []
    for i, ch in enumerate(name):
        if (ch.isascii() and (ch.isalnum() or ch in ":_")) or (ch == "." and i > 0):
            out.append(ch)
        else:
            out.append(f"\\x{ord(ch):02x}")
    return "".join(out)


def unit_name(job_id: str) -> str:
    return f"wk-job-{escape(job_id)}.service"


def pipeline_slice(pipeline: str, jobs_slice: str = JOBS_SLICE) -> str:
    return f"{jobs_slice.removesuffix('.slice')}-{escape(pipeline)}.slice"


def limit_props(limits: Limits, weight: int | str | None = None) -> list[str]:
    """systemd properties for `limits` ("infinity" lifts one)."""
    cpu = f"{max(1, round(limits.cpu * 100))}%" if limits.cpu else ""  # an empty CPUQuota= lifts it
    props = [
        f"MemoryMax={limits.mem if limits.mem else 'infinity'}",
        f"CPUQuota={cpu}",
        f"TasksMax={limits.pids if limits.pids else 'infinity'}",
    ]
    if isinstance(weight, str):
        props.append(f"CPUWeight={weight}")  # "idle" (systemd 252+: the slice's cpu.idle)
    elif weight is not None:
        props.append(f"CPUWeight={max(1, min(10000, weight))}")
    return props


def run_argv(spec: LaunchSpec, jobs_slice: str = JOBS_SLICE, user: str | None = None) -> list[str]:
    """The `systemd-run` command line for `spec`. The environment is passed by name only (`--setenv=K`
    takes the value from systemd-run's own environment), so no value shows in a process listing."""
    argv = [
        "systemd-run",
        f"--unit={unit_name(spec.job_id)}",
        f"--slice={pipeline_slice(spec.pipeline, jobs_slice)}",
        "--collect",
        "--quiet",
        f"--working-directory={spec.workdir}",
        "-p",
        "Type=exec",  # systemd-run returns once the wrapper was exec'd (or fails if it couldn't be)
        "-p",
        "OOMPolicy=continue",  # an OOM kill ends the job's process, not the unit (the wrapper reports it)
        "-p",
        "MemorySwapMax=0",  # a job can't dodge MemoryMax by swapping
        "-p",
        f"StandardOutput=append:{spec.stdout_path}",
        "-p",
        f"StandardError=append:{spec.stderr_path}",
    ]
    for p in limit_props(spec.limits, spec.cpu_weight):
        argv += ["-p", p]
    if user:
        argv += ["-p", f"User={user}"]
    argv += [f"--setenv={k}" for k in sorted(spec.env)]
    return [*argv, "--", *wrapper_argv(spec)]


def parse_show(text: str) -> dict[str, str]:
    """`systemctl show -p A,B unit` output (`A=value` lines) as a dict."""
    out = {}
    for line in text.splitlines():
        k, sep, v = line.partition("=")
        if sep:
            out[k.strip()] = v.strip()
    return out


def show_int(props: dict[str, str], key: str) -> int | None:
    v = props.get(key, "")
    if v in _UNSET:
        return None
    try:
        return int(v)
    except ValueError:
        return None


class SystemdTier:
    name = "systemd"

    def __init__(
        self,
        jobs_slice: str = JOBS_SLICE,
        user: str | None = None,
        run: Runner = subprocess.run,
        cgroup_mount: str = "/sys/fs/cgroup",
    ) -> None:
        self.jobs_slice = jobs_slice
        self.user = user
        self._run = run
        self._mount = cgroup_mount
        self._ooms: dict[str, int] = {}  # the OOM counter last read while the unit lived (--collect drops it)
        self.detail = (
            f"systemd transient units wk-job-<id>.service under {jobs_slice}: MemoryMax (no swap), CPUQuota, "
            "TasksMax, CPUWeight" + (f"; jobs run as {user}" if user else "")
        )

    def _call(self, argv: Sequence[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
        try:
            return self._run(list(argv), capture_output=True, text=True, env=env, timeout=30, check=False)
        except (OSError, subprocess.SubprocessError) as exc:
            raise OSError(f"{argv[0]} failed: {exc}") from exc

    def show(self, unit: str) -> dict[str, str]:
        r = self._call(["systemctl", "show", "-p", SHOW_PROPS, unit])
        return parse_show(r.stdout) if r.returncode == 0 else {}

    # -- limits

    def _set_property(self, unit: str, limits: Limits, weight: int | str | None) -> None:
        r = self._call(["systemctl", "set-property", "--runtime", unit, *limit_props(limits, weight)])
        if r.returncode != 0:
            raise OSError(f"systemctl set-property {unit} failed: {r.stderr.strip() or r.returncode}")

    def set_pipeline_limits(self, pipeline: str, limits: Limits, weight: int = 100) -> None:
        self._set_property(pipeline_slice(pipeline, self.jobs_slice), limits, weight)

    def set_jobs_limits(self, limits: Limits, idle: bool = True) -> None:
        if idle:
            try:
                self._set_property(self.jobs_slice, limits, "idle")
                return
            except OSError as e:  # systemd before 252 has no CPUWeight=idle: the weight then
                log.info("jobs: %s; the jobs slice gets CPUWeight=%d instead", e, JOBS_CPU_WEIGHT)
        self._set_property(self.jobs_slice, limits, JOBS_CPU_WEIGHT)

    # -- lifecycle

    def prepare(self) -> None:
        """Nothing to set up beyond the constructor (kept for the Tier contract)."""

    def check_limits(self, h: JobHandle) -> str | None:
        """The kernel enforces: nothing to watch (kept for the Tier contract)."""
        return None

    def launch(self, spec: LaunchSpec) -> JobHandle:
        spec.stdout_path.parent.mkdir(parents=True, exist_ok=True)
        for p in (spec.stdout_path, spec.stderr_path):
            os.close(os.open(p, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600))  # ours, 0600, before systemd opens it
        unit = unit_name(spec.job_id)
        r = self._call(run_argv(spec, self.jobs_slice, self.user), env=spec.env)
        if r.returncode != 0:
            raise OSError(f"systemd-run {unit} failed: {r.stderr.strip() or f'exit {r.returncode}'}")
        props = self.show(unit)
        pid = show_int(props, "MainPID") or 0
        try:
            ct = psutil.Process(pid).create_time() if pid else 0.0
        except psutil.Error:
            ct = 0.0
        cg = props.get("ControlGroup", "")
        return JobHandle(
            job_id=spec.job_id,
            tier=self.name,
            pid=pid,
            create_time=ct,
            boot_id=boot_id(),
            rc_path=str(spec.rc_path),
            cgroups={"": os.path.join(self._mount, cg.lstrip("/"))} if cg else {},
            unit=unit,
            started_at=time.time(),
            pipeline=spec.pipeline,
        )

    def _read_ooms(self, h: JobHandle) -> int:
        d = h.cgroups.get("")
        if d:
            n = fs.read_keyed(os.path.join(d, "memory.events")).get("oom_kill")
            if n is not None:
                self._ooms[h.job_id] = max(n, self._ooms.get(h.job_id, 0))
        return self._ooms.get(h.job_id, 0)

    def poll(self, h: JobHandle) -> Outcome | None:
        props = self.show(h.unit or unit_name(h.job_id))
        if props.get("ActiveState") in _ACTIVE:
            self._read_ooms(h)
            return None
        oom = self._read_ooms(h) > 0 or props.get("Result") == "oom-kill"
        out = read_rc(h.rc_path)
        if out is None:
            if oom:
                return Outcome(signal=signal.SIGKILL, oom=True, ended_at=time.time())
            why = props.get("Result") or "unit gone"
            return Outcome(lost=f"unit {h.unit} ended ({why}) without the wrapper's exit status", ended_at=time.time())
        return Outcome(exit_code=out.exit_code, signal=out.signal, oom=oom, ended_at=out.ended_at)

    def usage(self, h: JobHandle) -> Usage:
        try:
            props = self.show(h.unit or unit_name(h.job_id))
            ns = show_int(props, "CPUUsageNSec")
            d = h.cgroups.get("")
            return Usage(
                cpu_seconds=None if ns is None else ns / 1e9,
                rss_bytes=show_int(props, "MemoryCurrent"),
                peak_rss_bytes=show_int(props, "MemoryPeak"),  # systemd 255+
                pids=tuple(fs.procs(d)) if d else (),
            )
        except Exception:
            return Usage()

    def terminate(self, h: JobHandle, grace_s: float = 5.0) -> None:
        unit = h.unit or unit_name(h.job_id)
        # SIGTERM to the wrapper only: it forwards it to the command's process group and, once the command
        # ends, kills what the job left behind before writing the rc file.
        self._call(["systemctl", "kill", "--kill-whom=main", "--signal=SIGTERM", unit])
        t = threading.Timer(grace_s, self._kill_spared, args=(h,))
        t.daemon = True
        t.start()

    def _kill_spared(self, h: JobHandle) -> None:
        """After the grace: SIGKILL every task of the unit but the wrapper (which must write the rc file).
        Without a readable cgroup, the whole unit goes (`systemctl kill`), and the rc file with it."""
        d = h.cgroups.get("")
        if d and os.path.isdir(d):
            fs.signal_all(d, signal.SIGKILL, spare=h.pid)
        else:
            self._call(["systemctl", "kill", "--kill-whom=all", "--signal=SIGKILL", h.unit or unit_name(h.job_id)])

    def adopt(self, h: JobHandle) -> str | None:
        decided, why = rc_or_reboot(h)
        if decided:
            return why
        unit = h.unit or unit_name(h.job_id)
        props = self.show(unit)
        if props.get("ActiveState") not in _ACTIVE:
            return f"unit {unit} is not running ({props.get('LoadState', 'unknown')}) and the job left no exit status"
        main = show_int(props, "MainPID")
        if main != h.pid:
            return f"unit {unit}'s main pid is {main}, not the job's wrapper {h.pid}"
        try:
            if abs(psutil.Process(h.pid).create_time() - h.create_time) >= 0.05:
                return f"pid {h.pid} is now another process"
        except psutil.Error as exc:
            return f"pid {h.pid} can't be inspected: {exc}"
        return None

    def release(self, h: JobHandle) -> None:
        self._ooms.pop(h.job_id, None)
        unit = h.unit or unit_name(h.job_id)
        if self.show(unit).get("ActiveState") in _ACTIVE:
            raise OSError(f"job {h.job_id} still runs: terminate it before release")
        # --collect unloads an ended unit; a failed one that lingers (older systemd) is reset here.
        self._call(["systemctl", "reset-failed", unit])
