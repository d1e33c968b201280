"""Liveness, readiness and the Prometheus scrape endpoint."""

from __future__ import annotations

import time

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from agent import __version__
from agent.api.deps import authenticate, ctx
from agent.api.openapi import errors
from agent.schemas import Health

router = APIRouter()


def _maybe_auth(request: Request, public: bool) -> None:
    if not public:
        authenticate(request)


@router.get("/healthz", response_model=Health, tags=["health"], responses=errors(401, 403))
async def healthz(request: Request) -> Health:
    """The process is up and answering."""
    c = ctx(request)
    _maybe_auth(request, c.cfg.auth.health_public)
    return Health(status="ok", agent_name=c.cfg.name, version=__version__)


@router.get(
    "/readyz",
    response_model=Health,
    tags=["health"],
    responses={503: {"model": Health, "description": "Not ready: `checks` says why"}, **errors(401, 403)},
)
async def readyz(request: Request):
    """Ready when the store writer runs, a sample was taken recently and the agent is not stopping."""
    c = ctx(request)
    _maybe_auth(request, c.cfg.auth.health_public)
    checks = dict(c.checks)
    checks["writer"] = "ok" if c.writer.running else "stopped"
    latest = c.sampler.latest
    stale_after = max(5 * c.cfg.sample_interval, 5.0)
    if latest is None:
        checks["telemetry"] = "no sample yet"
    elif time.time() - latest.ts > stale_after:
        checks["telemetry"] = f"last sample {time.time() - latest.ts:.0f}s ago"
    else:
        checks["telemetry"] = "ok"
    if not c.accepting:
        checks["lifecycle"] = "stopping"
    if c.jobs is not None:  # said, not judged: a jobs problem must not take serving out of rotation
        r = c.jobs.runner
        state = "ok" if r.alive and r.last_error is None else "runner stopped" if not r.alive else r.last_error
        checks["jobs"] = f"{state} (tier {c.jobs.tier.name})"
        slurm = getattr(c.jobs, "slurm", None)
        if slurm is not None and slurm.down:
            checks["jobs"] += f"; slurm: {slurm.status()}"
    ready = checks["telemetry"] == "ok" and checks["writer"] == "ok" and c.accepting
    body = Health(status="ok" if ready else "starting", agent_name=c.cfg.name, version=__version__, checks=checks)
    if ready:
        return body
    return JSONResponse(body.model_dump(), status_code=503)


@router.get(
    "/metrics",
    tags=["health"],
    response_class=Response,
    responses={
        200: {
            "description": "Prometheus text format",
            "content": {"text/plain; version=0.0.4": {"schema": {"type": "string"}}},
        },
        **errors(401, 403),
    },
)
async def metrics(request: Request) -> Response:
    """Prometheus text exposition (node_exporter and DCGM-exporter names)."""
    c = ctx(request)
    _maybe_auth(request, c.cfg.auth.metrics_public)
    from agent.api.metrics import render

    return Response(render(request.app.state.registry), media_type="text/plain; version=0.0.4; charset=utf-8")
