"""Jobs and per-pipeline quotas: what `/api/v1/jobs` and `/api/v1/quotas` accept and answer.

States and pending reasons use Slurm's names, so an engineer who knows `squeue` reads ours without a
legend. Sizes on the wire are bytes in answers; requests may say "4G" (binary units: K, M, G, T) or a
number of bytes. Durations in requests are seconds or "90s" / "30m" / "2h" / "1h30m" / "1d".
A figure the agent could not measure (GPU seconds on a host without NVML) is `None`, never 0.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Annotated, Literal

from pydantic import BeforeValidator, Field, field_validator

from agent.schemas.common import STRICT_INPUT, WholeInt, _Wire, parse_size

JobState = Literal[
    "PENDING",
    "RUNNING",
    "COMPLETED",
    "FAILED",
    "OUT_OF_MEMORY",
    "TIMEOUT",
    "CANCELLED",
    "LOST",
    "REQUEUED",
]
# A job in one of these states is over: it holds no resources and will not change again (REQUEUED
# is not final: the requeued attempt goes back to PENDING at once and the old attempt's row keeps it).
FINAL_STATES: frozenset[str] = frozenset({"COMPLETED", "FAILED", "OUT_OF_MEMORY", "TIMEOUT", "CANCELLED", "LOST"})
ACTIVE_STATES: frozenset[str] = frozenset({"PENDING", "RUNNING"})
# The final states that count as a failure (the `job_failed` alert kind, the summary's recent failures).
FAILED_STATES: frozenset[str] = frozenset({"FAILED", "OUT_OF_MEMORY", "TIMEOUT", "LOST"})

# Why a PENDING job waits (Slurm's words). "Priority": another pipeline's job is ahead of it.
# "BeginTime": a retry waiting out its backoff (`Job.eligible_at`).
PendingReason = Literal[
    "QuotaCpu",
    "QuotaMemory",
    "QuotaGpu",
    "QuotaJobs",
    "Resources",
    "Priority",
    "Dependency",
    "DependencyNeverSatisfied",
    "Held",
    "BeginTime",
]

# "slurm": the job was handed to Slurm (sbatch); Slurm schedules and enforces it, the agent's admission doesn't.
Tier = Literal["systemd", "cgroup-v2", "cgroup-v1", "psutil", "slurm"]
Backend = Literal["local", "slurm"]
_SLURM_NAME = r"^[A-Za-z0-9_.+-]{1,64}$"

_DUR = re.compile(r"^(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+(?:\.\d+)?)s)?$")


def parse_duration(v: object) -> object:
    """ "90s" / "30m" / "2h" / "1h30m" / "1d" / 3600 -> seconds (float)."""
    if isinstance(v, str):
        s = v.strip().lower()
        if s.replace(".", "", 1).isdigit():
            return float(s)
        m = _DUR.match(s)
        if not s or not m or not any(m.groups()):
            raise ValueError(f"not a duration: {v!r} (say e.g. 90s, 30m, 2h, 1h30m)")
        d, h, mi, se = m.groups()
        return int(d or 0) * 86400 + int(h or 0) * 3600 + int(mi or 0) * 60 + float(se or 0)
    if isinstance(v, int) and not isinstance(v, bool):
        return float(v)
    return v


Size = Annotated[int, BeforeValidator(parse_size), Field(gt=0)]
Duration = Annotated[float, BeforeValidator(parse_duration), Field(gt=0)]
_NAME = r"^[A-Za-z0-9_.-]{1,64}$"


class RetryPolicy(_Wire):
    """When a failed attempt is tried again. `on_exit_codes` empty: any non-zero exit retries."""

    model_config = STRICT_INPUT

    max_retries: WholeInt = Field(default=0, ge=0, le=100)
    backoff_s: float = Field(default=10.0, ge=0, le=86400)  # doubled per attempt, with jitter
    on_exit_codes: list[WholeInt] = Field(default_factory=list, max_length=64)
    # OUT_OF_MEMORY → retry with memory * oom_mem_factor, up to the pipeline's quota.
    oom_mem_factor: float | None = Field(default=None, gt=1, le=16)


class JobSubmit(_Wire):
    """`POST /api/v1/jobs`. `command` is an argv, never a shell string (`shell: true` runs
    `["/bin/sh", "-c", command[0]]` and says so in the job)."""

    model_config = STRICT_INPUT

    pipeline: str = Field(pattern=_NAME)
    command: list[str] = Field(min_length=1, max_length=4096)
    shell: bool = False
    cpu: float | None = Field(default=None, gt=0, le=4096)  # cores
    mem: Size | None = None  # bytes
    gpus: WholeInt | list[str] | None = None  # a count, or GPU (MIG) UUIDs
    gpu_mem: Size | None = None  # per GPU; over it the job is stopped (NVML per-process memory)
    time_limit: Duration | None = None
    env: dict[str, str] = Field(default_factory=dict, max_length=1024)
    workdir: str | None = Field(default=None, max_length=4096)
    retries: WholeInt | None = Field(default=None, ge=0, le=100)  # shorthand for retry.max_retries
    retry: RetryPolicy | None = None
    reason: str = Field(default="", max_length=1024)
    name: str | None = Field(default=None, max_length=128)
    depends_on: list[str] = Field(default_factory=list, max_length=256)  # job ids; afterok
    # Slurm's --kill-on-invalid-dep: a dependency that ended other than COMPLETED cancels this job (else it
    # waits as PENDING DependencyNeverSatisfied until someone cancels it or requeues the dependency).
    kill_on_invalid_dep: bool = False
    hold: bool = False
    # A Slurm job array (`--array=0-N-1%K`): N tasks of the same command, each told its index in
    # SLURM_ARRAY_TASK_ID; at most `array_parallel` (K) run at once. Slurm backends only.
    array: WholeInt | None = Field(default=None, ge=1, le=10_000)
    array_parallel: WholeInt | None = Field(default=None, ge=1, le=10_000)

    @field_validator("command")
    @classmethod
    def _argv(cls, v: list[str]) -> list[str]:
        if not v[0]:
            raise ValueError("command[0] must name a program")
        if any("\x00" in a for a in v):
            raise ValueError("an argument contains a NUL byte")
        return v

    @field_validator("env")
    @classmethod
    def _env(cls, v: dict[str, str]) -> dict[str, str]:
        for k, val in v.items():
            if not re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", k):
                raise ValueError(f"not an environment variable name: {k!r}")
            if "\x00" in val:
                raise ValueError(f"{k}: value contains a NUL byte")
        return v

    @field_validator("gpus")
    @classmethod
    def _gpus(cls, v: int | list[str] | None) -> int | list[str] | None:
        if isinstance(v, int) and not 0 <= v <= 64:
            raise ValueError("a GPU count must be 0..64")
        if isinstance(v, list) and (not v or len(v) > 64 or any(not g for g in v)):
            raise ValueError("GPU UUIDs: 1..64 non-empty strings")
        return v


class GpuUse(_Wire):
    uuid: str
    seconds: float | None  # GPU-seconds the job held it (None: not measurable here)
    peak_mem_bytes: int | None


class SlurmInfo(_Wire):
    """A job handed to Slurm: its Slurm id and what Slurm says of it, in Slurm's words."""

    job_id: int
    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    state: str = ""  # Slurm's state as last seen ("PENDING", "RUNNING", "FAILED+..."); "" until polled
    reason: str = ""  # Slurm's state_reason as it is ("Resources", "ReqNodeNotAvail", ...)
    nodes: str = ""
    restarts: int = 0  # Slurm's restart_cnt this attempt runs under (a requeue adds one)
    # What Slurm allocated (TRES) while it runs: cores, bytes, GPUs; None until it starts.
    alloc_cpu: float | None = None
    alloc_mem: int | None = None
    alloc_gpus: int | None = None
    seen_at: float | None = None  # when squeue last listed it
    # A job array: each task's state by index, ours (PENDING, RUNNING, COMPLETED, FAILED, CANCELLED, ...). A
    # requeue or retry submits the tasks not COMPLETED again as a new array; the completed ones stay.
    tasks: dict[str, str] | None = None


class JobProgress(_Wire):
    """What a job reports of its own progress (batch transform: rows); None for jobs that report none."""

    done: int
    total: int | None = None
    unit: str = "rows"
    rate_per_s: float | None = None
    eta_s: float | None = None


def cpu_list(cpus: Sequence[int] | None) -> str:
    """A job's `cpus` as Linux writes CPU lists (`0-3,6`: Cpus_allowed_list, cpuset.cpus); "any" for None."""
    if not cpus:
        return "any"
    runs: list[list[int]] = []
    for c in sorted(cpus):
        if runs and c == runs[-1][1] + 1:
            runs[-1][1] = c
        else:
            runs.append([c, c])
    return ",".join(f"{a}" if a == b else f"{a}-{b}" for a, b in runs)


class Job(_Wire):
    """One job (its latest attempt). Times are unix seconds; usage figures are None until measured."""

    id: str
    name: str | None = None
    pipeline: str
    state: JobState
    # PENDING: a PendingReason; final states: why ("exit code 3", "memory limit 512 MiB reached",
    # "cancelled by alice", "time limit 60 s reached", "could not re-adopt: pid 123 is another process").
    reason: str = ""
    exit_code: int | None = None
    signal: int | None = None
    tier: Tier | None = None  # None until started
    command: list[str]
    shell: bool = False
    env: dict[str, str] = Field(default_factory=dict)
    workdir: str | None = None
    cpu: float
    mem: int  # bytes
    gpus: list[str] = Field(default_factory=list)  # UUIDs allocated (requested count until started)
    gpus_requested: int = 0
    cpus: list[int] | None = None  # the CPUs it was pinned to when started (agent/jobs/placement.py); null: any
    gpu_mem: int | None = None
    time_limit: float | None = None
    submitted_by: str
    submit_reason: str = ""
    cancelled_by: str | None = None
    submitted_at: float
    started_at: float | None = None
    ended_at: float | None = None
    wait_s: float | None = None
    elapsed_s: float | None = None
    attempt: int = 1  # 1 + retries so far
    max_retries: int = 0
    depends_on: list[str] = Field(default_factory=list)
    kill_on_invalid_dep: bool = False
    pid: int | None = None
    cpu_seconds: float | None = None
    cpu_now: float | None = None  # cores in use over the last sample
    rss_bytes: int | None = None
    peak_rss_bytes: int | None = None
    gpu_use: list[GpuUse] = Field(default_factory=list)
    host: str | None = None
    eligible_at: float | None = None  # a retry's backoff: not started before this time
    oom_retry_mem: int | None = None  # memory an OOM retry asked for (the quota may have capped it)
    backend: Backend = "local"
    slurm: SlurmInfo | None = None  # backend "slurm": its Slurm job
    array: int | None = None  # a Slurm job array of this many tasks (`slurm.tasks` says how each went)
    array_parallel: int | None = None
    progress: JobProgress | None = None  # filled on reads for jobs that report it (batch transform)


class JobList(_Wire):
    jobs: list[Job]
    total: int  # matching jobs, of which `jobs` holds up to `limit`


class JobLog(_Wire):
    """`GET /api/v1/jobs/{id}/logs?stream=stdout|stderr&offset=N`: bytes from `offset`, decoded
    as UTF-8 with replacement. `next_offset` is where to ask next (follow: poll with it)."""

    job_id: str
    stream: Literal["stdout", "stderr"]
    offset: int
    next_offset: int
    text: str
    dropped_bytes: int = 0  # cut by the size cap before `offset`
    eof: bool  # the job is over and everything written has been read
    task: int | None = None  # a job array's task whose output this is


class JobAction(_Wire):
    """`POST /api/v1/jobs/{id}/cancel` and `/requeue`."""

    model_config = STRICT_INPUT

    reason: str = Field(default="", max_length=1024)


class QuotaSpec(_Wire):
    """`[[quotas]]` in agent.toml and `PUT /api/v1/quotas/{pipeline}` (admin; audited).
    A missing limit is unlimited within the host's capacity less the serving reservation."""

    model_config = STRICT_INPUT

    cpu: float | None = Field(default=None, gt=0, le=4096)
    mem: Size | None = None
    gpus: WholeInt | list[str] | None = None
    gpu_mem: Size | None = None
    max_running_jobs: WholeInt | None = Field(default=None, ge=1, le=100_000)
    priority: WholeInt = Field(default=0, ge=-1000, le=1000)  # higher first across pipelines
    share_gpus: bool = False  # may its GPUs be given to another pipeline's jobs too
    near_limit: float = Field(default=0.9, gt=0, le=1)  # quota_near_limit fires above this share
    # Where the pipeline's jobs run (None: the agent's `[jobs] backend`). For "slurm" the limits above are
    # the pipeline's configured share, shown beside its usage on the cluster; Slurm schedules, we don't gate.
    backend: Backend | None = None
    partition: str | None = Field(default=None, pattern=_SLURM_NAME)
    account: str | None = Field(default=None, pattern=_SLURM_NAME)
    qos: str | None = Field(default=None, pattern=_SLURM_NAME)


class QuotaUsage(_Wire):
    """One pipeline's usage against its quota, now. `limit` None: unlimited."""

    pipeline: str
    quota: QuotaSpec
    configured: bool  # False: the defaults for an unknown pipeline apply
    running_jobs: int
    pending_jobs: int
    # resource ("cpu", "mem", "gpus", "gpu_mem", "jobs") -> (allocated by running jobs' requests,
    # measured use now, limit). Measured is None where it can't be measured.
    allocated: dict[str, float]
    used: dict[str, float | None]
    limit: dict[str, float | None]
    near_limit: list[str]  # resources above the quota's near_limit share
    backend: Backend = "local"  # "slurm": allocated = its running jobs' TRES on the cluster, not gated here


class QuotaList(_Wire):
    quotas: list[QuotaUsage]
    # What jobs may use at all on this host: capacity less the serving reservation.
    host_cpu: float
    host_mem: int
    serving_reserved_cpu: float
    serving_reserved_mem: int
    tier: Tier
    tier_detail: str = ""


class JobsSummary(_Wire):
    """The jobs part of `GET /api/v1/summary`."""

    running: int
    pending: int
    failed_recent: int  # FAILED / OUT_OF_MEMORY / TIMEOUT / LOST ended in the last hour
    quotas_near_limit: int
