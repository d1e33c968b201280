"""Read-only telemetry: host info, the latest snapshot, time series, the agent's own alerts."""

from __future__ import annotations

import platform
import socket
import sys
import time
from typing import Literal

import psutil
from fastapi import APIRouter, Depends, Query, Request
from fastapi.concurrency import run_in_threadpool

from agent import __version__
from agent.api.deps import ctx, require_read
from agent.api.errors import ApiError
from agent.context import AgentContext
from agent.schemas import GPU_METRICS, HOST_METRICS, MAX_UNIX_S, AgentAlert, HostInfo, SeriesResponse, Snapshot
from agent.store.reader import UnknownMetric

Metric = Literal[HOST_METRICS + GPU_METRICS]  # type: ignore[valid-type]

router = APIRouter(dependencies=[Depends(require_read)], tags=["telemetry"])


@router.get("/host", response_model=HostInfo)
async def host(request: Request) -> HostInfo:
    """What this host is: CPUs, memory, GPUs, the agent's version and enforcement capabilities."""
    c = ctx(request)
    latest = c.sampler.latest
    return HostInfo(
        hostname=socket.gethostname(),
        agent_name=c.cfg.name,
        agent_version=__version__,
        platform=platform.platform(),
        python=sys.version.split()[0],
        boot_time=psutil.boot_time(),
        started_at=c.started_at,
        # A simulated host reports its own shape, not this machine's.
        cpu_logical=len(latest.cpu.per_core) if latest and latest.host_simulated else psutil.cpu_count() or 0,
        cpu_physical=None if latest and latest.host_simulated else psutil.cpu_count(logical=False),
        memory_total_bytes=latest.memory.total_bytes if latest else psutil.virtual_memory().total,
        gpus=latest.gpus if latest else [],
        gpu_status=latest.gpu_status if latest else c.sampler.gpu_status(),
        enforcement=c.enforcement,
        sample_interval_s=c.cfg.sample_interval,
        data_dir=str(c.cfg.data_dir),
        store_schema_version=c.schema_version,
    )


@router.get("/snapshot", response_model=Snapshot, responses={503: {"description": "no sample yet"}})
async def snapshot(request: Request) -> Snapshot:
    """The latest telemetry sample (from memory; never touches the store)."""
    latest = ctx(request).sampler.latest
    if latest is None:
        raise ApiError(503, "no_sample_yet", "the first sample has not been taken yet", headers={"Retry-After": "1"})
    return latest


@router.get("/series", response_model=SeriesResponse)
async def series(
    request: Request,
    metric: Metric = Query(description="gpu_* metrics have one series per GPU"),
    start: float | None = Query(None, ge=0, le=MAX_UNIX_S, description="unix seconds; default end - 15 min"),
    end: float | None = Query(None, ge=0, le=MAX_UNIX_S, description="unix seconds; default now"),
    step: float | None = Query(None, gt=0, le=86400, description="bucket width in seconds; default auto"),
) -> SeriesResponse:
    """A metric over a time range, averaged per `step` bucket; raw samples or 1-minute rollups."""
    end = time.time() if end is None else end
    start = end - 900 if start is None else start
    if start >= end:
        raise ApiError(422, "invalid_request", "start must be before end", field="start")
    if end - start > 400 * 86400:
        raise ApiError(422, "invalid_request", "range longer than 400 days", field="start")
    c = ctx(request)
    try:
        return await run_in_threadpool(_series_now, c, metric, start, end, step)
    except UnknownMetric:
        raise ApiError(
            422,
            "invalid_request",
            f"unknown metric {metric!r}; known: {', '.join(HOST_METRICS + GPU_METRICS)}",
            field="metric",
        ) from None


def _series_now(c: AgentContext, metric: str, start: float, end: float, step: float | None) -> SeriesResponse:
    # A range reaching into the unflushed window would lag by up to flush_interval: flush first.
    # Only readers wait for this; the sampler never does.
    if end > c.writer.stats.last_flush_at and c.writer.buffered_rows:
        c.writer.flush()
    return c.reader.series(metric, start, end, step)


@router.get("/alerts", response_model=list[AgentAlert])
async def alerts(request: Request, limit: int = Query(100, ge=1, le=1000)) -> list[AgentAlert]:
    """Conditions of the agent itself: WAL moved aside, GPU source lost, store falling behind."""
    return await run_in_threadpool(ctx(request).reader.alerts, limit)
