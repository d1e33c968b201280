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


# --------------------------------------------------------------------------- model registry

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
ModelFormat = Literal["onnx", "torchscript", "torch_export"]
FeatureDtype = Literal["float", "int", "bool", "category"]


class FeatureSpec(_Wire):
    """One input feature of a model's signature.

    Numeric features go to the model as-is (normalisation belongs in the model). A `category`
    feature is one-hot encoded by the server in the order of `categories`; a value outside them is
    "unseen": it encodes as all zeros and is counted (data quality), never an error.
    """

    model_config = ConfigDict(extra="forbid")
    name: str = Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")
    dtype: FeatureDtype
    min: float | None = None  # allowed range, inclusive; outside is counted, not rejected
    max: float | None = None
    categories: list[str] | None = None  # required for dtype "category"
    # Used for a missing value when the endpoint's missing_policy is "impute" (e.g. the training median).
    impute: float | str | None = None


class OutputSpec(_Wire):
    model_config = ConfigDict(extra="forbid")
    kind: Literal["binary", "regression", "multiclass"]
    labels: list[str] | None = None  # binary: [negative, positive]; multiclass: one per class
    threshold: float = 0.5  # binary: score >= threshold -> labels[1]


class Signature(_Wire):
    model_config = ConfigDict(extra="forbid")
    features: list[FeatureSpec] = Field(min_length=1)
    output: OutputSpec


class Lineage(_Wire):
    """Where a model version came from; the first three are required on every build."""

    model_config = ConfigDict(extra="forbid")
    build_id: str = Field(min_length=1, max_length=200)
    code_commit: str = Field(min_length=1, max_length=200)
    code_dirty: bool = False
    data_version: str = Field(min_length=1, max_length=200)  # a version name or a content digest
    params_hash: str | None = None
    parent_version: int | None = None
    job_id: str | None = None


class ModelVersionCreate(_Wire):
    """Metadata sent with an artifact (multipart field `metadata`, JSON) to register a version."""

    model_config = ConfigDict(extra="forbid")
    format: ModelFormat
    lineage: Lineage
    signature: Signature
    description: str = ""
    tags: dict[str, str] = Field(default_factory=dict)
    metrics: dict[str, float] = Field(default_factory=dict)
    # Reference data profile (drift issue): opaque JSON here, validated by agent/monitoring.
    profile: dict | None = None


class ModelVersion(_Wire):
    name: str
    version: int
    digest: str  # sha256 of the artifact bytes
    size_bytes: int
    format: ModelFormat
    created_at: float
    created_by: str
    description: str = ""
    lineage: Lineage
    signature: Signature
    tags: dict[str, str] = Field(default_factory=dict)
    metrics: dict[str, float] = Field(default_factory=dict)
    has_profile: bool = False
    aliases: list[str] = Field(default_factory=list)


class ModelSummary(_Wire):
    name: str
    latest_version: int
    versions: int
    aliases: dict[str, int] = Field(default_factory=dict)
    updated_at: float


class AliasMove(_Wire):
    model_config = ConfigDict(extra="forbid")
    version: int = Field(ge=1)
    reason: str = Field(default="", max_length=500)


class AliasEvent(_Wire):
    ts: float
    model: str
    alias: str
    from_version: int | None
    to_version: int
    principal: str
    reason: str = ""


# --------------------------------------------------------------------------- endpoints and serving


class BatchingConfig(_Wire):
    """Adaptive micro-batching across concurrent requests. Counts rows, not requests."""

    model_config = ConfigDict(extra="forbid")
    enabled: bool = False
    max_rows: int = Field(default=64, ge=1, le=100_000)
    max_wait_ms: float = Field(default=2.0, ge=0, le=1000)


class BreakerConfig(_Wire):
    """Circuit breaker: opens on error rate or slow calls over a rolling window, probes when half-open."""

    model_config = ConfigDict(extra="forbid")
    enabled: bool = True
    window_s: float = Field(default=10.0, gt=0, le=3600)
    min_requests: int = Field(default=20, ge=1)
    error_rate: float = Field(default=0.5, gt=0, le=1)
    slow_call_ms: float | None = Field(default=None, gt=0)  # a call slower than this counts as a failure
    open_s: float = Field(default=5.0, gt=0, le=3600)
    half_open_probes: int = Field(default=3, ge=1, le=1000)


class FaultConfig(_Wire):
    """Fault injection for drills and tests (as Envoy's fault filter): errors and delays before the model."""

    model_config = ConfigDict(extra="forbid")
    error_rate: float = Field(default=0.0, ge=0, le=1)
    delay_ms: float = Field(default=0.0, ge=0, le=60_000)
    delay_rate: float = Field(default=1.0, ge=0, le=1)


class EndpointConfig(_Wire):
    """What `PUT /api/v1/endpoints/{name}` takes. Exactly one of `version` and `alias` picks the model."""

    model_config = ConfigDict(extra="forbid")
    model: str = Field(pattern=NAME_PATTERN)
    version: int | None = Field(default=None, ge=1)
    alias: str | None = Field(default=None, pattern=NAME_PATTERN)
    max_concurrency: int = Field(default=64, ge=1, le=100_000)  # rows in flight beyond this are shed
    timeout_ms: float = Field(default=1000.0, gt=0, le=600_000)
    max_payload_bytes: int = Field(default=1_048_576, ge=1024, le=256 * 1_048_576)
    max_rows: int = Field(default=10_000, ge=1, le=1_000_000)
    missing_policy: Literal["reject", "impute"] = "reject"
    batching: BatchingConfig = Field(default_factory=BatchingConfig)
    breaker: BreakerConfig = Field(default_factory=BreakerConfig)
    # The default prediction returned (marked as fallback) when shedding, timing out, erroring,
    # breaker open or switched to fallback by an operator. None: those cases answer 429/503/504/502.
    fallback: dict | None = None
    log_sample_rate: float = Field(default=1.0, ge=0, le=1)
    prewarm: bool = True
    faults: FaultConfig | None = None


class EndpointInfo(_Wire):
    name: str
    config: EndpointConfig
    model: str
    version: int | None  # resolved version now serving (alias resolved); None if unresolvable
    resolve_error: str | None = None
    fallback_mode: bool = False  # forced by an operator
    fallback_reason: str = ""
    breaker_state: Literal["closed", "open", "half_open", "disabled"] = "closed"
    breaker_since: float | None = None  # unix time of the last state change
    breaker_reason: str = ""  # why it last opened
    loaded: bool = False
    updated_at: float
    updated_by: str


class FallbackToggle(_Wire):
    model_config = ConfigDict(extra="forbid")
    enabled: bool
    reason: str = Field(min_length=1, max_length=500)


class LatencySummary(_Wire):
    count: int
    p50_ms: float | None = None
    p95_ms: float | None = None
    p99_ms: float | None = None
    mean_ms: float | None = None


class EndpointVersionStats(_Wire):
    """Traffic of one endpoint and model version: totals since start and the last `window_s`."""

    endpoint: str
    model: str
    version: int
    requests: int
    rows: int
    errors: int
    fallbacks: int
    fallbacks_by_reason: dict[str, int] = Field(default_factory=dict)
    rejected: int = 0  # 4xx: validation, payload size
    window_s: float
    window_requests: int
    window_fallbacks: int = 0
    window_errors: int = 0
    window_rps: float
    window_error_rate: float
    window_fallback_rate: float
    latency: LatencySummary  # over the window
    latency_total: LatencySummary  # since start
    batch_rows_mean: float | None = None


class LoadedModel(_Wire):
    model: str
    version: int
    format: ModelFormat
    memory_bytes: int
    loaded_at: float
    last_used_at: float
    load_ms: float
    endpoints: list[str] = Field(default_factory=list)


class ServingStatus(_Wire):
    """`GET /api/v1/serving`: endpoints, their stats, the model pool, and the prediction log's health."""

    endpoints: list[EndpointInfo]
    stats: list[EndpointVersionStats]
    loaded_models: list[LoadedModel]
    pool_budget_bytes: int
    pool_used_bytes: int
    predlog_rows_written: int
    predlog_rows_dropped: int
    in_flight: dict[str, int] = Field(default_factory=dict)


class PredictionLogRow(_Wire):
    """One logged row (`GET /api/v1/endpoints/{name}/predictions`)."""

    ts: float
    request_id: str
    endpoint: str
    model: str
    version: int | None
    row_idx: int
    features: dict[str, float | str | None]
    score: float | None
    label: str | None
    latency_ms: float
    status: str
    fallback_reason: str | None


class Prediction(_Wire):
    """One row's answer. `score` is the positive-class probability (binary) or the value (regression)."""

    score: float | None = None
    label: str | None = None
    scores: list[float] | None = None  # multiclass probabilities, in `OutputSpec.labels` order


class PredictResponse(_Wire):
    request_id: str
    endpoint: str
    model: str
    version: int | None
    predictions: list[Prediction] | list[dict]
    fallback: bool = False
    fallback_reason: str | None = None
    latency_ms: float
