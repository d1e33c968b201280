"""`PrometheusSource`: the fleet source behind `watchkeeper --prometheus URL`.

The fleet table comes from Prometheus: one poll is one PromQL query per column for the whole fleet
plus the active-target list (`console/prometheus/fleet.py` joins them), so a poll costs the same for
ten agents or ten thousand and opens no connection to an agent nobody is looking at. The host
screen's history comes from `query_range`. Agents are asked directly only for what a screen in use
needs: the host screen's agent (it asks for that agent's history) gives its own snapshot (processes,
disks) for its row; while the endpoints view is open, the agents that are up say what they serve.
Actions and the other drill-downs (drift, alerts, rollouts, the fallback switch) go to the one agent
concerned, through an agent poller built by `agents` over the fleet's addresses and tokens; anything
the app asks that is not about the table is handed to it.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

from agent.schemas import EndpointInfo, Series, SeriesPoint, SeriesResponse, ServingStatus, Snapshot
from console.core.config import TOKEN_ENV, AgentSpec
from console.core.errors import AgentError, ErrorKind
from console.core.poller import AgentState, AgentStatus, FleetPoller, FleetStatus, ServingState
from console.prometheus.client import PrometheusClient, PrometheusError, Sample
from console.prometheus.fleet import (
    QUERIES,
    Answers,
    Memory,
    agent_statuses,
    alert_counts,
    members,
    series_query,
    unreachable,
)


def _agent_poller(specs: Sequence[AgentSpec]) -> Any:
    return FleetPoller(specs)


# An agent whose history the host screen asked for this recently is being looked at: its row's
# figures then come from the agent itself (processes, disks, per-core), the drill-down the issue allows.
WATCH_S = 15.0


class PrometheusSource:
    """A `FleetSource` whose polls are PromQL queries; drill-down and actions reach the agent itself.

    `specs` (the fleet file's agents, may be empty) name agents and carry their tokens; agents that
    Prometheus scrapes and the file does not list join with the token from `$WATCHKEEPER_TOKEN`.
    """

    def __init__(
        self,
        url: str,
        specs: Sequence[AgentSpec] = (),
        *,
        agents: Callable[[Sequence[AgentSpec]], Any] = _agent_poller,
        clock: Callable[[], float] = time.time,
        timeout_s: float = 5.0,
        token: str | None = None,
        client: PrometheusClient | None = None,
    ) -> None:
        self.prometheus = client or PrometheusClient(url, timeout_s=timeout_s)
        self._configured = tuple(specs)
        self._specs: tuple[AgentSpec, ...] = self._configured
        self._token = token if token is not None else (os.environ.get(TOKEN_ENV) or None)
        self._agents_factory = agents
        self._agents: Any = None
        self._agents_specs: tuple[AgentSpec, ...] | None = None
        self._clock = clock
        self._memory = Memory()
        self._instances: dict[str, str] = {}
        self._previous: tuple[AgentStatus, ...] = ()
        self._serving_wanted = False
        self._closing: set[asyncio.Task[Any]] = set()
        self._watched: dict[str, float] = {}
        self._serving: dict[str, dict[str, Any]] = {}
        self._alerts: dict[str, Any] = {}  # name → AlertFeed (console.monitoring.client)
        # Why the last poll could not ask Prometheus (None: it answered); `status` exits 2 on it.
        self.last_error: str | None = None

    @property
    def url(self) -> str:
        return self.prometheus.url

    @property
    def specs(self) -> Sequence[AgentSpec]:
        """The agents known so far: the fleet file's, then those found in Prometheus's targets."""
        return self._specs

    def now(self) -> float:
        return self._clock()

    async def poll(self) -> FleetStatus:
        """Ask Prometheus for every column at once; never raises (an unreachable Prometheus: all stale)."""
        started = self._clock()
        try:
            answers = await self._ask()
        except PrometheusError as exc:
            self.last_error = str(exc)
            agents = unreachable(self._previous, self._configured, str(exc))
            if not agents:  # nothing known yet: one row says why the table is empty
                agents = (AgentStatus(name=self.url, url=self.url, state=AgentState.DOWN, reason=str(exc)),)
        else:
            self.last_error = None
            fleet = members(answers, self._configured)
            self._instances = {m.name: m.instance for m in fleet if m.instance}
            self._specs = tuple(
                m.spec or AgentSpec(name=m.name, url=m.url, token=self._token, name_from_url=True) for m in fleet
            )
            agents = agent_statuses(answers, self._configured, self._memory, self._clock())
            agents = await self._drill_down(agents)
            agents = await self._alert_feeds(agents, alert_counts(answers))
        self._previous = agents
        done = self._clock()
        return FleetStatus(polled_at=done, duration_s=max(0.0, done - started), agents=agents)

    async def _drill_down(self, agents: tuple[AgentStatus, ...]) -> tuple[AgentStatus, ...]:
        """Per-agent extras Prometheus does not have, asked of the agents only while a screen needs them:
        the host screen's agent gets its own snapshot (processes, disks); while the endpoints view is
        open (`want_serving`), every agent that is up is asked what it serves, as the agent poller does."""
        now = self._clock()
        self._watched = {n: t for n, t in self._watched.items() if now - t < WATCH_S}
        looked_at = [a for a in agents if a.name in self._watched and a.state is AgentState.UP]
        serving = [a for a in agents if self._serving_wanted and a.state is AgentState.UP]
        if not looked_at and not serving:
            return tuple(self._with_serving(a) for a in agents)
        pool = self.agents()
        snaps, served = await asyncio.gather(
            asyncio.gather(*(pool.client(a.name).snapshot() for a in looked_at), return_exceptions=True),
            asyncio.gather(*(pool.client(a.name).serving() for a in serving), return_exceptions=True),
        )
        for a, result in zip(serving, served, strict=True):
            self._note_serving(a.name, result)
        # Prometheus decides up/down/stale; a failed direct fetch just leaves Prometheus's figures.
        richer = {a.name: s for a, s in zip(looked_at, snaps, strict=True) if isinstance(s, Snapshot)}
        return tuple(self._with_serving(replace(a, snapshot=richer[a.name]) if a.name in richer else a) for a in agents)

    async def _alert_feeds(self, agents: tuple[AgentStatus, ...], counts: dict[str, float]) -> tuple[AgentStatus, ...]:
        """Each agent's alerts: asked of the agent only when Prometheus counts some firing or pending.

        No count: the agent runs no alerting (NONE); zero: nothing firing or pending (resolved history is
        not fetched); a down agent keeps its last list. So the alerts view and the sub-title's "N firing"
        cost one request per agent that has alerts, not one per agent."""
        from console.core.feeds import FeedState
        from console.monitoring.client import AlertFeed

        now = self._clock()
        ask: list[AgentStatus] = []
        for a in agents:
            inst = self._instances.get(a.name)
            if a.state is not AgentState.UP or inst is None:
                continue
            count = counts.get(inst)
            if count is None:
                self._alerts[a.name] = AlertFeed(state=FeedState.NONE, fetched_at=now)
            elif count <= 0:
                self._alerts[a.name] = AlertFeed(state=FeedState.OK, fetched_at=now)
            else:
                ask.append(a)
        if ask:
            pool = self.agents()
            got = await asyncio.gather(*(pool.client(a.name).model_alerts() for a in ask), return_exceptions=True)
            for a, result in zip(ask, got, strict=True):
                last = self._alerts.get(a.name) or AlertFeed()
                if isinstance(result, Exception):
                    self._alerts[a.name] = replace(last, state=FeedState.ERROR, error=str(result))
                elif result is None:
                    self._alerts[a.name] = AlertFeed(state=FeedState.NONE, fetched_at=now)
                else:
                    self._alerts[a.name] = AlertFeed(
                        state=FeedState.OK,
                        alerts=tuple(result.alerts),
                        rules=tuple(result.rules),
                        webhooks=tuple(result.webhooks),
                        fetched_at=now,
                    )
        return tuple(replace(a, alerts=self._alerts[a.name]) if a.name in self._alerts else a for a in agents)

    def _note_serving(self, name: str, result: object) -> None:
        last = self._serving.get(name, {})
        if isinstance(result, ServingStatus):
            self._serving[name] = {"serving": result, "serving_state": ServingState.OK, "serving_at": self._clock()}
        elif result is None:
            self._serving[name] = {"serving": None, "serving_state": ServingState.NONE}
        elif isinstance(result, Exception):
            # The last good answer stays, marked as failed (the endpoints view says so).
            self._serving[name] = {**last, "serving_state": ServingState.ERROR, "serving_error": str(result)}

    def _with_serving(self, agent: AgentStatus) -> AgentStatus:
        known = self._serving.get(agent.name)
        return replace(agent, **known) if known else agent

    async def _ask(self) -> Answers:
        now = self._clock()
        keys = list(QUERIES)
        results = await asyncio.gather(self.prometheus.targets(now), *(self.prometheus.query(QUERIES[k]) for k in keys))
        columns: dict[str, Sequence[Sample]] = dict(zip(keys, results[1:], strict=True))
        prom_now = columns["now"][0].value if columns["now"] else now
        return Answers(now=prom_now, targets=results[0], columns=columns)

    async def series(self, name: str, metric: str, start: float, end: float, step_s: float) -> SeriesResponse:
        """One agent's `metric` history from Prometheus (`query_range`), shaped as the agent's answer."""
        self._watched[name] = self._clock()
        instance = self._instances.get(name)
        if instance is None:
            raise AgentError(ErrorKind.PROTOCOL, f"{name} is not a Prometheus target")
        try:
            promql = series_query(metric, instance)
        except KeyError:
            raise AgentError(ErrorKind.PROTOCOL, f"no PromQL for {metric}") from None
        try:
            found = await self.prometheus.query_range(promql, start, end, step_s)
        except PrometheusError as exc:
            raise AgentError(ErrorKind.UNREACHABLE, str(exc)) from None
        series = [
            Series(
                metric=metric,
                labels={"gpu": s.labels["gpu"]} if "gpu" in s.labels else {},
                points=[SeriesPoint(ts=ts, value=None if v != v else v) for ts, v in s.points],
            )
            for s in found
        ]
        return SeriesResponse(start=start, end=end, step_s=step_s, source="raw", series=series)

    # ------------------------------------------------------------------ the agents themselves

    def agents(self) -> Any:
        """The poller that reaches individual agents (rebuilt when the fleet's membership changes)."""
        if self._agents is None or self._agents_specs != self._specs:
            old = self._agents
            self._agents = self._agents_factory(self._specs)
            self._agents_specs = self._specs
            if self._serving_wanted:
                self._agents.want_serving(True)
            if old is not None:
                self._close_later(old)
        return self._agents

    def _close_later(self, old: Any) -> None:
        # Called from sync code inside the app's loop; the old poller's pools close in the background.
        try:
            task = asyncio.get_running_loop().create_task(old.aclose())
        except RuntimeError:  # no loop (a sync caller): nothing is in flight on it either
            return
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    def want_serving(self, wanted: bool) -> None:
        self._serving_wanted = wanted
        if self._agents is not None:
            self._agents.want_serving(wanted)

    async def set_fallback(self, name: str, endpoint: str, enabled: bool, reason: str) -> EndpointInfo:
        """Switch an endpoint's fallback on the agent itself."""
        return await self.agents().set_fallback(name, endpoint, enabled, reason)

    # Not the agent poller's (which `__getattr__` would hand out): a PromQL poll is one set of queries
    # for the whole fleet, neither phased per agent nor burst.
    want_phases = None
    burst_next = None

    def __getattr__(self, attr: str) -> Any:
        # Drill-down and actions (drift, quality, ack_alert, rollout_action, client...) are the agent poller's.
        if attr.startswith("_"):
            raise AttributeError(attr)
        return getattr(self.agents(), attr)

    async def aclose(self) -> None:
        """Close Prometheus's and the agents' connection pools."""
        await self.prometheus.aclose()
        if self._agents is not None:
            await self._agents.aclose()

    async def __aenter__(self) -> PrometheusSource:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
