"""Host and GPU telemetry on the wire: snapshots, host info, time series, the agent's own conditions."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from agent.schemas.common import _Wire

GpuSourceKind = Literal["nvml", "simulated", "none"]


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


class AgentAlert(_Wire):
    """A condition of the agent itself (WAL moved aside, GPU lost), not a model alert."""

    ts: float
    severity: Literal["info", "warning", "critical"]
    kind: str
    message: str
