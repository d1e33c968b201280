"""`GET /api/v1/summary`: one cheap request per agent per console refresh, with ETag / 304.

Its sample is lean (the fleet table's figures only; processes, disks and the rest are on `/snapshot`).

Built from memory only (the sampler's latest sample, the alert and rollout engines' in-memory state,
the serving table): it never touches the store, so a fleet of consoles polling it costs microseconds.
"""

from __future__ import annotations

import hashlib

from fastapi import APIRouter, Depends, Request, Response

from agent.api.deps import ctx, require_read
from agent.context import AgentContext
from agent.schemas import AgentSummary, EndpointHealth, Snapshot

router = APIRouter(dependencies=[Depends(require_read)], tags=["telemetry"])


def lean_snapshot(snap: Snapshot) -> Snapshot:
    """`snap` with only what the fleet table shows: no process lists, disks, per-core CPU or GPU processes
    (`/snapshot` has them). A copy: the sampler's latest sample is shared and never changed."""
    gpus = [g.model_copy(update={"processes": []}) for g in snap.gpus]
    return snap.model_copy(
        update={
            "top_cpu": [],
            "top_rss": [],
            "disks": [],
            "cpu": snap.cpu.model_copy(update={"per_core": []}),
            "gpus": gpus,
        }
    )


def build_summary(c: AgentContext) -> AgentSummary:
    """The summary of this agent now."""
    firing: dict[str, int] | None = None
    pending: int | None = None
    if c.alerts is not None:
        firing, pending = {}, 0
        for (state, severity), n in c.alerts.counts().items():
            if state == "firing":
                firing[severity] = firing.get(severity, 0) + n
            elif state == "pending":
                pending += n
    active: int | None = None
    awaiting: int | None = None
    if c.rollouts is not None:
        running = c.rollouts.list(active=True)
        active = len(running)
        awaiting = sum(1 for r in running if r.state == "awaiting_approval")
    endpoints: list[EndpointHealth] | None = None
    if c.serving is not None:
        s = c.serving
        endpoints = []
        for ep in list(s.endpoints.values()):
            info = ep.info(s.is_loaded(ep))
            endpoints.append(
                EndpointHealth(
                    name=info.name,
                    model=info.model,
                    version=info.version,
                    loaded=info.loaded,
                    fallback_mode=info.fallback_mode,
                    breaker_state=info.breaker_state,
                )
            )
    jobs = c.jobs.summary() if c.jobs is not None else None
    latest = c.sampler.latest
    return AgentSummary(
        agent_name=c.cfg.name,
        sample_interval_s=c.cfg.sample_interval,
        snapshot=lean_snapshot(latest) if latest is not None else None,
        snapshot_lean=True,
        alerts_firing=firing,
        alerts_pending=pending,
        rollouts_active=active,
        rollouts_awaiting_approval=awaiting,
        endpoints=endpoints,
        jobs=jobs,
    )


def etag_of(body: bytes) -> str:
    """A strong ETag for `body` (the summary is small; hashing it costs microseconds)."""
    return '"' + hashlib.blake2b(body, digest_size=12).hexdigest() + '"'


def _matches(if_none_match: str | None, etag: str) -> bool:
    if not if_none_match:
        return False
    if if_none_match.strip() == "*":
        return True
    return any(tag.strip().removeprefix("W/") == etag for tag in if_none_match.split(","))


@router.get(
    "/summary",
    response_model=AgentSummary,
    responses={304: {"description": "not modified: the summary is still the one with the ETag sent in If-None-Match"}},
)
async def summary(request: Request) -> Response:
    """The fleet screen's view of this agent in one answer: newest sample, alert counts by severity,
    rollouts awaiting approval, endpoints' health. Send the last ETag as If-None-Match: 304 when unchanged."""
    body = build_summary(ctx(request)).model_dump_json().encode()
    etag = etag_of(body)
    headers = {"ETag": etag, "Cache-Control": "no-cache"}
    if _matches(request.headers.get("if-none-match"), etag):
        return Response(status_code=304, headers=headers)
    return Response(content=body, media_type="application/json", headers=headers)
