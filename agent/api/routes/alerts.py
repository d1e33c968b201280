"""Model and serving alerts: list (with rules and webhook health), acknowledge, silence.

`GET /api/v1/alerting` lists them (`/api/v1/alerts` is the agent's own conditions, an older
route). Ack and silence are operator actions, audited (fail closed) before they happen.
"""

from __future__ import annotations

from fastapi import APIRouter, Depends, Path, Query, Request
from fastapi.concurrency import run_in_threadpool

from agent.alerting import ALERTS_PATH
from agent.alerting.engine import AlertEngine
from agent.api.deps import ctx, require_operate, require_read
from agent.api.errors import ApiError
from agent.api.openapi import errors
from agent.api.routes.admin import audited
from agent.schemas import API_PREFIX, AlertAck, AlertOut, AlertSilence, AlertsResponse, AlertState, Principal

router = APIRouter(tags=["alerts"])
Fingerprint = Path(pattern=r"^[0-9a-f]{1,64}$")
LIST_PATH = ALERTS_PATH.removeprefix(API_PREFIX)


def engine(request: Request) -> AlertEngine:
    e = ctx(request).alerts
    if e is None:
        raise ApiError(503, "alerting_unavailable", "alerting is not running on this agent")
    return e


def _known(e: AlertEngine, fingerprint: str) -> AlertOut:
    a = e.get(fingerprint)
    if a is None:
        raise ApiError(404, "not_found", f"no alert with fingerprint {fingerprint!r}", field="fingerprint")
    return a


@router.get(LIST_PATH, response_model=AlertsResponse, dependencies=[Depends(require_read)])
async def list_alerts(
    request: Request,
    state: AlertState | None = Query(None, description="pending, firing or resolved"),
    fingerprint: str | None = Query(None, max_length=64),
) -> AlertsResponse:
    """Alerts, most recently changed first (resolved ones kept, bounded), the rules and the webhooks."""
    resp = await run_in_threadpool(engine(request).response, state)
    if fingerprint is not None:
        resp.alerts = [a for a in resp.alerts if a.fingerprint == fingerprint]
    return resp


@router.post("/alerts/{fingerprint}/ack", response_model=AlertOut, responses=errors(404))
async def ack_alert(
    body: AlertAck, request: Request, fingerprint: str = Fingerprint, principal: Principal = Depends(require_operate)
) -> AlertOut:
    """Acknowledge an alert (this instance): who has it in hand. Audited."""
    e = engine(request)
    a = _known(e, fingerprint)
    await run_in_threadpool(
        audited, request, principal, "alert.ack", f"alert:{fingerprint}",
        {"rule": a.rule, "endpoint": a.endpoint, "subject": a.subject, "state": a.state, "comment": body.comment},
    )  # fmt: skip
    out = await run_in_threadpool(e.ack, fingerprint, principal.name, body.comment)
    return out if out is not None else _known(e, fingerprint)  # None: pruned in between (404)


@router.post("/alerts/{fingerprint}/silence", response_model=AlertOut, responses=errors(404))
async def silence_alert(
    body: AlertSilence,
    request: Request,
    fingerprint: str = Fingerprint,
    principal: Principal = Depends(require_operate),
) -> AlertOut:
    """No notifications for this alert's fingerprint for `duration_s`; it is still listed. Audited."""
    e = engine(request)
    a = _known(e, fingerprint)
    await run_in_threadpool(
        audited, request, principal, "alert.silence", f"alert:{fingerprint}",
        {"rule": a.rule, "endpoint": a.endpoint, "subject": a.subject, "duration_s": body.duration_s,
         "comment": body.comment},
    )  # fmt: skip
    out = await run_in_threadpool(e.silence, fingerprint, body.duration_s, principal.name, body.comment)
    return out if out is not None else _known(e, fingerprint)
