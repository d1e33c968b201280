"""The agent's wire contract: every JSON body the API sends or accepts.

The console imports this module (and only this module) from `agent/`, so it must stay free of
anything heavier than pydantic. Units are base units: bytes, seconds, watts, degrees Celsius,
percent in 0..100. A value the host cannot provide is `None`, never a made-up zero.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

API_PREFIX = "/api/v1"

Role = Literal["viewer", "operator", "approver", "admin"]
GpuSourceKind = Literal["nvml", "simulated", "none"]


class _Wire(BaseModel):
    # Extra keys are ignored when reading so an older console can talk to a newer agent.
    model_config = ConfigDict(extra="ignore")


# --------------------------------------------------------------------------- telemetry


class CpuSample(_Wire):
    percent: float
    per_core: list[float]
    load1: float
    load5: float
    load15: float


class MemorySample(_Wire):
    total_bytes: int
    available_bytes: int
    used_bytes: int
    percent: float
    swap_total_bytes: int
    swap_used_bytes: int


class DiskUsage(_Wire):
    mountpoint: str
    device: str
    fstype: str
    total_bytes: int
    used_bytes: int
    percent: float


class IoRates(_Wire):
    """Cumulative counters plus per-second rates over the last sampling interval."""

    read_bytes_total: int = 0
    write_bytes_total: int = 0
    read_bytes_per_s: float = 0.0
    write_bytes_per_s: float = 0.0


class NetRates(_Wire):
    recv_bytes_total: int = 0
    sent_bytes_total: int = 0
    recv_bytes_per_s: float = 0.0
    sent_bytes_per_s: float = 0.0


class ProcessSample(_Wire):
    pid: int
    name: str
    username: str | None = None
    cpu_percent: float
    rss_bytes: int
    cmdline: str = ""


class GpuProcess(_Wire):
    pid: int
    name: str | None = None
    used_memory_bytes: int | None = None  # N/A under MIG on some drivers


class MigDevice(_Wire):
    index: int
    uuid: str | None = None
    memory_used_bytes: int | None = None
    memory_total_bytes: int | None = None


class GpuSample(_Wire):
    index: int
    uuid: str
    name: str
    pci_bus_id: str | None = None
    utilization_percent: float | None = None
    memory_used_bytes: int | None = None
    memory_total_bytes: int | None = None
    power_watts: float | None = None
    power_limit_watts: float | None = None
    temperature_c: float | None = None
    sm_clock_mhz: float | None = None
    ecc_uncorrected_errors: int | None = None
    xid_errors: int | None = None
    mig_enabled: bool | None = None
    mig_devices: list[MigDevice] = Field(default_factory=list)
    processes: list[GpuProcess] = Field(default_factory=list)
    # Metrics the device/driver does not offer, e.g. {"power_watts": "not supported"}.
    unavailable: dict[str, str] = Field(default_factory=dict)


class GpuStatus(_Wire):
    """Where GPU data comes from and, when there is none, why (said once, not per sample)."""

    source: GpuSourceKind
    reason: str | None = None
    driver_version: str | None = None
    simulated: bool = False


class Snapshot(_Wire):
    """One telemetry sample of a host: what `GET /api/v1/snapshot` returns."""

    ts: float  # unix seconds
    hostname: str
    agent_name: str
    host_simulated: bool = False
    cpu: CpuSample
    memory: MemorySample
    disks: list[DiskUsage] = Field(default_factory=list)
    disk_io: IoRates = Field(default_factory=IoRates)
    net: NetRates = Field(default_factory=NetRates)
    top_cpu: list[ProcessSample] = Field(default_factory=list)
    top_rss: list[ProcessSample] = Field(default_factory=list)
    gpus: list[GpuSample] = Field(default_factory=list)
    gpu_status: GpuStatus
    sample_duration_s: float = 0.0


# --------------------------------------------------------------------------- host info


class EnforcementInfo(_Wire):
    """Which resource-enforcement tier this host offers jobs (a later issue uses it)."""

    tier: Literal["systemd", "cgroup-v2", "cgroup-v1", "psutil"]
    cgroup_version: Literal[1, 2] | None = None
    systemd_pid1: bool = False
    controllers: list[str] = Field(default_factory=list)
    writable: bool = False
    detail: str = ""


class HostInfo(_Wire):
    hostname: str
    agent_name: str
    agent_version: str
    platform: str
    python: str
    boot_time: float
    started_at: float
    cpu_logical: int
    cpu_physical: int | None = None
    memory_total_bytes: int
    gpus: list[GpuSample] = Field(default_factory=list)
    gpu_status: GpuStatus
    enforcement: EnforcementInfo
    sample_interval_s: float
    data_dir: str
    store_schema_version: int


# --------------------------------------------------------------------------- series


class SeriesPoint(_Wire):
    ts: float
    value: float | None


class Series(_Wire):
    metric: str
    labels: dict[str, str] = Field(default_factory=dict)
    points: list[SeriesPoint]


class SeriesResponse(_Wire):
    start: float
    end: float
    step_s: float
    source: Literal["raw", "rollup_1m"]
    series: list[Series]


# Metrics `GET /api/v1/series?metric=...` understands; gpu_* ones have one series per GPU.
HOST_METRICS = (
    "cpu_percent",
    "memory_percent",
    "memory_used_bytes",
    "load1",
    "swap_used_bytes",
    "disk_read_bytes_per_s",
    "disk_write_bytes_per_s",
    "net_recv_bytes_per_s",
    "net_sent_bytes_per_s",
)
GPU_METRICS = (
    "gpu_utilization_percent",
    "gpu_memory_used_bytes",
    "gpu_power_watts",
    "gpu_temperature_c",
)


# --------------------------------------------------------------------------- auth, audit, alerts


class Principal(_Wire):
    name: str
    role: Role
    via: Literal["token", "unix-peer", "anonymous"]


class TokenCreate(_Wire):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.@-]+$")
    role: Role


class TokenInfo(_Wire):
    accessor: str
    name: str
    role: Role
    source: Literal["config", "generated", "api"]
    created_at: float
    revoked_at: float | None = None


class TokenCreated(TokenInfo):
    token: str  # shown once; only its digest is kept


class AuditEntry(_Wire):
    seq: int
    ts: float
    principal: str
    role: str
    via: str
    action: str
    target: str
    detail: dict = Field(default_factory=dict)
    client: str | None = None
    prev_hash: str
    hash: str


class AuditVerify(_Wire):
    ok: bool
    entries: int
    head: str | None
    first_bad_seq: int | None = None
    problem: str | None = None


class AgentAlert(_Wire):
    """A condition of the agent itself (WAL moved aside, GPU lost), not a model alert."""

    ts: float
    severity: Literal["info", "warning", "critical"]
    kind: str
    message: str


class ErrorBody(_Wire):
    """Every 4xx/5xx the agent sends has this shape."""

    error: str
    detail: str | list | dict | None = None
    field: str | None = None


class Health(_Wire):
    status: Literal["ok", "starting", "degraded"]
    agent_name: str
    version: str
    checks: dict[str, str] = Field(default_factory=dict)
