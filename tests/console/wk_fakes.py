"""Deterministic test data and fakes for the console tests (no real agent needed)."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field, replace
from email.utils import formatdate
from typing import Any
from urllib.parse import parse_qs, quote, urlsplit

from agent.schemas import (
    ROLLOUT_TERMINAL,
    ABResult,
    AlertOut,
    AlertRuleOut,
    AlertsResponse,
    ApprovalOut,
    AsyncQueueStats,
    BreakerConfig,
    CpuSample,
    DriftHistory,
    DriftPoint,
    DriftReportOut,
    EndpointConfig,
    EndpointInfo,
    EndpointVersionStats,
    EnforcementInfo,
    FeatureDriftOut,
    FeatureSpec,
    GateMetricOut,
    GateResult,
    GpuProcess,
    GpuSample,
    GpuStatus,
    GuardMetric,
    HistogramOut,
    HostInfo,
    LatencySummary,
    Lineage,
    LoadedModel,
    MemorySample,
    ModelVersion,
    OutputSpec,
    ProcessSample,
    QualityReport,
    QualityWindow,
    RolloutCreate,
    RolloutOut,
    RolloutStep,
    Series,
    SeriesPoint,
    SeriesResponse,
    ServingStatus,
    Signature,
    Snapshot,
)
from console.core.config import AgentSpec
from console.core.errors import AgentError, ErrorKind
from console.core.feeds import FeedState
from console.core.poller import AgentState, AgentStatus, FleetStatus, ServingState
from console.monitoring.client import AlertFeed
from console.rollouts.client import RolloutFeed, with_rollouts

FROZEN_NOW = 1_700_000_000.0
GiB = 2**30


def make_gpu(
    index: int, util: float | None = 50.0, mem_used_gib: float = 10.0, mem_total_gib: float = 80.0
) -> GpuSample:
    return GpuSample(
        index=index,
        uuid=f"GPU-{index:08d}-0000-0000-0000-000000000000",
        name="NVIDIA A100-SXM4-80GB",
        pci_bus_id=f"0000:{index + 1:02x}:00.0",
        utilization_percent=util,
        memory_used_bytes=int(mem_used_gib * GiB),
        memory_total_bytes=int(mem_total_gib * GiB),
        power_watts=200.0 + index,
        power_limit_watts=400.0,
        temperature_c=60.0 + index,
        processes=[GpuProcess(pid=4000 + index, name="python train.py", used_memory_bytes=int(mem_used_gib * GiB))],
    )


def make_snapshot(
    name: str = "gpu-01",
    *,
    ts: float = FROZEN_NOW - 1.0,
    cpu: float = 12.5,
    mem: float = 40.0,
    gpu_utils: Sequence[float | None] = (50.0, 70.0),
    hostname: str | None = None,
) -> Snapshot:
    gpus = [make_gpu(i, u) for i, u in enumerate(gpu_utils)]
    procs = [
        ProcessSample(
            pid=100 + i,
            name=f"proc{i}",
            username="ml",
            cpu_percent=50.0 - 10 * i,
            rss_bytes=(5 - i) * GiB,
            cmdline=f"proc{i} --flag",
        )
        for i in range(3)
    ]
    return Snapshot(
        ts=ts,
        hostname=hostname or f"{name}.example",
        agent_name=name,
        cpu=CpuSample(percent=cpu, per_core=[cpu, cpu], load1=1.5, load5=1.25, load15=1.0),
        memory=MemorySample(
            total_bytes=64 * GiB,
            available_bytes=int(64 * GiB * (1 - mem / 100)),
            used_bytes=int(64 * GiB * mem / 100),
            percent=mem,
            swap_total_bytes=0,
            swap_used_bytes=0,
        ),
        top_cpu=procs,
        top_rss=list(reversed(procs)),
        gpus=gpus,
        gpu_status=GpuStatus(source="nvml", driver_version="550.54.15")
        if gpus
        else GpuStatus(source="none", reason="no driver"),
    )


def make_host(name: str = "gpu-01", *, interval: float = 2.0, gpus: int = 2) -> HostInfo:
    return HostInfo(
        hostname=f"{name}.example",
        agent_name=name,
        agent_version="0.1.0",
        platform="Linux-6.1-x86_64",
        python="3.11.7",
        boot_time=FROZEN_NOW - 3 * 86400,
        started_at=FROZEN_NOW - 3600,
        cpu_logical=16,
        cpu_physical=8,
        memory_total_bytes=64 * GiB,
        gpus=[make_gpu(i) for i in range(gpus)],
        gpu_status=GpuStatus(source="nvml", driver_version="550.54.15"),
        enforcement=EnforcementInfo(tier="psutil"),
        sample_interval_s=interval,
        data_dir="/var/lib/watchkeeper",
        store_schema_version=1,
    )


def make_series(metric: str, start: float, end: float, step: float, gpus: int = 2) -> SeriesResponse:
    """A deterministic saw-tooth; gpu_* metrics get one series per GPU."""
    n = max(1, min(400, int((end - start) / step)))

    def points(offset: int) -> list[SeriesPoint]:
        vals = []
        for i in range(n):
            v: float | None = float((i * 7 + offset * 13) % 100)
            if metric.endswith("_bytes"):
                v = v * GiB * 0.8
            if i == 5:
                v = None  # a gap the UI must skip, not draw as zero
            vals.append(SeriesPoint(ts=start + i * step, value=v))
        return vals

    if metric.startswith("gpu_"):
        series = [
            Series(metric=metric, labels={"gpu": str(g), "uuid": f"GPU-{g:08d}-sim"}, points=points(g))
            for g in range(gpus)
        ]
    else:
        series = [Series(metric=metric, points=points(0))]
    return SeriesResponse(start=start, end=end, step_s=step, source="raw", series=series)


# --------------------------------------------------------------------------- statuses


def up(name: str, order_hint: int = 0, **snap: Any) -> AgentStatus:
    snapshot = make_snapshot(name, **snap)
    return AgentStatus(
        name=name,
        url=f"http://10.0.0.{order_hint + 1}:7070",
        state=AgentState.UP,
        snapshot=snapshot,
        host=make_host(name, gpus=len(snapshot.gpus)),
        last_seen=FROZEN_NOW,
        sample_age_s=FROZEN_NOW - snapshot.ts,
        sample_interval_s=2.0,
        latency_s=0.004,
    )


def stale(name: str, order_hint: int = 0, age: float = 45.0) -> AgentStatus:
    base = up(name, order_hint, ts=FROZEN_NOW - age, cpu=3.0, mem=20.0, gpu_utils=(0.0,))
    return replace(base, state=AgentState.STALE, reason=f"last sample {age:.0f}s old", sample_age_s=age)


def down(name: str, order_hint: int = 0, reason: str = "connection refused", retry_in: float = 8.0) -> AgentStatus:
    from console.core.errors import ErrorKind

    return AgentStatus(
        name=name,
        url=f"http://10.0.0.{order_hint + 1}:7070",
        state=AgentState.DOWN,
        reason=reason,
        error_kind=ErrorKind.REFUSED,
        failures=3,
        next_retry_at=FROZEN_NOW + retry_in,
    )


def fleet(*agents: AgentStatus, polled_at: float = FROZEN_NOW, duration_s: float = 0.25) -> FleetStatus:
    return FleetStatus(polled_at=polled_at, duration_s=duration_s, agents=tuple(agents))


# --------------------------------------------------------------------------- serving


def make_endpoint(
    name: str = "flights",
    model: str = "flights",
    version: int | None = 3,
    *,
    alias: str | None = "prod",
    breaker: str = "closed",
    forced: bool = False,
    reason: str = "",
    loaded: bool = True,
    has_fallback: bool = True,
) -> EndpointInfo:
    config = EndpointConfig(
        model=model,
        version=None if alias else version,
        alias=alias,
        fallback={"score": 0.5, "label": "on_time"} if has_fallback else None,
        breaker=BreakerConfig(),
    )
    return EndpointInfo(
        name=name,
        config=config,
        model=model,
        version=version,
        fallback_mode=forced,
        fallback_reason=reason,
        breaker_state=breaker,  # type: ignore[arg-type]
        loaded=loaded,
        updated_at=FROZEN_NOW - 600,
        updated_by="alice",
    )


def make_stats(
    endpoint: str = "flights",
    model: str = "flights",
    version: int = 3,
    *,
    rps: float = 120.0,
    p50: float | None = 1.8,
    p99: float | None = 9.5,
    error_rate: float = 0.0,
    fallback_rate: float = 0.0,
    window_s: float = 60.0,
    by_reason: dict[str, int] | None = None,
) -> EndpointVersionStats:
    window_requests = int(rps * window_s)
    return EndpointVersionStats(
        endpoint=endpoint,
        model=model,
        version=version,
        requests=window_requests * 10,
        rows=window_requests * 40,
        errors=int(error_rate * window_requests) + 3,
        fallbacks=sum((by_reason or {}).values()),
        fallbacks_by_reason=by_reason or {},
        rejected=2,
        window_s=window_s,
        window_requests=window_requests,
        window_rps=rps,
        window_error_rate=error_rate,
        window_fallback_rate=fallback_rate,
        latency=LatencySummary(count=window_requests, p50_ms=p50, p95_ms=p99 and p99 * 0.7, p99_ms=p99, mean_ms=p50),
        latency_total=LatencySummary(count=window_requests * 10, p50_ms=p50, p99_ms=p99),
        batch_rows_mean=None,
    )


def make_loaded(model: str = "flights", version: int = 3, mib: float = 48.0, endpoints: Sequence[str] = ("flights",)):
    return LoadedModel(
        model=model,
        version=version,
        format="onnx",
        memory_bytes=int(mib * 2**20),
        loaded_at=FROZEN_NOW - 3600,
        last_used_at=FROZEN_NOW - 0.5,
        load_ms=85.0,
        endpoints=list(endpoints),
    )


def make_serving(
    endpoints: Sequence[EndpointInfo],
    stats: Sequence[EndpointVersionStats] = (),
    loaded: Sequence[LoadedModel] = (),
    *,
    budget_gib: float = 4.0,
    written: int = 123_456,
    dropped: int = 0,
    in_flight: dict[str, int] | None = None,
    async_queues: dict[str, AsyncQueueStats] | None = None,
) -> ServingStatus:
    return ServingStatus(
        endpoints=list(endpoints),
        stats=list(stats),
        loaded_models=list(loaded),
        pool_budget_bytes=int(budget_gib * GiB),
        pool_used_bytes=sum(m.memory_bytes for m in loaded),
        predlog_rows_written=written,
        predlog_rows_dropped=dropped,
        in_flight=in_flight or {},
        async_queues=async_queues or {},
    )


def serving_up(
    name: str, order_hint: int, serving: ServingStatus | None, rollouts: Sequence[RolloutOut] = (), **snap: Any
) -> AgentStatus:
    """An up agent with serving status (None: an agent that serves nothing, e.g. an older one) and its
    rollouts feed (active ones, and ended ones in `ended=`)."""
    state = ServingState.OK if serving is not None else ServingState.NONE
    ended = tuple(snap.pop("ended", ()))
    agent = replace(up(name, order_hint, **snap), serving=serving, serving_state=state, serving_at=FROZEN_NOW)
    feed = RolloutFeed(state=FeedState.OK, active=tuple(rollouts), ended=ended, fetched_at=FROZEN_NOW)
    return with_rollouts(agent, feed)


def serving_fleet() -> FleetStatus:
    """Three agents: two serving (one with a tripped breaker and a forced fallback), one older agent."""
    a = make_serving(
        [make_endpoint("flights", "flights", 3), make_endpoint("fraud", "fraud", 7, alias=None, breaker="open")],
        [
            make_stats("flights", "flights", 3, rps=120.0),
            make_stats("flights", "flights", 2, rps=4.0, p50=2.4, p99=14.0, window_s=60.0),
            make_stats(
                "fraud",
                "fraud",
                7,
                rps=30.0,
                p50=55.0,
                p99=480.0,
                error_rate=0.12,
                fallback_rate=0.4,
                by_reason={"breaker_open": 700, "timeout": 20},
            ),
        ],
        [
            make_loaded("flights", 3, 48.0),
            make_loaded("flights", 2, 47.0, ()),
            make_loaded("fraud", 7, 300.0, ("fraud",)),
        ],
        in_flight={"flights": 3},
        async_queues={"flights": AsyncQueueStats(queued=120, running=8, oldest_queued_s=42.0, capacity=10_000)},
    )
    b = make_serving(
        [
            make_endpoint("flights", "flights", 3, forced=True, reason="INC-42 bad scores", breaker="half_open"),
            make_endpoint("eta", "eta", None, alias="prod", loaded=False),
        ],
        [make_stats("flights", "flights", 3, rps=80.0, fallback_rate=1.0, by_reason={"operator": 4800})],
        [make_loaded("flights", 3, 48.0)],
        dropped=17,
    )
    return fleet(serving_up("gpu-01", 0, a), serving_up("gpu-02", 1, b), serving_up("cpu-03", 2, None, gpu_utils=()))


@dataclass
class FakeSource:
    """A FleetSource serving scripted statuses; records concurrency so tests can check overlap."""

    status: FleetStatus
    poll_delay_s: float = 0.0
    series_error: Exception | None = None
    poll_error: Exception | None = None
    polls: int = 0
    in_flight: int = 0
    max_in_flight: int = 0
    series_calls: list[tuple[str, str]] = field(default_factory=list)
    closed: bool = False
    serving_wanted: bool = False
    serving_wanted_log: list[bool] = field(default_factory=list)
    fallback_calls: list[tuple[str, str, bool, str]] = field(default_factory=list)
    fallback_error: Exception | None = None
    fallback_delay_s: float = 0.0
    drift_calls: list[tuple[str, str, str]] = field(default_factory=list)
    histogram_calls: list[tuple[str, str, str]] = field(default_factory=list)
    drift_error: Exception | None = None
    quality_error: Exception | None = None
    alert_calls: list[tuple[str, str, str, float | None, str]] = field(default_factory=list)
    alert_error: Exception | None = None
    timeline_calls: list[tuple[str, str, float, float]] = field(default_factory=list)

    @property
    def specs(self) -> Sequence[AgentSpec]:
        return [AgentSpec(name=a.name, url=a.url) for a in self.status.agents]

    def now(self) -> float:
        return FROZEN_NOW

    async def poll(self) -> FleetStatus:
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            if self.poll_delay_s:
                await asyncio.sleep(self.poll_delay_s)
            self.polls += 1
            if self.poll_error is not None:
                raise self.poll_error
            return self.status
        finally:
            self.in_flight -= 1

    async def series(self, name: str, metric: str, start: float, end: float, step_s: float) -> SeriesResponse:
        self.series_calls.append((name, metric))
        if self.series_error is not None:
            raise self.series_error
        agent = self.status.get(name)
        gpus = len(agent.snapshot.gpus) if agent and agent.snapshot else 0
        return make_series(metric, start, end, step_s, gpus=gpus)

    def want_serving(self, wanted: bool) -> None:
        self.serving_wanted = wanted
        self.serving_wanted_log.append(wanted)

    async def set_fallback(self, name: str, endpoint: str, enabled: bool, reason: str) -> EndpointInfo:
        self.fallback_calls.append((name, endpoint, enabled, reason))
        if self.fallback_delay_s:
            await asyncio.sleep(self.fallback_delay_s)
        if self.fallback_error is not None:
            raise self.fallback_error
        # Apply it, as the agent would, so the next poll shows the new mode.
        agents = []
        result: EndpointInfo | None = None
        for agent in self.status.agents:
            if agent.name == name and agent.serving is not None:
                eps = []
                for ep in agent.serving.endpoints:
                    if ep.name == endpoint:
                        ep = ep.model_copy(
                            update={"fallback_mode": enabled, "fallback_reason": reason if enabled else ""}
                        )
                        result = ep
                    eps.append(ep)
                agent = replace(agent, serving=agent.serving.model_copy(update={"endpoints": eps}))
            agents.append(agent)
        if result is None:
            raise AgentError(ErrorKind.HTTP_4XX, f"HTTP 404: not_found: no endpoint {endpoint!r}", status_code=404)
        self.status = replace(self.status, agents=tuple(agents))
        return result

    # ------------------------------------------------------------------ monitoring (MonitoringSource)

    async def drift(
        self, name: str, endpoint: str, baseline: str = "reference", since: float | None = None
    ) -> DriftReportOut:
        self.drift_calls.append((name, endpoint, baseline))
        if self.drift_error is not None:
            raise self.drift_error
        return make_drift_report(endpoint, baseline)

    async def drift_history(self, name: str, endpoint: str, baseline: str = "reference") -> DriftHistory:
        return make_drift_history(endpoint, baseline)

    async def drift_histogram(self, name: str, endpoint: str, feature: str) -> HistogramOut:
        self.histogram_calls.append((name, endpoint, feature))
        return make_histogram(endpoint, feature)

    # ------------------------------------------------------------------ timeline (TimelineSource)

    async def timeline(self, name: str, endpoint: str, since: float, until: float):
        from tests.console.timeline_fakes import make_timeline

        self.timeline_calls.append((name, endpoint, since, until))
        return make_timeline(self.status.get(name).label, endpoint, since, until, self._host_no(name))

    async def timeline_before(self, name: str, endpoint: str, at: float, window_s: float):
        from tests.console.timeline_fakes import make_before

        self.timeline_calls.append((name, endpoint, at, window_s))
        return make_before(self.status.get(name).label, endpoint, at, window_s, self._host_no(name))

    def _host_no(self, name: str) -> int:
        return [a.name for a in self.status.agents].index(name)

    async def quality(self, name: str, endpoint: str) -> QualityReport:
        if self.quality_error is not None:
            raise self.quality_error
        return make_quality(endpoint)

    async def ack_alert(self, name: str, fingerprint: str, comment: str) -> AlertOut | None:
        self.alert_calls.append((name, "ack", fingerprint, None, comment))
        return self._apply_alert(name, fingerprint, {"acked_by": "op-alice", "acked_at": FROZEN_NOW})

    async def silence_alert(self, name: str, fingerprint: str, duration_s: float, comment: str) -> AlertOut | None:
        self.alert_calls.append((name, "silence", fingerprint, duration_s, comment))
        update = {"silenced_until": FROZEN_NOW + duration_s, "silenced_by": "op-alice"}
        return self._apply_alert(name, fingerprint, update)

    def _apply_alert(self, name: str, fingerprint: str, update: dict[str, Any]) -> AlertOut:
        if self.alert_error is not None:
            raise self.alert_error
        agents, result = [], None
        for agent in self.status.agents:
            if agent.name == name and agent.alerts is not None:
                alerts = []
                for a in agent.alerts.alerts:
                    if a.fingerprint == fingerprint:
                        a = result = a.model_copy(update=update)
                    alerts.append(a)
                agent = replace(agent, alerts=replace(agent.alerts, alerts=tuple(alerts)))
            agents.append(agent)
        if result is None:
            raise AgentError(ErrorKind.HTTP_4XX, f"HTTP 404: not_found: no alert {fingerprint!r}", status_code=404)
        self.status = replace(self.status, agents=tuple(agents))
        return result

    async def aclose(self) -> None:
        self.closed = True


# --------------------------------------------------------------------------- monitoring data


def make_feature(name: str, kind: str = "numeric", score: float | None = 0.05, **kw: Any) -> FeatureDriftOut:
    """One feature's drift; `method`, `threshold`, `verdict` and `drifted` follow from kind and score."""
    method = kw.pop("method", "psi" if kind == "numeric" else "jensen_shannon")
    threshold = kw.pop("threshold", 0.2 if method == "psi" else 0.1)
    drifted = score is not None and score >= threshold
    issues = kw.get("quality_issues", [])
    verdict = "no data" if score is None else ("drift" if drifted else "ok")
    if issues and score is not None:
        verdict = "drift+quality" if drifted else "quality"
    base: dict[str, Any] = {"n_ref": 50_000, "n_cur": 1_200, "missing_rate_ref": 0.0, "missing_rate_cur": 0.0}
    if kind == "numeric":
        base.update(
            psi=score, ks_stat=None if score is None else round(score * 0.7, 4), ks_pvalue=1e-9 if drifted else 0.31
        )
        base.update(wasserstein_norm=None if score is None else round(score / 3, 4), out_of_range_share=0.0)
    else:
        base.update(js=score, psi=None if score is None else round(score * 2, 4), chi2_stat=812.5, chi2_pvalue=2e-12)
        base.update(unseen_share=0.0)
    base.update(kw)
    return FeatureDriftOut(
        name=name, kind=kind, method=method, score=score, threshold=threshold, drifted=drifted, verdict=verdict,
        **base,
    )  # fmt: skip


def make_drift_report(endpoint: str = "flights", baseline: str = "reference", *, version: int = 3) -> DriftReportOut:
    """Reference: distance drifted, carrier drifted with missing values and unseen categories.
    Previous window: only dep_hour moved (so the order of the table changes with the baseline)."""
    if baseline == "reference":
        features = [
            make_feature("distance", score=0.31, out_of_range_share=0.034),
            make_feature(
                "carrier", "categorical", score=0.14, missing_rate_cur=0.12, unseen_share=0.041,
                unseen_top=["ZZ", "QQ"], quality_issues=["missing rate 12.0% (reference 0.0%)"],
            ),
            make_feature("dep_hour", score=0.08),
            make_feature("temp", score=None, n_cur=0),
            make_feature("__prediction__", score=0.12),
        ]  # fmt: skip
    else:
        features = [
            make_feature("distance", score=0.02),
            make_feature("carrier", "categorical", score=0.01),
            make_feature("dep_hour", score=0.27),
            make_feature("temp", score=None, n_cur=0),
            make_feature("__prediction__", score=0.03),
        ]
    drifted = [f for f in features if f.drifted and not f.name.startswith("__")]
    return DriftReportOut(
        endpoint=endpoint,
        model="flights",
        version=version,
        baseline=baseline,  # type: ignore[arg-type]
        window_start=FROZEN_NOW - 100.0,
        window_end=FROZEN_NOW - 40.0,
        n_ref=50_000 if baseline == "reference" else 1_150,
        n_cur=1_200,
        drift_share=len(drifted) / 3,  # temp (no rows in the window) is not judged
        features_judged=3,
        features_drifted=len(drifted),
        dataset_drift=len(drifted) >= 2,
        features=features,
        computed_at=FROZEN_NOW - 35.0,
    )


def make_drift_history(endpoint: str = "flights", baseline: str = "reference", windows: int = 12) -> DriftHistory:
    """Each feature's score rising towards the report's latest score."""
    report = make_drift_report(endpoint, baseline)
    features = {}
    for f in report.features:
        final = f.score
        points = []
        for i in range(windows):
            score = None if final is None else round(final * (i + 1) / windows, 4)
            points.append(
                DriftPoint(
                    window_end=FROZEN_NOW - 40.0 - 60.0 * (windows - 1 - i),
                    score=score,
                    drifted=score is not None and f.threshold is not None and score >= f.threshold,
                    verdict="no data" if score is None else "ok",
                )
            )
        features[f.name] = points
    return DriftHistory(endpoint=endpoint, baseline=baseline, features=features)  # type: ignore[arg-type]


def make_histogram(endpoint: str = "flights", feature: str = "distance") -> HistogramOut:
    if feature == "carrier":
        bins, ref, cur = (
            ["AA", "DL", "UA", "(unseen)", "(missing)"],
            [0.4, 0.35, 0.25, 0.0, 0.0],
            [0.3, 0.3, 0.18, 0.1, 0.12],
        )
        kind = "categorical"
    else:
        seed = sum(map(ord, feature)) % 5
        bins = ["< 100", "[100, 500)", "[500, 1000)", "[1000, 2000)", ">= 2000", "(missing)"]
        ref = [0.1, 0.3, 0.3, 0.2, 0.1, 0.0]
        cur = [0.05, 0.2 + seed * 0.01, 0.3, 0.3 - seed * 0.01, 0.15, 0.0]
        kind = "numeric"
    return HistogramOut(
        endpoint=endpoint, feature=feature, kind=kind, bins=bins, reference=ref, current=cur,  # type: ignore[arg-type]
        window_start=FROZEN_NOW - 100.0, window_end=FROZEN_NOW - 40.0,
    )  # fmt: skip


def make_quality(endpoint: str = "flights") -> QualityReport:
    windows = [
        QualityWindow(
            model="flights", version=3, window_start=FROZEN_NOW - 3700.0 + 600 * i,
            window_end=FROZEN_NOW - 3100.0 + 600 * i, labelled=400 + i, predictions=5_000,
            accuracy=0.84 - 0.01 * i, auc=0.9 - 0.01 * i, f1=0.7,
        )
        for i in range(3)
    ]  # fmt: skip
    return QualityReport(
        endpoint=endpoint, kind="binary", windows=windows, reference_metrics={"accuracy": 0.85, "auc": 0.91, "f1": 0.72}
    )


def make_alert(
    fingerprint: str,
    rule: str = "feature_drift",
    *,
    severity: str = "warning",
    state: str = "firing",
    endpoint: str | None = "flights",
    subject: str | None = None,
    summary: str = "",
    value: float | None = None,
    threshold: float | None = None,
    age: float = 600.0,
    host: str = "",
    now: float = FROZEN_NOW,
    **kw: Any,
) -> AlertOut:
    started = now - age
    return AlertOut(
        fingerprint=fingerprint,
        rule=rule,
        kind=kw.pop("kind", rule),
        severity=severity,  # type: ignore[arg-type]
        state=state,  # type: ignore[arg-type]
        endpoint=endpoint,
        subject=subject,
        summary=summary or f"{rule} on {endpoint or 'agent'}",
        value=value,
        threshold=threshold,
        started_at=started,
        firing_at=started + 60 if state != "pending" else None,
        resolved_at=now - 30 if state == "resolved" else None,
        updated_at=now - 5,
        host=host,
        **kw,
    )


def fleet_alerts(host: str, now: float = FROZEN_NOW) -> list[AlertOut]:
    """gpu-01's alerts: a critical drift firing, a pending latency warning, a resolved fallback rate."""
    return [
        make_alert(
            "a1f0", "feature_drift", severity="critical", subject="distance", value=0.31, threshold=0.2, age=900,
            summary="feature distance drifted: psi 0.31 (threshold 0.2)", host=host, now=now,
        ),
        make_alert(
            "b2e1", "latency_p99", severity="warning", state="pending", value=480.0, threshold=250.0, age=45,
            summary="p99 latency 480 ms (threshold 250)", host=host, now=now,
        ),
        make_alert(
            "c3d2", "fallback_rate", severity="info", state="resolved", value=0.01, threshold=0.05, age=7200,
            summary="fallback rate 1% (threshold 0.05)", host=host, now=now,
        ),
    ]  # fmt: skip


def alerting(agent: AgentStatus, alerts: Sequence[AlertOut], state: FeedState = FeedState.OK, error: str | None = None):
    """`agent` with an alert feed."""
    return replace(agent, alerts=AlertFeed(state=state, alerts=tuple(alerts), error=error, fetched_at=FROZEN_NOW))


def alerts_fleet() -> FleetStatus:
    """Four agents: gpu-01 with three alerts, gpu-02 with an acknowledged warning, gpu-03 down (its last
    known alert kept), cpu-04 without alerting."""
    acked = make_alert(
        "d4c3", "error_rate", endpoint="fraud", value=0.12, threshold=0.05, age=300, host="gpu-02",
        summary="error rate 12% (threshold 0.05)", acked_by="bob", acked_at=FROZEN_NOW - 120,
        ack_comment="bad deploy of fraud, rolling back",
    )  # fmt: skip
    last_known = make_alert(
        "e5b4", "quality_drop", endpoint="eta", subject="accuracy", value=0.7, threshold=0.8, age=1800, host="gpu-03",
        summary="accuracy 0.70 (threshold 0.8)",
    )  # fmt: skip
    gone = replace(down("gpu-03", 2), last_seen=FROZEN_NOW - 95.0)
    return fleet(
        alerting(up("gpu-01", 0), fleet_alerts("gpu-01")),
        alerting(up("gpu-02", 1), [acked]),
        alerting(gone, [last_known], FeedState.ERROR, "connection refused"),
        alerting(up("cpu-04", 3, gpu_utils=()), [], FeedState.NONE),
    )


# --------------------------------------------------------------------------- a tiny HTTP agent


@dataclass
class Reply:
    status: int = 200
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    delay_s: float = 0.0
    hang: bool = False


Handler = Callable[[str, dict[str, list[str]], dict[str, str]], "Reply | Awaitable[Reply]"]


@dataclass
class FakeRequest:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


RequestHandler = Callable[[FakeRequest], "Reply | Awaitable[Reply]"]


class FakeHttpAgent:
    """A minimal HTTP/1.1 keep-alive server on loopback (and optionally a Unix socket) with scripted routes.

    `routes[path]` is a Reply or a function (path, query, headers) -> Reply, for any method;
    `routes["POST /path"]` (method first) is a Reply or a function (FakeRequest) -> Reply and wins
    over the bare path. Every request is recorded in `requests` as (path, headers), and with its
    method and body in `full_requests`.
    """

    def __init__(self, routes: dict[str, Any] | None = None, *, uds: str | None = None) -> None:
        self.routes: dict[str, Any] = dict(routes or {})
        self.requests: list[tuple[str, dict[str, str]]] = []
        self.full_requests: list[FakeRequest] = []
        self.connections = 0
        self.uds = uds
        self._servers: list[asyncio.AbstractServer] = []
        self._writers: set[asyncio.StreamWriter] = set()
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def count(self, path: str) -> int:
        return sum(1 for p, _ in self.requests if p == path)

    async def start(self) -> FakeHttpAgent:
        server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = server.sockets[0].getsockname()[1]
        self._servers.append(server)
        if self.uds:
            self._servers.append(await asyncio.start_unix_server(self._serve, self.uds))
        return self

    async def stop(self) -> None:
        for server in self._servers:
            server.close()
        for writer in list(self._writers):
            writer.close()
        self._servers.clear()

    async def __aenter__(self) -> FakeHttpAgent:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        self.connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                method, target, _ = lines[0].split(" ", 2)
                headers = {}
                for line in lines[1:]:
                    if ":" in line:
                        k, v = line.split(":", 1)
                        headers[k.strip().lower()] = v.strip()
                length = int(headers.get("content-length") or 0)
                body = await reader.readexactly(length) if length else b""
                parts = urlsplit(target)
                self.requests.append((parts.path, headers))
                request = FakeRequest(method, parts.path, parse_qs(parts.query), headers, body)
                self.full_requests.append(request)
                route = self.routes.get(f"{method} {parts.path}")
                if route is not None and not isinstance(route, Reply):
                    result = route(request)
                    reply = await result if asyncio.iscoroutine(result) else result
                else:
                    route = route or self.routes.get(parts.path)
                    if route is None:
                        reply = Reply(404, {"error": "not_found", "detail": f"no route {method} {parts.path}"})
                    elif isinstance(route, Reply):
                        reply = route
                    else:
                        result = route(parts.path, parse_qs(parts.query), headers)
                        reply = await result if asyncio.iscoroutine(result) else result
                if reply.hang:
                    await asyncio.Event().wait()
                if reply.delay_s:
                    await asyncio.sleep(reply.delay_s)
                body = reply.body
                if hasattr(body, "model_dump_json"):
                    payload = body.model_dump_json().encode()
                elif isinstance(body, bytes):
                    payload = body
                else:
                    payload = json.dumps(body).encode()
                hdrs = {
                    "content-type": "application/json",
                    "content-length": str(len(payload)),
                    "date": formatdate(usegmt=True),
                }
                hdrs.update(reply.headers)
                status_line = f"HTTP/1.1 {reply.status} {'OK' if reply.status < 400 else 'Error'}\r\n"
                writer.write(
                    status_line.encode()
                    + "".join(f"{k}: {v}\r\n" for k, v in hdrs.items()).encode()
                    + b"\r\n"
                    + payload
                )
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
            pass
        finally:
            self._writers.discard(writer)
            writer.close()


def closed_url() -> str:
    """An agent address where nothing listens (connection refused)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"


class TokenRoutes:
    """Routes of a fake agent that, given a `token`, answer 401 to requests without `Bearer <token>`."""

    token: str | None

    def _authorized(self, headers: dict[str, str]) -> bool:
        return self.token is None or headers.get("authorization") == f"Bearer {self.token}"

    def _guard(self, make: Callable[[dict[str, list[str]]], Reply]) -> Handler:
        def handler(path: str, query: dict[str, list[str]], headers: dict[str, str]) -> Reply:
            if not self._authorized(headers):
                return Reply(401, {"error": "unauthorized"})
            return make(query)

        return handler


def agent_routes(
    name: str = "gpu-01",
    *,
    clock: Callable[[], float] | None = None,
    interval: float = 2.0,
    gpus: int = 2,
    token: str | None = None,
) -> dict[str, Reply | Handler]:
    """Routes of a healthy agent; with `token`, /api/v1/* demands it."""
    import time as _time

    now = clock or _time.time

    def guard(make: Callable[[], Any]) -> Handler:
        def handler(path: str, query: dict[str, list[str]], headers: dict[str, str]) -> Reply:
            if token is not None and headers.get("authorization") != f"Bearer {token}":
                return Reply(401, {"error": "unauthorized", "detail": "bad or missing token"})
            return Reply(200, make())

        return handler

    return {
        "/readyz": Reply(200, {"status": "ok", "agent_name": name, "version": "0.1.0"}),
        "/healthz": Reply(200, {"status": "ok", "agent_name": name, "version": "0.1.0"}),
        "/api/v1/host": guard(lambda: make_host(name, interval=interval, gpus=gpus)),
        "/api/v1/snapshot": guard(lambda: make_snapshot(name, ts=now() - 0.5, gpu_utils=[40.0] * gpus)),
    }


@dataclass
class MonitoredAgent(TokenRoutes):
    """Routes of an agent that serves one endpoint with drift data and alerts; records acks and silences.

    Drift follows `make_drift_report` (the `baseline` query picks which); alerts are `fleet_alerts`
    relative to the real clock, with `ack`/`silence` applied as the agent would.
    """

    name: str = "gpu-01"
    endpoint: str = "flights"
    token: str | None = None
    alerting: bool = True
    alerts: list[AlertOut] = field(default_factory=list)
    alert_queries: list[dict[str, list[str]]] = field(default_factory=list)
    actions: list[tuple[str, str, dict[str, Any]]] = field(default_factory=list)

    def __post_init__(self) -> None:
        import time as _time

        if not self.alerts and self.alerting:
            self.alerts = fleet_alerts(self.name, now=_time.time())

    def routes(self) -> dict[str, Any]:
        ep = f"/api/v1/endpoints/{quote(self.endpoint, safe='')}"
        routes: dict[str, Any] = dict(agent_routes(self.name, token=self.token))
        serving = make_serving(
            [make_endpoint(self.endpoint, "flights", 3)],
            [make_stats(self.endpoint, "flights", 3)],
            [make_loaded("flights", 3, 48.0, (self.endpoint,))],
        )
        routes["/api/v1/serving"] = self._guard(lambda q: Reply(200, serving))
        routes[f"{ep}/drift"] = self._guard(
            lambda q: Reply(200, make_drift_report(self.endpoint, q.get("baseline", ["reference"])[0]))
        )
        routes[f"{ep}/drift/history"] = self._guard(
            lambda q: Reply(200, make_drift_history(self.endpoint, q.get("baseline", ["reference"])[0]))
        )
        routes[f"{ep}/drift/histogram"] = self._guard(
            lambda q: Reply(200, make_histogram(self.endpoint, q["feature"][0]))
        )
        routes[f"{ep}/quality"] = self._guard(lambda q: Reply(200, make_quality(self.endpoint)))
        if self.alerting:
            routes["/api/v1/alerting"] = self._guard(self._list)
            for a in self.alerts:
                routes[f"POST /api/v1/alerts/{a.fingerprint}/ack"] = self._action
                routes[f"POST /api/v1/alerts/{a.fingerprint}/silence"] = self._action
        return routes

    def _list(self, query: dict[str, list[str]]) -> Reply:
        self.alert_queries.append(query)
        state = query.get("state", [None])[0]
        alerts = [a for a in self.alerts if state is None or a.state == state]
        rules = [
            AlertRuleOut(name=a.rule, kind=a.kind, severity=a.severity, threshold=a.threshold, for_s=60) for a in alerts
        ]
        return Reply(200, AlertsResponse(alerts=alerts, rules=rules, webhooks=[]))

    def _action(self, request: FakeRequest) -> Reply:
        import time as _time

        if not self._authorized(request.headers):
            return Reply(401, {"error": "unauthorized"})
        _, _, _, _, fingerprint, verb = request.path.split("/")
        body = request.json()
        self.actions.append((verb, fingerprint, body))
        now = _time.time()
        for i, a in enumerate(self.alerts):
            if a.fingerprint == fingerprint:
                if verb == "ack":
                    update: dict[str, Any] = {"acked_by": "operator-1", "acked_at": now}
                else:
                    update = {"silenced_until": now + body["duration_s"], "silenced_by": "operator-1"}
                self.alerts[i] = a.model_copy(update=update)
                return Reply(200, self.alerts[i])
        return Reply(404, {"error": "not_found", "detail": f"no alert with fingerprint {fingerprint!r}"})


class ThreadedFakeAgent:
    """A FakeHttpAgent on its own event loop thread, for code that calls asyncio.run itself."""

    def __init__(self, routes: dict[str, Any]) -> None:
        self.agent = FakeHttpAgent(routes)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)

    def __enter__(self) -> FakeHttpAgent:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self.agent.start(), self._loop).result(5)
        return self.agent

    def __exit__(self, *exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self.agent.stop(), self._loop).result(5)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)


# --------------------------------------------------------------------------- a fake predict endpoint


def make_model_version(model: str = "flights", version: int = 3) -> ModelVersion:
    return ModelVersion(
        name=model,
        version=version,
        digest="0" * 64,
        size_bytes=1024,
        format="onnx",
        created_at=FROZEN_NOW - 86400,
        created_by="ci",
        lineage=Lineage(build_id="b1", code_commit="abc123", data_version="d1"),
        signature=Signature(
            features=[
                FeatureSpec(name="distance", dtype="float", min=50.0, max=5000.0),
                FeatureSpec(name="dep_hour", dtype="int", min=0, max=23),
                FeatureSpec(name="weekend", dtype="bool"),
                FeatureSpec(name="carrier", dtype="category", categories=["AA", "DL", "UA"]),
                FeatureSpec(name="temp", dtype="float"),  # no range: the loadtest picks a default one
            ],
            output=OutputSpec(kind="binary", labels=["on_time", "late"]),
        ),
    )


@dataclass
class FakePredictor:
    """Routes of an agent with one endpoint: validates rows against the signature like the agent.

    `script(i)` may return a Reply for the i-th predict request (0-based) to force a status,
    a fallback or a delay; `cpu_per_scrape` is how much `process_cpu_seconds_total` grows
    between two /metrics scrapes.
    """

    endpoint: str = "flights"
    model_version: ModelVersion = field(default_factory=make_model_version)
    token: str | None = None
    script: Callable[[int], Reply | None] | None = None
    delay_s: float = 0.0
    cpu_per_scrape: float = 0.5
    predicts: int = 0
    rows: int = 0
    bad_rows: list[str] = field(default_factory=list)
    request_ids: list[str] = field(default_factory=list)
    scrapes: int = 0

    def routes(self) -> dict[str, Any]:
        mv = self.model_version
        info = make_endpoint(self.endpoint, mv.name, mv.version)
        return {
            f"/api/v1/endpoints/{self.endpoint}": self._guard(lambda: Reply(200, info)),
            f"/api/v1/models/{mv.name}/versions/{mv.version}": self._guard(lambda: Reply(200, mv)),
            "/metrics": self._metrics,
            f"POST /api/v1/endpoints/{self.endpoint}/predict": self._predict,
        }

    def _guard(self, make: Callable[[], Reply]) -> Handler:
        def handler(path: str, query: dict[str, list[str]], headers: dict[str, str]) -> Reply:
            if self.token is not None and headers.get("authorization") != f"Bearer {self.token}":
                return Reply(401, {"error": "unauthorized"})
            return make()

        return handler

    def _metrics(self, path: str, query: dict[str, list[str]], headers: dict[str, str]) -> Reply:
        self.scrapes += 1
        text = (
            "# HELP process_cpu_seconds_total Total user and system CPU time spent in seconds.\n"
            "# TYPE process_cpu_seconds_total counter\n"
            f"process_cpu_seconds_total {10.0 + self.cpu_per_scrape * (self.scrapes - 1)}\n"
        )
        return Reply(200, text.encode(), headers={"content-type": "text/plain; version=0.0.4"})

    async def _predict(self, request: FakeRequest) -> Reply:
        i = self.predicts
        self.predicts += 1
        self.request_ids.append(request.headers.get("x-request-id", ""))
        if self.token is not None and request.headers.get("authorization") != f"Bearer {self.token}":
            return Reply(401, {"error": "unauthorized"})
        doc = request.json()
        if "records" in doc:
            records = doc["records"]
        else:
            cols = doc["columns"]
            n = len(next(iter(cols.values())))
            records = [{k: v[j] for k, v in cols.items()} for j in range(n)]
        for row in records:
            for f in self.model_version.signature.features:
                v = row.get(f.name)
                ok = (
                    v is None
                    or (f.dtype == "bool" and isinstance(v, bool))
                    or (f.dtype == "category" and v in (f.categories or []))
                    or (f.dtype == "int" and isinstance(v, int) and not isinstance(v, bool))
                    or (f.dtype == "float" and isinstance(v, int | float) and not isinstance(v, bool))
                )
                if ok and v is not None and f.dtype in ("int", "float"):
                    ok = (f.min is None or v >= f.min) and (f.max is None or v <= f.max)
                if not ok:
                    self.bad_rows.append(f"{f.name}={v!r}")
        self.rows += len(records)
        reply = self.script(i) if self.script else None
        if reply is not None:
            if reply.delay_s:
                await asyncio.sleep(reply.delay_s)
                reply = replace(reply, delay_s=0.0)
            return reply
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        mv = self.model_version
        body = {
            "request_id": request.headers.get("x-request-id", "x"),
            "endpoint": self.endpoint,
            "model": mv.name,
            "version": mv.version,
            "predictions": [{"score": 0.25, "label": "on_time"} for _ in records],
            "fallback": False,
            "fallback_reason": None,
            "latency_ms": 0.1,
        }
        return Reply(200, body)


def fallback_reply(reason: str, n: int = 1) -> Reply:
    body = {
        "request_id": "x",
        "endpoint": "flights",
        "model": "flights",
        "version": 3,
        "predictions": [{"score": 0.5, "label": "on_time"}] * n,
        "fallback": True,
        "fallback_reason": reason,
        "latency_ms": 0.05,
    }
    return Reply(200, body, headers={"x-watchkeeper-fallback": reason})


# --------------------------------------------------------------------------- rollouts


def make_rollout(
    rollout_id: str = "r-0001",
    endpoint: str = "flights",
    *,
    strategy: str = "canary",
    state: str = "progressing",
    step_index: int = 0,
    steps: Sequence[dict[str, Any]] | None = None,
    stable: int = 2,
    candidate: int = 3,
    model: str = "flights",
    weight: float | None = None,
    shadow: float = 0.0,
    in_step_s: float = 42.0,
    age: float = 600.0,
    guards: Sequence[GuardMetric] | None = None,
    gate: GateResult | None = None,
    ab: ABResult | None = None,
    approvals: Sequence[ApprovalOut] = (),
    started_by: str = "alice",
    ended_ago: float | None = None,
    end_reason: str = "",
    host: str = "",
    now: float = FROZEN_NOW,
) -> RolloutOut:
    """A rollout as an agent reports it; the canary's default plan unless `steps` are given."""
    plan = [RolloutStep(**s) for s in steps] if steps is not None else canary_plan()
    if weight is None:
        weights = [s.set_weight for s in plan[: step_index + 1] if s.set_weight is not None]
        weight = weights[-1] if weights else 0.0
    awaiting = step_index if state == "awaiting_approval" else None
    return RolloutOut(
        id=rollout_id,
        endpoint=endpoint,
        model=model,
        stable_version=stable,
        candidate_version=candidate,
        strategy=strategy,  # type: ignore[arg-type]
        state=state,  # type: ignore[arg-type]
        steps=plan,
        step_index=step_index,
        step_started_at=now - in_step_s,
        weight=weight,
        shadow=shadow,
        candidate_loaded=True,
        awaiting_approval_for=awaiting,
        approvals=list(approvals),
        gate=gate,
        guards=list(guards if guards is not None else make_guards()),
        ab=ab,
        candidate_lineage=Lineage(
            build_id="build-117", code_commit="9f3c2ab", code_dirty=True, data_version="d-2024-05"
        ),
        started_by=started_by,
        started_at=now - age,
        updated_at=now - 1.0,
        ended_at=None if ended_ago is None else now - ended_ago,
        end_reason=end_reason,
        host=host,
    )


def canary_plan() -> list[RolloutStep]:
    """The canary default: 5 %, approval, 25 %, pause 60 s, 50 %, approval, 100 %."""
    return [
        RolloutStep(set_weight=5),
        RolloutStep(approval=True),
        RolloutStep(set_weight=25),
        RolloutStep(pause_s=60),
        RolloutStep(set_weight=50),
        RolloutStep(approval=True),
        RolloutStep(set_weight=100),
    ]


def make_guards(*, breached: bool = False, now: float = FROZEN_NOW) -> list[GuardMetric]:
    """Error rate (breached for 12 s when `breached`), p99 against stable, prediction drift, one not judged."""
    return [
        GuardMetric(
            name="error_rate", stable=0.001, candidate=0.08 if breached else 0.002, limit=0.05, breached=breached,
            breached_since=now - 12.0 if breached else None,
        ),
        GuardMetric(name="p99_vs_stable", stable=9.5, candidate=11.2, limit=19.0, breached=False),
        GuardMetric(name="prediction_drift", stable=0.0, candidate=0.04, limit=0.2, breached=False),
        GuardMetric(name="fallback_rate", stable=0.0, candidate=None, limit=0.1, breached=False),
    ]  # fmt: skip


def make_gate(passed: bool = True) -> GateResult:
    return GateResult(
        dataset="flights-val",
        dataset_digest="4f2a9c0d1e8b7a6f5e4d3c2b1a09",
        rows=5000,
        passed=passed,
        metrics=[
            GateMetricOut(metric="auc", stable=0.792, candidate=0.811 if passed else 0.71, threshold=0.75,
                          passed=passed, detail="" if passed else "0.71 < threshold 0.75"),
            GateMetricOut(metric="log_loss", stable=0.41, candidate=0.39, min_absolute_change=0.01, passed=True),
        ],
        evaluated_at=FROZEN_NOW - 700,
    )  # fmt: skip


def rollouts_feed(agent: AgentStatus, rollouts: Sequence[RolloutOut], state: FeedState = FeedState.OK):
    """`agent` with a rollout feed (active and ended split by state)."""
    from console.rollouts.client import RolloutFeed, with_rollouts

    active = tuple(r for r in rollouts if r.state not in ROLLOUT_TERMINAL)
    ended = tuple(r for r in rollouts if r.state in ROLLOUT_TERMINAL)
    return with_rollouts(agent, RolloutFeed(state=state, active=active, ended=ended, fetched_at=FROZEN_NOW))


def rollouts_fleet() -> FleetStatus:
    """gpu-01: flights awaiting approval of step 2 (a guard breached) and an A/B test of fraud without enough
    data; gpu-02: flights awaiting approval too (same versions: a fan-out); gpu-03: eta's shadow rollout
    aborted 10 minutes ago; cpu-04: an agent without rollouts."""
    flights_1 = make_rollout(
        "r-a1", state="awaiting_approval", step_index=1, gate=make_gate(), guards=make_guards(breached=True),
        host="gpu-01",
    )  # fmt: skip
    ab = make_rollout(
        "r-a2", "fraud", strategy="ab", model="fraud", stable=7, candidate=8,
        steps=[{"set_weight": 50}, {"approval": True}], in_step_s=300, age=400,
        ab=ABResult(outcome="positive_rate", stable_n=120, candidate_n=131, stable_mean=0.112, candidate_mean=0.13,
                    lift=None, ci_low=None, ci_high=None, p_value=None, test="two-proportion z",
                    status="not_enough_data"),
        started_by="carol", host="gpu-01",
    )  # fmt: skip
    flights_2 = make_rollout(
        "r-b1", state="awaiting_approval", step_index=1, gate=make_gate(), host="gpu-02",
        approvals=[],
    )  # fmt: skip
    aborted = make_rollout(
        "r-c1", "eta", strategy="shadow", model="eta", stable=4, candidate=5, state="aborted", step_index=1,
        steps=[{"shadow": 1.0}, {"analysis_s": 300}, {"approval": True}], weight=0.0, shadow=0.0,
        guards=make_guards(breached=True), ended_ago=600, age=1500,
        end_reason="guard error_rate breached for 30s (8.0% > 5.0%)", host="gpu-03",
    )  # fmt: skip
    return fleet(
        rollouts_feed(up("gpu-01", 0), [flights_1, ab]),
        rollouts_feed(up("gpu-02", 1), [flights_2]),
        rollouts_feed(up("gpu-03", 2), [aborted]),
        rollouts_feed(up("cpu-04", 3, gpu_utils=()), [], FeedState.NONE),
    )


def apply_rollout_action(r: RolloutOut, action: str, step_index: int | None, reason: str, who: str, now: float):
    """What an agent does with an action (simplified): the new rollout."""
    update: dict[str, Any] = {"updated_at": now}
    if action in ("approve", "reject"):
        ap = ApprovalOut(
            step_index=r.step_index, decision="approved" if action == "approve" else "rejected", principal=who,
            at=now, reason=reason,
        )  # fmt: skip
        update["approvals"] = [*r.approvals, ap]
        update["awaiting_approval_for"] = None
        if action == "approve":
            nxt = r.step_index + 1
            if nxt >= len(r.steps):
                update.update(state="promoted", weight=100.0, ended_at=now, end_reason=f"promoted by {who}")
            else:
                step = r.steps[nxt]
                update.update(step_index=nxt, step_started_at=now, state="progressing")
                if step.set_weight is not None:
                    update["weight"] = step.set_weight
                if step.approval:
                    update.update(state="awaiting_approval", awaiting_approval_for=nxt)
        else:
            update.update(state="aborted", weight=0.0, ended_at=now, end_reason=f"step rejected by {who}")
    elif action == "promote":
        update.update(state="promoted", weight=100.0, ended_at=now, end_reason=f"promoted by {who}")
    elif action == "pause":
        update.update(state="paused", awaiting_approval_for=None)
    elif action == "resume":
        step = r.steps[r.step_index]
        state = "awaiting_approval" if step.approval else "progressing"
        update.update(state=state, awaiting_approval_for=r.step_index if step.approval else None)
    elif action == "abort":
        update.update(state="aborted", weight=0.0, ended_at=now, end_reason=f"aborted by {who}: {reason}")
    elif action == "rollback":
        update.update(state="rolled_back", weight=0.0, ended_at=now, end_reason=f"rolled back by {who}: {reason}")
    return r.model_copy(update=update)


@dataclass
class RolloutFakeSource(FakeSource):
    """A FakeSource with rollouts (`rollouts_fleet()` by default) that records and applies actions."""

    status: FleetStatus = field(default_factory=rollouts_fleet)
    rollout_calls: list[tuple[str, str, str, int | None, str]] = field(default_factory=list)
    rollout_errors: dict[str, Exception] = field(default_factory=dict)  # agent -> error its actions raise

    async def rollout_action(
        self, name: str, rollout_id: str, action: str, step_index: int | None, reason: str
    ) -> RolloutOut:
        from console.rollouts.client import rollout_feed

        self.rollout_calls.append((name, rollout_id, action, step_index, reason))
        if name in self.rollout_errors:
            raise self.rollout_errors[name]
        agents, result = [], None
        for agent in self.status.agents:
            feed = rollout_feed(agent)
            if agent.name == name and feed is not None:
                rollouts = []
                for r in feed.rollouts:
                    if r.id == rollout_id:
                        r = result = apply_rollout_action(r, action, step_index, reason, "op-bob", FROZEN_NOW)
                    rollouts.append(r)
                agent = rollouts_feed(agent, rollouts, feed.state)
            agents.append(agent)
        if result is None:
            raise AgentError(ErrorKind.HTTP_4XX, f"HTTP 404: not_found: no rollout {rollout_id!r}", status_code=404)
        self.status = replace(self.status, agents=tuple(agents))
        return result


@dataclass
class RolloutAgent(TokenRoutes):
    """Routes of an agent serving `endpoint` (model flights, version `stable`) with the rollout routes.

    Records every POST in `posts` as (path, body). A new rollout gets the id `r-<name>-NN`; `gate_fails`
    answers the start with a 422 gate failure; `script` lists updates applied to a started rollout, one
    per `GET /rollouts/{id}` (how `deploy --wait` sees it move). `principal` is who we are to this agent:
    under the two-person rule it may not approve a rollout it started (403).
    """

    name: str = "gpu-01"
    endpoint: str = "flights"
    token: str | None = None
    has_endpoint: bool = True
    stable: int = 2
    gate_fails: bool = False
    principal: str = "op-bob"
    rollouts: list[RolloutOut] = field(default_factory=list)
    script: list[dict[str, Any]] = field(default_factory=list)
    posts: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    max_ids: int = 20

    def routes(self) -> dict[str, Any]:
        routes: dict[str, Any] = dict(agent_routes(self.name, token=self.token))
        ep = f"/api/v1/endpoints/{quote(self.endpoint, safe='')}"
        if self.has_endpoint:
            info = make_endpoint(self.endpoint, "flights", self.stable, alias=None)
            routes[ep] = self._guard(lambda q: Reply(200, info))
            routes[f"POST {ep}/rollouts"] = self._start
        routes["/api/v1/rollouts"] = self._guard(self._list)
        ids = [r.id for r in self.rollouts] + [self._new_id(n) for n in range(1, self.max_ids + 1)]
        for rid in ids:
            routes[f"/api/v1/rollouts/{rid}"] = self._guard(lambda q, rid=rid: self._get(rid))
            for action in ("approve", "reject", "promote", "pause", "resume", "abort", "rollback"):
                routes[f"POST /api/v1/rollouts/{rid}/{action}"] = self._act
        return routes

    def _new_id(self, n: int) -> str:
        return f"r-{self.name}-{n:02d}"

    def find(self, rollout_id: str) -> RolloutOut | None:
        return next((r for r in self.rollouts if r.id == rollout_id), None)

    def _list(self, query: dict[str, list[str]]) -> Reply:
        active = query.get("active", [None])[0]
        out = [r for r in self.rollouts if active is None or (r.state not in ROLLOUT_TERMINAL) == (active == "true")]
        return Reply(200, [json.loads(r.model_dump_json()) for r in sorted(out, key=lambda r: -r.started_at)])

    def _get(self, rollout_id: str) -> Reply:
        r = self.find(rollout_id)
        if r is None:
            return Reply(404, {"error": "not_found", "detail": f"no rollout {rollout_id!r}", "field": "id"})
        if self.script and r.state not in ROLLOUT_TERMINAL:
            r = self._replace(r.model_copy(update=self.script.pop(0)))
        return Reply(200, r)

    def _replace(self, new: RolloutOut) -> RolloutOut:
        self.rollouts = [new if r.id == new.id else r for r in self.rollouts]
        return new

    def _start(self, request: FakeRequest) -> Reply:
        import time as _time

        if not self._authorized(request.headers):
            return Reply(401, {"error": "unauthorized"})
        body = request.json()
        self.posts.append((request.path, body))
        create = RolloutCreate.model_validate(body)
        if any(r.endpoint == self.endpoint and r.state not in ROLLOUT_TERMINAL for r in self.rollouts):
            return Reply(409, {"error": "conflict", "detail": f"{self.endpoint!r} already has an active rollout",
                               "field": "name"})  # fmt: skip
        if self.gate_fails:
            gate = make_gate(passed=False)
            return Reply(422, {"error": "gate_failed", "detail": json.loads(gate.model_dump_json()), "field": "gate"})
        now = _time.time()
        steps = [s.model_dump(exclude_none=True) for s in create.steps] if create.steps else None
        r = make_rollout(
            self._new_id(len(self.rollouts) + 1), self.endpoint, strategy=create.strategy, steps=steps,
            stable=self.stable, candidate=create.candidate_version, in_step_s=0.0, age=0.0, guards=[],
            gate=make_gate() if create.gate else None, started_by=self.principal, host=self.name, now=now,
        )  # fmt: skip
        self.rollouts.append(r)
        return Reply(201, r)

    def _act(self, request: FakeRequest) -> Reply:
        import time as _time

        if not self._authorized(request.headers):
            return Reply(401, {"error": "unauthorized"})
        _, _, _, _, rid, action = request.path.split("/")
        body = request.json() if request.body else {}
        self.posts.append((request.path, body))
        r = self.find(rid)
        if r is None:
            return Reply(404, {"error": "not_found", "detail": f"no rollout {rid!r}", "field": "id"})
        if action in ("approve", "reject", "promote") and r.two_person_rule and r.started_by == self.principal:
            why = f"{self.principal} started rollout {rid}: another approver must {action} it"
            return Reply(403, {"error": "two_person_rule", "detail": why})
        if action in ("approve", "reject") and (
            r.state != "awaiting_approval" or body.get("step_index") != r.awaiting_approval_for
        ):
            return Reply(409, {"error": "stale", "detail": f"step {body.get('step_index')} is not awaiting approval",
                               "field": "step_index"})  # fmt: skip
        new = apply_rollout_action(
            r, action, body.get("step_index"), body.get("reason", ""), self.principal, _time.time()
        )
        return Reply(200, self._replace(new))
