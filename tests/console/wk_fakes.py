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
    CpuSample,
    EnforcementInfo,
    GpuProcess,
    GpuSample,
    GpuStatus,
    HostInfo,
    MemorySample,
    ProcessSample,
    Series,
    SeriesPoint,
    SeriesResponse,
    Snapshot,
)
from console.client import AgentState, AgentStatus, FleetStatus
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


class FakeHttpAgent:
    """A minimal HTTP/1.1 server on loopback (and optionally a Unix socket) with scripted routes.

    `routes[path]` is a Reply or a function (path, query, headers) -> Reply. Every request is
    recorded in `requests` as (path, headers).
    """

    def __init__(self, routes: dict[str, Reply | Handler] | None = None, *, uds: str | None = None) -> None:
        self.routes: dict[str, Reply | Handler] = dict(routes or {})
        self.requests: list[tuple[str, dict[str, str]]] = []
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
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                _method, target, _ = lines[0].split(" ", 2)
                headers = {}
                for line in lines[1:]:
                    if ":" in line:
                        k, v = line.split(":", 1)
                        headers[k.strip().lower()] = v.strip()
                parts = urlsplit(target)
                self.requests.append((parts.path, headers))
                route = self.routes.get(parts.path)
                if route is None:
                    reply = Reply(404, {"error": "not found"})
                elif isinstance(route, Reply):
                    reply = route
                else:
                    result = route(parts.path, parse_qs(parts.query), headers)
                    reply = await result if asyncio.iscoroutine(result) else result  # type: ignore[assignment]
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

    def __init__(self, routes: dict[str, Reply | Handler]) -> None:
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
