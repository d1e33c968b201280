"""Endpoints and serving on the wire: endpoint config, per-version stats, predictions, the prediction log."""

from __future__ import annotations

from typing import Literal

from pydantic import ConfigDict, Field

from agent.schemas.asyncinf import AsyncConfig, AsyncQueueStats
from agent.schemas.common import STRICT_INPUT, FiniteJson, WholeInt, _Wire
from agent.schemas.registry import NAME_PATTERN, ModelFormat


class BatchingConfig(_Wire):
    """Adaptive micro-batching across concurrent requests. Counts rows, not requests."""

    model_config = STRICT_INPUT
    enabled: bool = False
    max_rows: WholeInt = Field(default=64, ge=1, le=100_000)
    max_wait_ms: float = Field(default=2.0, ge=0, le=1000)


class BreakerConfig(_Wire):
    """Circuit breaker: opens on error rate or slow calls over a rolling window, probes when half-open."""

    model_config = STRICT_INPUT
    enabled: bool = True
    window_s: float = Field(default=10.0, gt=0, le=3600)
    min_requests: WholeInt = Field(default=20, ge=1)
    error_rate: float = Field(default=0.5, gt=0, le=1)
    slow_call_ms: float | None = Field(default=None, gt=0)  # a call slower than this counts as a failure
    open_s: float = Field(default=5.0, gt=0, le=3600)
    half_open_probes: WholeInt = Field(default=3, ge=1, le=1000)


class FaultConfig(_Wire):
    """Fault injection for drills and tests (as Envoy's fault filter): errors and delays before the model."""

    model_config = STRICT_INPUT
    error_rate: float = Field(default=0.0, ge=0, le=1)
    delay_ms: float = Field(default=0.0, ge=0, le=60_000)
    delay_rate: float = Field(default=1.0, ge=0, le=1)
    # Only requests served by this model version misbehave (a rollout drill: a sick candidate); None: all.
    version: WholeInt | None = Field(default=None, ge=1)


class EndpointConfig(_Wire):
    """What `PUT /api/v1/endpoints/{name}` takes. Exactly one of `version` and `alias` picks the model."""

    model_config = ConfigDict(
        **STRICT_INPUT,
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
    # `POST .../async`: its body cap, timeouts, queue capacity and result TTL (docs/async.md).
    asynchronous: AsyncConfig = Field(default_factory=AsyncConfig)


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
    model_config = STRICT_INPUT
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
    # Per endpoint with an async queue that holds or held requests since start (docs/async.md).
    async_queues: dict[str, AsyncQueueStats] = Field(default_factory=dict)


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
    mode: str = "realtime"  # how the row was asked for: realtime, async


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
