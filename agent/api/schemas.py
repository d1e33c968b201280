"""The agent's wire contract: every JSON body the API sends or accepts.

The console imports this module (and only this module) from `agent/`, so it must stay free of
anything heavier than pydantic. Units are base units: bytes, seconds, watts, degrees Celsius,
percent in 0..100. A value the host cannot provide is `None`, never a made-up zero.
"""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field

API_PREFIX = "/api/v1"

Role = Literal["viewer", "operator", "approver", "admin"]
GpuSourceKind = Literal["nvml", "simulated", "none"]


class _Wire(BaseModel):
    # Extra keys are ignored when reading so an older console can talk to a newer agent.
    model_config = ConfigDict(extra="ignore")


# What the agent accepts: no unknown keys, and no coercion - `{"enabled": 0}` is not a boolean, "5" not a
# number - so a request is valid exactly when its OpenAPI schema says it is.
# Every request model: no unknown keys, no coercion, and no NaN/Infinity (a NaN fallback score would be
# served as `null` with a definite label; a NaN feedback value poisons every quality metric).
_STRICT_INPUT = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)


def _whole(v: object) -> object:
    # JSON has one kind of number: to JSON Schema (and so to our OpenAPI) 3.0 is an integer. Strict mode
    # would refuse it; take it as 3. A bool or a string still fails the strict int check after this.
    if isinstance(v, float) and v.is_integer():
        return int(v)
    return v


WholeInt = Annotated[int, BeforeValidator(_whole)]

# Unix seconds a request may name (year 2286): far past any real time, well inside DuckDB's timestamps.
MAX_UNIX_S = 10_000_000_000


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
    model_config = _STRICT_INPUT
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


AuditStatus = Literal[
    "ok", "altered", "head_missing", "head_behind", "chain_shorter", "head_altered", "unkeyed", "key_needed",
    "not_extending",
]  # fmt: skip


class AuditVerify(_Wire):
    """`GET /api/v1/audit/verify`: the chain walked from entry 1 (agent/audit.py, docs/operations.md)."""

    ok: bool
    entries: int
    head: str | None  # the hash of the last entry
    first_bad_seq: int | None = None
    problem: str | None = None
    status: AuditStatus = "ok"
    head_seq: int | None = None  # the last entry's seq
    first_bad_action: str | None = None  # the first altered entry's action and target, as stored
    first_bad_target: str | None = None
    exported_head_seq: int | None = None  # what audit.head names (None: missing)
    keyed: bool = False  # verified with the audit key (HMAC-SHA256 links)
    keyed_since: int | None = None  # the first keyed entry
    extends: bool | None = None  # with since_seq/since_hash: the chain still holds that entry
    warnings: list[str] = Field(default_factory=list)


class AuditHead(_Wire):
    """`GET /api/v1/audit/head`: the newest entry, for a console to remember and check later."""

    seq: int
    hash: str
    keyed: bool
    keyed_since: int | None = None


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

    model_config = _STRICT_INPUT
    name: str = Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")
    dtype: FeatureDtype
    min: float | None = None  # allowed range, inclusive; outside is counted, not rejected
    max: float | None = None
    categories: list[str] | None = None  # required for dtype "category"
    # Used for a missing value when the endpoint's missing_policy is "impute" (e.g. the training median).
    impute: float | str | None = None


class OutputSpec(_Wire):
    model_config = _STRICT_INPUT
    kind: Literal["binary", "regression", "multiclass"]
    labels: list[str] | None = None  # binary: [negative, positive]; multiclass: one per class
    threshold: float = 0.5  # binary: score >= threshold -> labels[1]


class Signature(_Wire):
    model_config = _STRICT_INPUT
    features: list[FeatureSpec] = Field(min_length=1)
    output: OutputSpec


class Lineage(_Wire):
    """Where a model version came from; the first three are required on every build."""

    model_config = _STRICT_INPUT
    build_id: str = Field(min_length=1, max_length=200)
    code_commit: str = Field(min_length=1, max_length=200)
    code_dirty: bool = False
    data_version: str = Field(min_length=1, max_length=200)  # a version name or a content digest
    params_hash: str | None = None
    parent_version: WholeInt | None = None
    job_id: str | None = None


class ModelVersionCreate(_Wire):
    """Metadata sent with an artifact (multipart field `metadata`, JSON) to register a version."""

    model_config = _STRICT_INPUT
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
    model_config = _STRICT_INPUT
    version: WholeInt = Field(ge=1)
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

    model_config = _STRICT_INPUT
    enabled: bool = False
    max_rows: WholeInt = Field(default=64, ge=1, le=100_000)
    max_wait_ms: float = Field(default=2.0, ge=0, le=1000)


class BreakerConfig(_Wire):
    """Circuit breaker: opens on error rate or slow calls over a rolling window, probes when half-open."""

    model_config = _STRICT_INPUT
    enabled: bool = True
    window_s: float = Field(default=10.0, gt=0, le=3600)
    min_requests: WholeInt = Field(default=20, ge=1)
    error_rate: float = Field(default=0.5, gt=0, le=1)
    slow_call_ms: float | None = Field(default=None, gt=0)  # a call slower than this counts as a failure
    open_s: float = Field(default=5.0, gt=0, le=3600)
    half_open_probes: WholeInt = Field(default=3, ge=1, le=1000)


class FaultConfig(_Wire):
    """Fault injection for drills and tests (as Envoy's fault filter): errors and delays before the model."""

    model_config = _STRICT_INPUT
    error_rate: float = Field(default=0.0, ge=0, le=1)
    delay_ms: float = Field(default=0.0, ge=0, le=60_000)
    delay_rate: float = Field(default=1.0, ge=0, le=1)
    # Only requests served by this model version misbehave (a rollout drill: a sick candidate); None: all.
    version: WholeInt | None = Field(default=None, ge=1)


def _finite_json(v: Any) -> Any:
    """A JSON value with no NaN/Infinity anywhere in it (they can't be answered as JSON, and a fallback
    score of NaN would be served as `null` with a definite label)."""
    if isinstance(v, float) and not math.isfinite(v):
        raise ValueError("must be a finite number")
    for x in v.values() if isinstance(v, dict) else v if isinstance(v, list) else ():
        _finite_json(x)
    return v


FiniteJson = Annotated[Any, AfterValidator(_finite_json)]


class EndpointConfig(_Wire):
    """What `PUT /api/v1/endpoints/{name}` takes. Exactly one of `version` and `alias` picks the model."""

    model_config = ConfigDict(
        **_STRICT_INPUT,
        json_schema_extra={
            "oneOf": [
                {"required": ["version"], "properties": {"version": {"type": "integer"}, "alias": {"type": "null"}}},
                {"required": ["alias"], "properties": {"alias": {"type": "string"}, "version": {"type": "null"}}},
            ]
        },
    )
    model: str = Field(pattern=NAME_PATTERN)
    version: WholeInt | None = Field(default=None, ge=1)
    alias: str | None = Field(default=None, pattern=NAME_PATTERN)
    max_concurrency: WholeInt = Field(default=64, ge=1, le=100_000)  # rows in flight beyond this are shed
    timeout_ms: float = Field(default=1000.0, gt=0, le=600_000)
    max_payload_bytes: WholeInt = Field(default=1_048_576, ge=1024, le=256 * 1_048_576)
    max_rows: WholeInt = Field(default=10_000, ge=1, le=1_000_000)
    missing_policy: Literal["reject", "impute"] = "reject"
    batching: BatchingConfig = Field(default_factory=BatchingConfig)
    breaker: BreakerConfig = Field(default_factory=BreakerConfig)
    # The default prediction returned (marked as fallback) when shedding, timing out, erroring,
    # breaker open or switched to fallback by an operator. None: those cases answer 429/503/504/502.
    fallback: dict[str, FiniteJson] | None = None
    log_sample_rate: float = Field(default=1.0, ge=0, le=1)
    prewarm: bool = True
    faults: FaultConfig | None = None
    # Drift/data-quality thresholds for this endpoint (keys of agent.monitoring.drift.DriftThresholds);
    # None: the defaults. Checked when the endpoint is put: an unknown key is a 422.
    drift: dict[str, float] | None = None


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
    model_config = _STRICT_INPUT
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


# --------------------------------------------------------------------------- monitoring: drift, quality, labels

DriftVerdict = Literal["ok", "drift", "quality", "drift+quality", "no data"]
DriftBaseline = Literal["reference", "previous"]


class FeatureDriftOut(_Wire):
    """One feature (or `__prediction__` / `__label__`) of one window against a baseline.

    Effect sizes (psi, wasserstein_norm, js, ks_stat) sit beside p-values: at a million rows every
    p-value is tiny. `score` is the primary method's value, compared with `threshold`.
    """

    name: str
    kind: Literal["numeric", "categorical"]
    n_ref: int
    n_cur: int
    method: str
    score: float | None
    threshold: float | None
    drifted: bool
    verdict: DriftVerdict
    psi: float | None = None
    ks_stat: float | None = None
    ks_pvalue: float | None = None
    wasserstein_norm: float | None = None
    js: float | None = None
    chi2_stat: float | None = None
    chi2_pvalue: float | None = None
    missing_rate_ref: float | None = None
    missing_rate_cur: float | None = None
    out_of_range_share: float | None = None
    unseen_share: float | None = None
    unseen_top: list[str] = Field(default_factory=list)
    # Requests refused (422) for this feature's value in the window: wrong type, corrupt, missing under "reject".
    # Counted in the agent's memory: absent (None) for windows from before a restart.
    rejected_requests: int | None = None
    quality_issues: list[str] = Field(default_factory=list)
    # Numeric: the bounds `out_of_range_share` was counted against (None: open) and where they came from:
    # "signature" (its min/max), "reference" (the profile's observed min/max) or "signature+reference".
    range_min: float | None = None
    range_max: float | None = None
    range_source: str | None = None


class DriftReportOut(_Wire):
    """`GET /api/v1/endpoints/{name}/drift`: one window (or a merged range of windows) vs a baseline."""

    endpoint: str
    model: str
    version: int
    baseline: DriftBaseline
    window_start: float | None
    window_end: float | None
    n_ref: int
    n_cur: int
    drift_share: float  # drifted / judged features; 0 when none was judged (then features_judged is 0)
    features_judged: int | None = None  # features with enough rows on both sides (None: an older agent)
    features_drifted: int | None = None  # ... of which drifted
    dataset_drift: bool
    features: list[FeatureDriftOut]
    computed_at: float
    note: str = ""  # e.g. "no reference profile for this version"


class DriftPoint(_Wire):
    window_end: float
    score: float | None
    drifted: bool
    verdict: DriftVerdict


class DriftHistory(_Wire):
    """`GET /api/v1/endpoints/{name}/drift/history`: per feature, its score per window (sparklines)."""

    endpoint: str
    baseline: DriftBaseline
    features: dict[str, list[DriftPoint]]


class HistogramOut(_Wire):
    """Reference vs current distribution of one feature over the profile's frozen bins (for plotting).

    Numeric: `bins` are labels of the coarse bins ("< 7", "[7, 8)", ..., ">= 19"); categorical: the
    categories, then "(unseen)" and "(missing)". Counts are shares of the rows (0..1).
    """

    endpoint: str
    feature: str
    kind: Literal["numeric", "categorical"]
    bins: list[str]
    reference: list[float]
    current: list[float]
    window_start: float | None
    window_end: float | None


class FeedbackItem(_Wire):
    # A label or a value (or both): an item with neither says nothing.
    model_config = ConfigDict(
        **_STRICT_INPUT,
        json_schema_extra={
            "anyOf": [
                {"required": ["label"], "properties": {"label": {"type": "string"}}},
                {"required": ["value"], "properties": {"value": {"type": "number"}}},
            ]
        },
    )
    request_id: str = Field(min_length=1, max_length=128)
    row_idx: WholeInt = Field(default=0, ge=0, le=1_000_000)  # a row of one predict request (max_rows at most)
    label: str | None = Field(default=None, max_length=256)  # classification: the true class
    value: float | None = None  # regression target or a business outcome (e.g. revenue)
    ts: float | None = Field(default=None, ge=0, le=MAX_UNIX_S)  # when the outcome happened; default: received


class FeedbackBatch(_Wire):
    """`POST /api/v1/endpoints/{name}/feedback`: labels arriving late and in any order."""

    model_config = _STRICT_INPUT
    items: list[FeedbackItem] = Field(min_length=1, max_length=100_000)


class FeedbackAccepted(_Wire):
    accepted: int
    unknown_request_ids: int  # not (yet) in the prediction log: kept, joined when they arrive


class QualityWindow(_Wire):
    """Model quality of one version over one window of predictions whose labels have arrived."""

    model: str
    version: int
    window_start: float
    window_end: float
    labelled: int
    predictions: int
    accuracy: float | None = None
    auc: float | None = None
    f1: float | None = None
    mae: float | None = None
    rmse: float | None = None
    positive_rate: float | None = None  # labels: share of the positive class (label drift)


class QualityReport(_Wire):
    """`GET /api/v1/endpoints/{name}/quality`: quality per version and window; the reference's metrics."""

    endpoint: str
    kind: Literal["binary", "multiclass", "regression"]
    windows: list[QualityWindow]
    reference_metrics: dict[str, float] = Field(default_factory=dict)


# --------------------------------------------------------------------------- alerts

AlertSeverity = Literal["info", "warning", "critical"]
AlertState = Literal["pending", "firing", "resolved"]


class AlertOut(_Wire):
    """One alert instance, keyed by its fingerprint (rule + labels): deduplicated while it lasts."""

    fingerprint: str
    rule: str
    kind: str
    severity: AlertSeverity
    state: AlertState
    endpoint: str | None = None
    subject: str | None = None  # e.g. the feature
    summary: str
    value: float | None = None
    threshold: float | None = None
    labels: dict[str, str] = Field(default_factory=dict)
    started_at: float  # first breach
    firing_at: float | None = None  # after its `for` duration
    resolved_at: float | None = None
    updated_at: float
    acked_by: str | None = None
    acked_at: float | None = None
    ack_comment: str = ""  # what the person who took it in hand said
    silenced_until: float | None = None
    silenced_by: str | None = None
    silence_comment: str = ""
    host: str = ""  # the agent's name, filled by the agent


class AlertAck(_Wire):
    model_config = _STRICT_INPUT
    comment: str = Field(default="", max_length=500)


class AlertSilence(_Wire):
    model_config = _STRICT_INPUT
    duration_s: float = Field(gt=0, le=30 * 86400)
    comment: str = Field(default="", max_length=500)


class AlertRuleOut(_Wire):
    name: str
    kind: str
    severity: AlertSeverity
    threshold: float | None
    for_s: float
    endpoints: list[str] = Field(default_factory=list)  # empty: all
    group_by: Literal["endpoint", "subject"] = "subject"
    keep_firing_for_s: float = 0.0


class WebhookStatus(_Wire):
    name: str
    url: str  # credentials and query strings removed
    format: Literal["slack", "alertmanager"]
    sent: int
    failed: int
    queued: int
    last_error: str | None = None
    last_sent_at: float | None = None


class AlertsResponse(_Wire):
    """`GET /api/v1/alerts`."""

    alerts: list[AlertOut]
    rules: list[AlertRuleOut]
    webhooks: list[WebhookStatus]


# --------------------------------------------------------------------------- rollouts

RolloutStrategy = Literal["canary", "bluegreen", "shadow", "ab"]
RolloutState = Literal[
    "validating", "progressing", "paused", "awaiting_approval", "aborted", "promoted", "rolled_back", "rejected"
]
ROLLOUT_TERMINAL = ("aborted", "promoted", "rolled_back", "rejected")


class RolloutStep(_Wire):
    """One step of a plan (Argo Rollouts' model). Exactly one of the fields is set.

    - set_weight: the candidate's share of live traffic, percent 0..100 (canary, blue/green switch, A/B split);
    - shadow: the share (0..1) of live traffic also sent to the candidate, whose answers are never returned;
    - pause_s: wait this long (guards keep watching);
    - approval: wait until a principal with the approver role (not the rollout's author) approves this step;
    - analysis_s: hold for this long and pass only if every guard stayed green for the whole time.
    """

    model_config = _STRICT_INPUT
    set_weight: float | None = Field(default=None, ge=0, le=100)
    shadow: float | None = Field(default=None, ge=0, le=1)
    pause_s: float | None = Field(default=None, gt=0, le=30 * 86400)
    approval: bool | None = None
    analysis_s: float | None = Field(default=None, gt=0, le=86400)


class MetricThreshold(_Wire):
    """MLflow MetricThreshold semantics: the candidate must reach `threshold` (absolute) and beat the stable
    version by at least `min_absolute_change` / `min_relative_change` (in the better direction)."""

    model_config = _STRICT_INPUT
    metric: Literal["accuracy", "auc", "f1", "log_loss", "mae", "rmse"]
    threshold: float | None = None
    min_absolute_change: float | None = None
    min_relative_change: float | None = None
    greater_is_better: bool | None = None  # None: by metric (loss and errors are lower-is-better)


class RolloutGuards(_Wire):
    """Checked continuously on live traffic of the candidate (and stable); a breach held for `window_s` aborts."""

    model_config = _STRICT_INPUT
    window_s: float = Field(default=30.0, gt=0, le=3600)
    min_requests: WholeInt = Field(default=20, ge=1)
    max_error_rate: float | None = Field(default=0.05, ge=0, le=1)
    max_fallback_rate: float | None = Field(default=0.10, ge=0, le=1)
    p99_slo_ms: float | None = Field(default=None, gt=0)
    max_p99_ratio_vs_stable: float | None = Field(default=2.0, gt=0)
    # Wasserstein / std of stable's scores; not applied to A/B arms unless set (agent/rollouts/plans.py)
    max_prediction_drift: float | None = Field(default=0.2, ge=0)
    # Share of mirrored rows with another label: always measured, aborts only when a limit is set.
    max_shadow_disagreement: float | None = Field(default=None, ge=0, le=1)
    max_feature_drift_share: float | None = Field(default=None, ge=0, le=1)


class RolloutCreate(_Wire):
    """`POST /api/v1/endpoints/{name}/rollouts`: start moving `endpoint` to `candidate_version` of its model."""

    model_config = _STRICT_INPUT
    candidate_version: WholeInt = Field(ge=1)
    strategy: RolloutStrategy
    steps: list[RolloutStep] | None = None  # None: the strategy's default plan (docs/rollouts.md)
    gate: list[MetricThreshold] = Field(default_factory=list)
    validation_dataset: str | None = Field(default=None, pattern=NAME_PATTERN)  # a registered dataset
    guards: RolloutGuards = Field(default_factory=RolloutGuards)
    ab_caller_header: str = Field(default="x-caller-key", min_length=1, max_length=64)
    ab_min_samples: WholeInt = Field(default=200, ge=10)
    keep_stable_warm_s: float = Field(default=600.0, ge=0, le=7 * 86400)  # blue/green: instant rollback
    two_person_rule: bool = True
    reason: str = Field(default="", max_length=500)


class RolloutAction(_Wire):
    """Body of approve / reject / promote / pause / resume / abort / rollback."""

    model_config = _STRICT_INPUT
    step_index: WholeInt | None = Field(default=None, ge=0)  # approve/reject: the step being approved (stale -> 409)
    reason: str = Field(default="", max_length=500)


class ApprovalOut(_Wire):
    step_index: int
    decision: Literal["approved", "rejected"]
    principal: str
    at: float
    reason: str = ""
    client: str | None = None


class GateMetricOut(_Wire):
    metric: str
    stable: float | None
    candidate: float | None
    threshold: float | None = None
    min_absolute_change: float | None = None
    min_relative_change: float | None = None
    passed: bool
    detail: str = ""


class GateResult(_Wire):
    dataset: str | None
    dataset_digest: str | None
    rows: int
    passed: bool
    metrics: list[GateMetricOut] = Field(default_factory=list)
    evaluated_at: float | None = None
    note: str = ""


class GuardMetric(_Wire):
    """One guard, stable beside candidate over the guard window."""

    name: str
    stable: float | None
    candidate: float | None
    limit: float | None
    breached: bool
    breached_since: float | None = None
    # Not judged (candidate None) until the candidate has `min_requests` requests in the window: "ok"
    # must never stand for "nothing measured". `requests`: what it has (live, or mirrored for a preview).
    judged: bool = True
    requests: int | None = None
    min_requests: int | None = None


class ABResult(_Wire):
    """A/B on the posted outcome (feedback label/value): lift of the candidate with a confidence interval."""

    outcome: str  # "positive_rate" (labels) or "mean_value" (values)
    stable_n: int
    candidate_n: int
    stable_mean: float | None
    candidate_mean: float | None
    lift: float | None  # candidate - stable (absolute)
    ci_low: float | None  # 95 % confidence interval of the lift
    ci_high: float | None
    p_value: float | None
    test: str  # "two-proportion z" or "welch t"
    status: Literal["not_enough_data", "no_difference", "candidate_better", "candidate_worse"]


class RolloutOut(_Wire):
    id: str
    endpoint: str
    model: str
    stable_version: int
    candidate_version: int
    strategy: RolloutStrategy
    state: RolloutState
    steps: list[RolloutStep]
    step_index: int
    step_started_at: float
    weight: float  # candidate's share of live traffic now, percent
    shadow: float  # share mirrored to the candidate now, 0..1
    candidate_loaded: bool
    awaiting_approval_for: int | None = None  # step index waiting for an approver
    approvals: list[ApprovalOut] = Field(default_factory=list)
    gate: GateResult | None = None
    guards: list[GuardMetric] = Field(default_factory=list)
    ab: ABResult | None = None
    candidate_lineage: Lineage | None = None
    started_by: str
    started_at: float
    updated_at: float
    ended_at: float | None = None
    end_reason: str = ""
    two_person_rule: bool = True
    host: str = ""


class DatasetInfo(_Wire):
    """A registered, immutable dataset (Parquet) used as a validation set: name, version, digest."""

    name: str
    version: int
    digest: str
    rows: int
    columns: list[str]
    size_bytes: int
    created_at: float
    created_by: str
