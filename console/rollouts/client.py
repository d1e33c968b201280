"""The rollouts half of the agents' API, and rollouts in the fleet poll.

`RolloutsClient` adds the rollout and dataset routes to `MonitoringClient`; `RolloutsPoller` is the
poller the TUI runs: besides each agent's snapshot (and alerts) every poll asks for its active
rollouts (`GET /api/v1/rollouts?active=true`, concurrently: one round trip, same backoff), and every
`ended_refresh_s` (or at once when an active rollout disappeared) for the ended ones, of which those
that ended in the last `recent_s` are kept. An agent without rollouts (404: an older agent; 503: not
running there) counts as having none and is asked again every `rollouts_idle_s`.

Fleet statuses carry the rollouts in `RolloutAgentStatus.rollouts` (a subclass of `AgentStatus`, so
every screen that knows nothing of rollouts keeps working); read them with `rollout_feed(agent)`.

Like `console.core.client` this imports no Textual and nothing from `agent/` but the wire contract.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import quote

import httpx
from pydantic import TypeAdapter, ValidationError

from agent.schemas import (
    API_PREFIX,
    ROLLOUT_TERMINAL,
    DatasetInfo,
    ErrorBody,
    GateResult,
    RolloutAction,
    RolloutCreate,
    RolloutOut,
)
from console.core.client import AgentClient
from console.core.config import AgentSpec
from console.core.errors import AgentError, capture, classify_response
from console.core.feeds import FeedState, FeedTrack, beside, route_unavailable, unless_unavailable
from console.core.poller import AgentStatus
from console.monitoring.client import MonitoringClient, MonitoringPoller, MonitoringSource

if TYPE_CHECKING:
    from console.core.poller import AgentTrack

ROLLOUTS_PATH = f"{API_PREFIX}/rollouts"
# An agent without rollouts (older agent: 404; rollouts not running: 503 "unavailable") is asked again this often.
ROLLOUTS_IDLE_S = 120.0
# Ended rollouts are fetched this often (and right after an active one disappeared) ...
ENDED_REFRESH_S = 30.0
# ... and kept in the feed if they ended this recently.
RECENT_S = 3600.0

ACTIONS = ("approve", "reject", "promote", "pause", "resume", "abort", "rollback")
STEP_ACTIONS = frozenset({"approve", "reject"})  # they name the awaiting step (a stale one is 409)
APPROVER_ACTIONS = frozenset({"approve", "reject", "promote"})

_ROLLOUT = TypeAdapter(RolloutOut)
_ROLLOUTS = TypeAdapter(list[RolloutOut])
_DATASET = TypeAdapter(DatasetInfo)
_DATASETS = TypeAdapter(list[DatasetInfo])
_ERROR = TypeAdapter(ErrorBody)
_GATE = TypeAdapter(GateResult)


class RolloutRefused(AgentError):
    """An agent refused a rollout request; `body` is its ErrorBody, `gate` the GateResult of a failed gate."""

    def __init__(self, base: AgentError, body: ErrorBody | None, gate: GateResult | None) -> None:
        message = base.message
        if gate is not None:
            failed = [m.metric for m in gate.metrics if not m.passed]
            message = f"HTTP {base.status_code}: validation gate failed" + (f" ({', '.join(failed)})" if failed else "")
        elif body is not None and isinstance(body.detail, str) and body.detail and body.detail not in message:
            # classify_response keeps 120 characters; the CLI prints the whole reason.
            message = f"HTTP {base.status_code}: {body.error}: {' '.join(body.detail.split())}"
        super().__init__(base.kind, message, status_code=base.status_code, error_code=base.error_code)
        self.body = body
        self.gate = gate

    @property
    def rejected(self) -> bool:
        """The agent judged the candidate (a failed validation gate), as opposed to a request problem."""
        return self.gate is not None


def rollouts_unavailable(exc: AgentError) -> bool:
    """The agent has no rollouts: the route is missing (older agent) or the engine is not running there."""
    return route_unavailable(exc, "unavailable", 503)


# --------------------------------------------------------------------------- the client


class RolloutsClient(MonitoringClient):
    """`MonitoringClient` plus the rollout and dataset routes."""

    async def _exchange(self, method: str, path: str, **options: Any) -> httpx.Response:
        """`request` (same options: params, body, files, timeout_s) where a refusal raises `RolloutRefused`
        with the agent's ErrorBody."""
        return await self.request(method, path, refusal=self._refused, **options)

    def _refused(self, response: httpx.Response) -> RolloutRefused:
        base = classify_response(response, has_token=bool(self.spec.token))
        try:
            err: ErrorBody | None = _ERROR.validate_json(response.content)
        except ValidationError:
            err = None
        gate = None
        if err is not None and err.field == "gate" and isinstance(err.detail, dict):
            try:
                gate = _GATE.validate_python(err.detail)
            except ValidationError:
                gate = None
        return RolloutRefused(base, err, gate)

    async def rollouts(self, active: bool | None = None, endpoint: str | None = None) -> list[RolloutOut] | None:
        """`GET /api/v1/rollouts[?active=&endpoint=]`, newest first; None when the agent has no rollouts."""
        params: dict[str, Any] = {}
        if active is not None:
            params["active"] = "true" if active else "false"
        if endpoint is not None:
            params["endpoint"] = endpoint
        response = await unless_unavailable(
            self._exchange("GET", ROLLOUTS_PATH, params=params or None), rollouts_unavailable
        )
        if response is None:
            return None
        out: list[RolloutOut] = self.parse(ROLLOUTS_PATH, _ROLLOUTS, response)
        # An agent that ignores the query (or a newer one with other rules) still gets filtered here.
        if active is not None:
            out = [r for r in out if (r.state not in ROLLOUT_TERMINAL) == active]
        if endpoint is not None:
            out = [r for r in out if r.endpoint == endpoint]
        return out

    async def rollout(self, rollout_id: str) -> RolloutOut:
        """`GET /api/v1/rollouts/{id}`."""
        path = f"{ROLLOUTS_PATH}/{quote(rollout_id, safe='')}"
        return self.parse(path, _ROLLOUT, await self._exchange("GET", path))

    async def start_rollout(self, endpoint: str, create: RolloutCreate) -> RolloutOut:
        """`POST /api/v1/endpoints/{name}/rollouts` (operator). A failed gate raises `RolloutRefused` with `gate`.

        The agent runs the validation gate before it answers, so this allows more than the poll timeout.
        """
        path = f"{API_PREFIX}/endpoints/{quote(endpoint, safe='')}/rollouts"
        body = create.model_dump_json(exclude_none=True).encode()
        response = await self._exchange("POST", path, body=body, timeout_s=max(self.spec.timeout_s, 120.0))
        return self.parse(path, _ROLLOUT, response)

    async def rollout_action(
        self, rollout_id: str, action: str, *, step_index: int | None = None, reason: str = ""
    ) -> RolloutOut:
        """`POST /api/v1/rollouts/{id}/{action}`; approve/reject name the awaiting `step_index`."""
        if action not in ACTIONS:
            raise ValueError(f"unknown rollout action {action!r}")
        path = f"{ROLLOUTS_PATH}/{quote(rollout_id, safe='')}/{action}"
        body = RolloutAction(step_index=step_index, reason=reason).model_dump_json(exclude_none=True).encode()
        # Rolling back a promoted rollout loads the old version first: allow it time.
        response = await self._exchange("POST", path, body=body, timeout_s=max(self.spec.timeout_s, 60.0))
        return self.parse(path, _ROLLOUT, response)

    async def datasets(self) -> list[DatasetInfo]:
        """`GET /api/v1/datasets`."""
        path = f"{API_PREFIX}/datasets"
        return self.parse(path, _DATASETS, await self._exchange("GET", path))

    async def upload_dataset(self, name: str, parquet: Path) -> DatasetInfo:
        """`POST /api/v1/datasets/{name}/versions` with the Parquet file as multipart part `data` (operator)."""
        path = f"{API_PREFIX}/datasets/{quote(name, safe='')}/versions"
        with open(parquet, "rb") as fh:
            response = await self._exchange(
                "POST", path, files={"data": (parquet.name, fh, "application/octet-stream")}, timeout_s=600.0
            )
        return self.parse(path, _DATASET, response)


# --------------------------------------------------------------------------- poll results


@dataclass(frozen=True)
class RolloutFeed:
    """One agent's rollouts as of its last poll. Times are console-clock unix seconds."""

    state: FeedState = FeedState.UNKNOWN
    active: tuple[RolloutOut, ...] = ()
    ended: tuple[RolloutOut, ...] = ()  # ended in the last RECENT_S (as of their last fetch)
    error: str | None = None
    fetched_at: float | None = None  # the last good answer

    @property
    def rollouts(self) -> tuple[RolloutOut, ...]:
        """Active ones, then the recently ended ones not also listed as active."""
        ids = {r.id for r in self.active}
        return self.active + tuple(r for r in self.ended if r.id not in ids)


@dataclass(frozen=True)
class RolloutAgentStatus(AgentStatus):
    """`AgentStatus` with the agent's rollouts (None: not asked)."""

    rollouts: RolloutFeed | None = None


def rollout_feed(agent: AgentStatus) -> RolloutFeed | None:
    """The rollouts of `agent` (None for statuses from a poller that does not ask for them)."""
    return getattr(agent, "rollouts", None)


def with_rollouts(agent: AgentStatus, feed: RolloutFeed | None) -> RolloutAgentStatus:
    """`agent` carrying `feed`."""
    if isinstance(agent, RolloutAgentStatus):
        return replace(agent, rollouts=feed)
    values = {f.name: getattr(agent, f.name) for f in fields(agent)}
    return RolloutAgentStatus(**values, rollouts=feed)


class RolloutSource(MonitoringSource, Protocol):
    """What the rollouts screen needs from the data layer (RolloutsPoller, or a test fake)."""

    async def rollout_action(
        self, name: str, rollout_id: str, action: str, step_index: int | None, reason: str
    ) -> RolloutOut: ...


@dataclass
class _RolloutTrack(FeedTrack):
    ended_at: float | None = None  # when the ended ones were last fetched
    ended_due: bool = True


def rollout_counts(track: AgentTrack) -> object:
    """What the agent's summary says of its rollouts (active, awaiting approval); None without one."""
    summary = track.summary
    return None if summary is None else (summary.rollouts_active, summary.rollouts_awaiting_approval)


def rollouts_quiet(counts: object) -> bool:
    """The summary counts no active rollout (or the agent runs no rollouts)."""
    return isinstance(counts, tuple) and not counts[0]


class RolloutsPoller(MonitoringPoller):
    """`MonitoringPoller` that also fetches every agent's rollouts on each poll (see the module docstring)."""

    def __init__(
        self,
        specs: Iterable[AgentSpec],
        *,
        rollouts_idle_s: float = ROLLOUTS_IDLE_S,
        ended_refresh_s: float = ENDED_REFRESH_S,
        recent_s: float = RECENT_S,
        client_factory: Callable[[AgentSpec], AgentClient] = RolloutsClient,
        **kwargs: Any,
    ) -> None:
        super().__init__(specs, client_factory=client_factory, **kwargs)
        self.rollouts_idle_s = rollouts_idle_s
        self.ended_refresh_s = ended_refresh_s
        self.recent_s = recent_s
        self._rollout_tracks = {s.name: _RolloutTrack(RolloutFeed()) for s in self.specs}

    def _rollouts_client(self, name: str) -> RolloutsClient:
        return self.client_with(name, RolloutsClient, "rollout")

    async def poll_agent(self, track: AgentTrack) -> None:
        rt = self._rollout_tracks[track.spec.name]
        now = self.now()
        wanted = self.feed_wanted("rollouts") or self.serving_wanted  # the endpoints view shows them too
        if rt.may_wait(track, now, wanted=wanted):
            # Nobody looks at the rollouts: the summary (this poll's one request) says whether they changed.
            await super().poll_agent(track)
            counts = rollout_counts(track)
            if rt.settled(counts, quiet=rollouts_quiet(counts)):
                return
            rt.attempt_at = now
            want_ended = True  # a count moved: one may have ended
            result = await capture(self._fetch_rollouts(track.spec.name, want_ended))
        elif not rt.due(now, self.rollouts_idle_s):
            await super().poll_agent(track)
            return
        else:
            want_ended = rt.ended_due or rt.ended_at is None or now - rt.ended_at >= self.ended_refresh_s
            result = await beside(super().poll_agent(track), self._fetch_rollouts(track.spec.name, want_ended))
        counts = rollout_counts(track)
        rt.based_on(counts, rollouts_quiet(counts))
        self._note_rollouts(rt, result, track.client.clock_offset_s)

    async def _fetch_rollouts(
        self, name: str, want_ended: bool
    ) -> tuple[list[RolloutOut], list[RolloutOut] | None] | None:
        client = self._rollouts_client(name)
        if want_ended:
            active, ended = await asyncio.gather(client.rollouts(active=True), client.rollouts(active=False))
            if active is None or ended is None:
                return None
            return active, ended
        active = await client.rollouts(active=True)
        return None if active is None else (active, None)

    def _note_rollouts(self, rt: _RolloutTrack, result: Any, offset: float) -> None:
        now = self.now()
        if result is None:
            rt.feed = RolloutFeed(state=FeedState.NONE, fetched_at=now)
            return
        if not isinstance(result, tuple):
            rt.failed(result)
            return
        active, ended = result
        previous = {r.id for r in rt.feed.active}
        if ended is not None:
            rt.ended_at = now
            rt.ended_due = False
            # Ended times are on the agent's clock.
            since = now + offset - self.recent_s
            kept = tuple(r for r in ended if r.ended_at is None or r.ended_at >= since)
        else:
            kept = rt.feed.ended
        # An active rollout that is no longer active has ended: learn how on the next poll.
        if previous - {r.id for r in active}:
            rt.ended_due = True
        rt.feed = RolloutFeed(state=FeedState.OK, active=tuple(active), ended=kept, fetched_at=now)

    status_type: type[AgentStatus] = RolloutAgentStatus

    def status_extras(self, track: AgentTrack) -> dict[str, Any]:
        return {**super().status_extras(track), "rollouts": self._rollout_tracks[track.spec.name].feed}

    # ------------------------------------------------------------------ actions (RolloutSource)

    async def rollout_action(
        self, name: str, rollout_id: str, action: str, step_index: int | None, reason: str
    ) -> RolloutOut:
        """Send `action` for rollout `rollout_id` to agent `name`; the next poll fetches the ended list too."""
        try:
            return await self._rollouts_client(name).rollout_action(
                rollout_id, action, step_index=step_index, reason=reason
            )
        finally:
            self._rollout_tracks[name].ended_due = True
