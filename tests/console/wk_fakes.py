"""Deterministic test data and fakes for the console tests (no real agent needed)."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field, replace
from email.utils import formatdate
from typing import Any
from urllib.parse import parse_qs, urlsplit

from agent.api.schemas import (
    BreakerConfig,
    CpuSample,
    EndpointConfig,
    EndpointInfo,
    EndpointVersionStats,
    EnforcementInfo,
    FeatureSpec,
    GpuProcess,
    GpuSample,
    GpuStatus,
    HostInfo,
    LatencySummary,
    Lineage,
    LoadedModel,
    MemorySample,
    ModelVersion,
    OutputSpec,
    ProcessSample,
    Series,
    SeriesPoint,
    SeriesResponse,
    ServingStatus,
    Signature,
    Snapshot,
)
from console.client import AgentError, AgentState, AgentStatus, ErrorKind, FleetStatus, ServingState
from console.config import AgentSpec

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
    from console.client import ErrorKind

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
    )


def serving_up(name: str, order_hint: int, serving: ServingStatus | None, **snap: Any) -> AgentStatus:
    """An up agent with serving status (None: an agent that serves nothing, e.g. an older one)."""
    state = ServingState.OK if serving is not None else ServingState.NONE
    return replace(up(name, order_hint, **snap), serving=serving, serving_state=state, serving_at=FROZEN_NOW)


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

    async def aclose(self) -> None:
        self.closed = True


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
