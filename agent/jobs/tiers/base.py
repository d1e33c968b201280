"""The contract between the job queue and an enforcement tier.

A tier launches a job's wrapper (`agent/jobs/wrapper.py`) under the job's limits and answers four
questions about it for as long as it lives — is it over (and how), what does it use, stop it, is this
still the process we started — including after the agent itself was restarted (`adopt`). Everything a
restarted agent needs to find the job again is in `JobHandle`, which the queue persists in the store.

Tiers are blocking and thread-safe per handle; the queue calls them from its own thread, never from
the event loop.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Protocol

import psutil

WRAPPER = str(Path(__file__).resolve().parents[1] / "wrapper.py")


@dataclass(frozen=True)
class Limits:
    """What the tier enforces on one job. None: not limited by this tier (admission still counts it)."""

    cpu: float | None = None  # cores (CFS quota)
    mem: int | None = None  # bytes
    pids: int | None = None  # processes + threads


@dataclass(frozen=True)
class LaunchSpec:
    job_id: str
    pipeline: str
    argv: list[str]
    env: dict[str, str]  # the whole environment the command gets
    workdir: str
    stdout_path: Path
    stderr_path: Path
    rc_path: Path
    limits: Limits
    cpu_weight: int = 100  # relative share under contention (from the pipeline's priority)
    cpus: tuple[int, ...] = ()  # CPU affinity the wrapper sets for the whole job; () = any
    user: str | None = None  # the account the command runs as (`[jobs] run_as`); None: the agent's


@dataclass
class JobHandle:
    """What proves a running job is the one we started: the wrapper's pid + create time + boot id,
    and the tier's own name for it (cgroup paths per controller, or a systemd unit)."""

    job_id: str
    tier: str
    pid: int
    create_time: float  # psutil's create_time of the wrapper
    boot_id: str
    rc_path: str
    cgroups: dict[str, str] = field(default_factory=dict)  # controller ("" for v2) -> absolute dir
    unit: str | None = None
    started_at: float = 0.0
    pipeline: str = ""  # the psutil tier sums a pipeline's jobs against its memory cap
    mem_limit: int | None = None  # what the psutil tier watches (the kernel holds it in the other tiers)

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> JobHandle:
        """A persisted handle; keys a newer agent added are ignored, so a downgrade can still adopt."""
        d = json.loads(text)
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


@dataclass(frozen=True)
class Usage:
    cpu_seconds: float | None = None
    rss_bytes: int | None = None
    peak_rss_bytes: int | None = None
    pids: tuple[int, ...] = ()  # every live process of the job (wrapper included) - for NVML matching


@dataclass(frozen=True)
class Outcome:
    """How a job ended. `oom`: the tier's OOM counter moved (not guessed from exit 137).
    `lost`: we can't say how it ended (the wrapper vanished without an rc file); why."""

    exit_code: int | None = None
    signal: int | None = None
    oom: bool = False
    lost: str | None = None
    ended_at: float | None = None


class Tier(Protocol):
    name: str  # "systemd" | "cgroup-v2" | "cgroup-v1" | "psutil"
    detail: str  # said once in the API: where jobs live, what is and isn't enforced

    def prepare(self) -> None:
        """One-time set-up before the first launch (cgroup v2 moves the agent into a leaf). Idempotent."""

    def launch(self, spec: LaunchSpec) -> JobHandle:
        """Start the job under its limits; raises OSError with a clear message when it can't."""

    def check_limits(self, h: JobHandle) -> str | None:
        """Called each tick per running job. Tiers whose kernel enforces answer None; the psutil tier
        enforces here and says why it killed the job (once)."""

    def poll(self, h: JobHandle) -> Outcome | None:
        """None while the job runs; its outcome once the wrapper is gone."""

    def usage(self, h: JobHandle) -> Usage:
        """What the job uses now (never raises: unknown figures are None)."""

    def terminate(self, h: JobHandle, grace_s: float = 5.0) -> None:
        """SIGTERM the job's processes (not the wrapper, which must write the rc file); SIGKILL any
        still alive after `grace_s`. Returns at once; `poll` tells when it is over."""

    def adopt(self, h: JobHandle) -> str | None:
        """After an agent restart: None if `h` still names our job (alive or ended with an rc
        file), else why not (the reason a job is marked LOST)."""

    def release(self, h: JobHandle) -> None:
        """Free what the tier holds for an ended job (remove its cgroup). Idempotent."""

    def set_pipeline_limits(self, pipeline: str, limits: Limits, weight: int = 100) -> None:
        """The pipeline's quota on a parent of all its jobs, so the pipeline can never exceed it even if
        admission were wrong; `weight` (1..10000, 100 default) its CPU share under contention."""

    def set_jobs_limits(self, limits: Limits, idle: bool = True) -> None:
        """The limits of all jobs together: host capacity less the serving reservation. `idle`: the jobs
        run in the host's idle CPU class (cgroup `cpu.idle`) where the kernel has it; else, or when
        False, at JOBS_CPU_WEIGHT."""


# ----------------------------------------------------------------------------- shared by the tiers


def boot_id() -> str:
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            return f.read().strip()
    except OSError:
        return ""


def wrapper_argv(spec: LaunchSpec, procs_files: Sequence[str] = ()) -> list[str]:
    """The wrapper's command line for `spec` (the command's process joins `procs_files` before it execs)."""
    argv = [sys.executable, "-I", "-S", WRAPPER, "--rc", str(spec.rc_path)]
    for f in procs_files:
        argv += ["--procs", f]
    if spec.cpus:
        argv += ["--cpus", ",".join(map(str, spec.cpus))]
    if spec.user:
        argv += ["--user", spec.user]
    return [*argv, "--", *spec.argv]


# The jobs root's CPU weight (cgroup v2 scale: 100 is the default; cgroup v1 shares scale with it).
# Under contention the agent (its API, serving, the runner) and the host's other processes win over
# jobs (serving above all); an idle host still gives jobs everything their quotas allow.
#
# Where the kernel has `cpu.idle` (5.15+, v1 and v2) the jobs root is also made idle by default
# (`[jobs] cpu_idle`): weight alone still let a job finish the time slice it was given (1.4 ms on this
# 2-core host) before a request's thread could run, and predict p99 rose 1.3-2.9x beside a hog capped at
# one core; with the root idle, any other task preempts a job at once (1.03-1.08x). The price: other busy
# work on the host, not only serving, goes before jobs; `cpu_idle = false` keeps them at the weight.
JOBS_CPU_WEIGHT = 10


def set_cpu_idle(cpu_dir: str, idle: bool) -> bool:
    """Write the cgroup's `cpu.idle` (v1 or v2); False when the kernel has no such file."""
    path = os.path.join(cpu_dir, "cpu.idle")
    if not os.path.exists(path):
        return False
    with open(path, "w") as f:
        f.write("1" if idle else "0")
    return True


def with_cpu_idle(cpu_dir: str | None, idle: bool, apply: Callable[[], None]) -> None:
    """Apply a group's limits, entering or leaving `cpu.idle` around them in the order the kernel needs: it
    keeps no weight while a group is idle, so a group leaves idle before its weight is written, and enters it
    after."""
    if cpu_dir and not idle:
        set_cpu_idle(cpu_dir, False)
    apply()
    if cpu_dir and idle:
        set_cpu_idle(cpu_dir, True)


@dataclass(frozen=True)
class Spawned:
    """A started wrapper: its pid, and its Popen when the agent started it itself (else it was forked by the
    launcher, agent/jobs/spawn.py, and is followed by pid and create time like a re-adopted job)."""

    pid: int
    popen: subprocess.Popen | None = None


def spawn_wrapper(spec: LaunchSpec, procs_files: Sequence[str] = (), nice: int = 0) -> Spawned:
    """Start the wrapper in a new session with the job's output files; the command's process joins
    `procs_files` (cgroup.procs / tasks files) before it execs, and the wrapper takes niceness `nice` first,
    so the command inherits it from its first instruction.

    Forked by the job launcher (agent/jobs/spawn.py) where it runs: ~15 ms of CPU less per job than a new
    interpreter. Either way the wrapper stays outside the job's cgroup on purpose: inside, a step under
    `cpu = 0.1` spent ~100 ms throttled before its command even began, and `true` under `cpu = 0.01` took
    ~250 ms to be seen ending."""
    from agent.jobs import spawn

    spec.stdout_path.parent.mkdir(parents=True, exist_ok=True)
    argv = wrapper_argv(spec, procs_files)
    out = os.open(spec.stdout_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    err = os.open(spec.stderr_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        launcher = spawn.shared()
        if launcher is not None:
            try:
                cwd = spec.workdir or os.getcwd()
                return Spawned(launcher.launch(argv[argv.index(WRAPPER) + 1 :], cwd, dict(spec.env), out, err, nice))
            except spawn.LauncherUnavailable as e:  # nothing started: start it as its own interpreter
                spawn.log.warning("jobs: %s; starting the wrapper directly", e)
        nice_bin = shutil.which("nice") if nice else None
        prefix = [nice_bin, "-n", str(nice)] if nice_bin else []
        p = subprocess.Popen(
            [*prefix, *argv],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=err,
            cwd=spec.workdir,
            env=spec.env,
            start_new_session=True,  # a signal to the agent's group never reaches jobs
            close_fds=True,
        )
        return Spawned(p.pid, p)
    finally:
        os.close(out)
        os.close(err)


def read_rc(path: str) -> Outcome | None:
    """The wrapper's rc file, or None if it isn't there (yet)."""
    try:
        with open(path) as f:
            d = json.load(f)
    except (OSError, ValueError):
        return None
    return Outcome(exit_code=d.get("exit_code"), signal=d.get("signal"), ended_at=d.get("ended_at"))


def wait_forked(pid: int, timeout_s: float = 1.0) -> bool:
    """Wait (briefly) until the wrapper has started the command: a SIGTERM before that would reach no
    command, and the wrapper itself must be spared. False if it hasn't after `timeout_s` or is gone."""
    deadline = time.monotonic() + timeout_s
    while True:
        kids = _read(f"/proc/{pid}/task/{pid}/children")
        if kids is None:
            return False
        if kids.strip():
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.005)


def _read(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return None


def now() -> float:
    return time.time()


# ----------------------------------------------------------------------------- what every tier's adopt checks


def rc_or_reboot(h: JobHandle) -> tuple[bool, str | None]:
    """The checks every tier's `adopt` starts with: an rc file decides (the job ended; adoptable), a reboot
    without one makes it LOST. (True, reason-or-None) when decided, (False, None) when the tier must look on."""
    if read_rc(h.rc_path) is not None:
        return True, None
    if h.boot_id and h.boot_id != boot_id():
        return True, "the host rebooted since the job started"
    return False, None


def wrapper_mismatch(h: JobHandle) -> str | None:
    """Why `h.pid` is not the job's wrapper any more (gone, not inspectable, another process), or None."""
    try:
        proc = psutil.Process(h.pid)
    except psutil.NoSuchProcess:
        return f"pid {h.pid} is gone and the job left no exit status"
    except psutil.Error as exc:
        return f"pid {h.pid} can't be inspected: {exc}"
    if abs(proc.create_time() - h.create_time) >= 0.05:
        return f"pid {h.pid} is now another process"
    return None
