"""Polling the fleet: one `FleetPoller.poll()` is one refresh of every agent, as a `FleetStatus`.

Failure model: every request is bounded by the agent's own timeout (the whole request, not each
phase of it), agents are polled concurrently, and an agent that keeps failing is retried with
exponential backoff, so a slow or dead agent never delays the others.

Feature pollers (`console.monitoring.client.MonitoringPoller`, `console.rollouts.client.RolloutsPoller`)
subclass `FleetPoller`: they extend `poll_agent` and `agent_status`, which take the per-agent `AgentTrack`.
"""

from __future__ import annotations

import asyncio
import random
import statistics
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from agent.schemas import AgentSummary, EndpointInfo, HostInfo, SeriesResponse, ServingStatus, Snapshot
from console.core.client import AgentClient
from console.core.config import AgentSpec
from console.core.errors import AgentError, ErrorKind, as_agent_error, capture

if TYPE_CHECKING:
    from console.core.audit_heads import AuditAnchor, HeadStore
    from console.monitoring.client import AlertFeed

C = TypeVar("C", bound="AgentClient")

# Used until the agent's HostInfo (which carries the real interval) has been fetched.
DEFAULT_SAMPLE_INTERVAL_S = 5.0
# "stale": the agent answers but its newest sample was already older than this many sample intervals
# when we asked for it (judged at the ask, so a slow poll never makes a healthy agent stale).
STALE_INTERVALS = 3.0
# Requests in flight across the whole fleet: beyond this they wait their turn, and their timeout only
# starts once sent (3,000+ requests started at once time each other out in the console's own backlog).
MAX_IN_FLIGHT = 64
# A retry lands at (1 - jitter * U[0,1)) x the backoff, so agents that failed together drift apart.
BACKOFF_JITTER = 0.25
# A phased poll (`want_phases`) hands what it has to `on_progress` this often: small batches, not one
# burst of 1,000 rows at the end, and not so often that the screen redraws its visible rows (tens of
# ms each time) several times a second.
PROGRESS_EVERY_S = 0.4


def phase_offsets(n: int, spread_s: float, slot_s: float) -> list[float]:
    """When each of `n` agents is asked within a phased poll (seconds after its start).

    The spread is cut into slots of `slot_s`, the hand-over interval; an agent starts in the first
    half of its slot, so an answer that takes under half a slot reaches the hand-over at the slot's
    end in every poll. A row's data then changes once per poll period, not that give or take a slot.
    """
    if n <= 0:
        return []
    if spread_s <= 0 or slot_s <= 0:
        return [0.0] * n
    slots = max(1, round(spread_s / slot_s))
    offsets = []
    for i in range(n):
        at = i / n * slots
        slot = int(at)
        offsets.append((slot + (at - slot) * 0.5) * slot_s)
    return offsets


# --------------------------------------------------------------------------- poll results


class AgentState(StrEnum):
    UP = "up"
    STALE = "stale"
    DOWN = "down"


class ServingState(StrEnum):
    """Whether we know what an agent serves (`GET /api/v1/serving`)."""

    UNKNOWN = "unknown"  # not fetched yet
    OK = "ok"
    NONE = "none"  # the agent serves nothing (older agent, or serving switched off)
    ERROR = "error"  # the last fetch failed; `serving` is the last good answer, if any


@dataclass(frozen=True)
class AgentStatus:
    """What the console knows about one agent after a poll. Times are console-clock unix seconds.

    `snapshot` is the newest sample ever received, so a down agent still shows when it was last
    seen; `state` says whether to trust it.
    """

    name: str
    url: str
    state: AgentState
    reason: str | None = None
    error_kind: ErrorKind | None = None
    display_name: str = ""
    snapshot: Snapshot | None = None
    host: HostInfo | None = None
    last_seen: float | None = None
    sample_age_s: float | None = None
    sample_interval_s: float = DEFAULT_SAMPLE_INTERVAL_S
    failures: int = 0
    next_retry_at: float | None = None
    latency_s: float | None = None
    clock_offset_s: float = 0.0
    serving: ServingStatus | None = None
    serving_state: ServingState = ServingState.UNKNOWN
    serving_error: str | None = None
    serving_at: float | None = None  # console-clock time of the last good serving answer
    # The agent's model alerts (filled by `console.monitoring.client.MonitoringPoller`; None: not asked).
    alerts: AlertFeed | None = None
    # Its audit chain against the head this console remembers (console/core/audit_heads.py; None: not checked).
    audit: AuditAnchor | None = None
    # Its newest `GET /api/v1/summary` (None: an older agent without the route, or not answered yet).
    summary: AgentSummary | None = None

    @property
    def label(self) -> str:
        """The name to show: the configured one, or the agent's own for bare `--agents` URLs."""
        return self.display_name or self.name


@dataclass(frozen=True)
class FleetStatus:
    """The result of one poll of the whole fleet, in fleet order."""

    polled_at: float
    duration_s: float
    agents: tuple[AgentStatus, ...]
    # False: part of a phased poll (`FleetPoller.want_phases`); `duration_s` is the poll's so far.
    complete: bool = True

    def get(self, name: str) -> AgentStatus | None:
        """The status of agent `name`, or None."""
        return next((a for a in self.agents if a.name == name), None)

    def count(self, state: AgentState) -> int:
        """How many agents are in `state`."""
        return sum(1 for a in self.agents if a.state is state)

    @property
    def all_up(self) -> bool:
        return all(a.state is AgentState.UP for a in self.agents)


class FleetSource(Protocol):
    """What the UI needs from the data layer (FleetPoller, or a fake in tests)."""

    @property
    def specs(self) -> Sequence[AgentSpec]: ...

    def now(self) -> float: ...

    async def poll(self) -> FleetStatus: ...

    async def series(self, name: str, metric: str, start: float, end: float, step_s: float) -> SeriesResponse: ...

    def want_serving(self, wanted: bool) -> None:
        """Fetch serving status on every poll (True: the endpoints view is open) or only rarely."""

    async def set_fallback(self, name: str, endpoint: str, enabled: bool, reason: str) -> EndpointInfo: ...

    async def aclose(self) -> None: ...


# --------------------------------------------------------------------------- the poller


@dataclass
class AgentTrack:
    """Mutable per-agent bookkeeping between polls (public: feature pollers read it in `poll_agent`)."""

    spec: AgentSpec
    client: AgentClient
    failures: int = 0
    next_attempt_at: float = 0.0
    error: AgentError | None = None
    snapshot: Snapshot | None = None
    host: HostInfo | None = None
    host_fetched_at: float | None = None
    last_seen: float | None = None
    asked_at: float | None = None  # console clock when the newest good snapshot was asked for
    latency_s: float | None = None
    latencies: list[float] = field(default_factory=list)
    serving: ServingStatus | None = None
    serving_state: ServingState = ServingState.UNKNOWN
    serving_error: str | None = None
    serving_at: float | None = None
    serving_attempt_at: float | None = None
    audit: AuditAnchor | None = None
    audit_at: float | None = None
    summary: AgentSummary | None = None
    summary_etag: str | None = None
    # Whether the agent has `/api/v1/summary` (None: not known yet; False: an older agent, asked for
    # `/snapshot` instead until it comes back from an outage, maybe upgraded).
    summary_route: bool | None = None


class FleetPoller:
    """Polls every agent concurrently; one call to `poll()` is one refresh of the fleet.

    A poll takes about as long as the slowest *responsive* agent, bounded by the largest agent
    timeout: each agent's requests run concurrently with everyone else's under its own deadline.
    An agent that fails is skipped until its backoff expires (base * 2^(failures-1), capped), and
    keeps its last snapshot so the UI can say when it was last seen.

    Serving status (`/api/v1/serving`, bigger than a snapshot) is fetched alongside the snapshot
    on every poll while someone `want_serving(True)` (the endpoints view), otherwise only every
    `serving_idle_s`; an agent that serves nothing (404) is asked again only at that idle pace.
    """

    def __init__(
        self,
        specs: Iterable[AgentSpec],
        *,
        clock: Callable[[], float] = time.time,
        host_refresh_s: float = 300.0,
        backoff_base_s: float = 1.0,
        backoff_cap_s: float = 30.0,
        serving_idle_s: float = 120.0,
        client_factory: Callable[[AgentSpec], AgentClient] = AgentClient,
        audit_heads: HeadStore | None = None,
        audit_every_s: float = 60.0,
        max_in_flight: int = MAX_IN_FLIGHT,
        backoff_jitter: float = BACKOFF_JITTER,
        ask_serving: bool = True,
        ask_host: bool = True,
        first_spread_s: float = 0.0,
        rng: random.Random | None = None,
    ) -> None:
        self._specs = tuple(specs)
        # Each agent's audit chain checked against the head remembered in `audit_heads` every `audit_every_s`.
        self.audit_heads = audit_heads
        self.audit_every_s = audit_every_s
        self._clock = clock
        self.host_refresh_s = host_refresh_s
        self.serving_idle_s = serving_idle_s
        self.serving_wanted = False
        # False: never ask `/serving` (`watchkeeper status` shows nothing of it: one request less per agent).
        self.ask_serving = ask_serving
        # False: host info only from agents without a summary (whose sample interval it carries).
        self.ask_host = ask_host
        # Feeds a screen shows now ("alerts", "rollouts"): fetched every poll; the others only when an
        # agent's summary says they changed (or every FEED_REFRESH_S).
        # None (the CLI's one-shot polls): every feed, every poll.
        self.feeds_wanted: frozenset[str] | None = None
        self.backoff_base_s = backoff_base_s
        self.backoff_cap_s = backoff_cap_s
        self.backoff_jitter = backoff_jitter
        self._rng = rng or random.Random()
        self.max_in_flight = max_in_flight
        # Phases (`want_phases`): agent i of n starts at i/n x `spread_s` into a poll, so a fleet's
        # requests (and their CPU) spread over the refresh interval instead of one burst.
        self.spread_s = 0.0
        self.on_progress: Callable[[FleetStatus], None] | None = None
        self.progress_every_s = PROGRESS_EVERY_S
        self._burst_next = True  # the first poll: everyone at once (nothing is on screen yet)
        self._statuses: dict[str, AgentStatus] = {}
        limiter = asyncio.Semaphore(max_in_flight)
        self._tracks = {s.name: AgentTrack(spec=s, client=client_factory(s)) for s in self._specs}
        for track in self._tracks.values():
            track.client.limiter = limiter
        if first_spread_s > 0:
            # Each agent's serving status and audit check on its own phase within the first
            # `first_spread_s`, so the first poll (the first full table) asks only for what it shows.
            start = self._clock()
            for track in self._tracks.values():
                track.serving_attempt_at = start + self._rng.uniform(0, first_spread_s) - serving_idle_s
                track.audit_at = start + self._rng.uniform(0, first_spread_s) - audit_every_s

    @property
    def specs(self) -> Sequence[AgentSpec]:
        return self._specs

    def now(self) -> float:
        """The poller's clock (injectable for tests)."""
        return self._clock()

    def client(self, name: str) -> AgentClient:
        """The client for agent `name` (KeyError if unknown)."""
        return self._tracks[name].client

    def client_with(self, name: str, kind: type[C], routes: str) -> C:
        """The client for agent `name` as a `kind`; an AgentError if it lacks those (`routes`) routes."""
        client = self.client(name)
        if not isinstance(client, kind):
            raise AgentError(ErrorKind.PROTOCOL, f"console error: this agent's client has no {routes} routes")
        return client

    def backoff_s(self, failures: int) -> float:
        """Delay before the next attempt after `failures` consecutive failures."""
        if failures <= 0:
            return 0.0
        return min(self.backoff_cap_s, self.backoff_base_s * 2 ** (failures - 1))

    def retry_delay_s(self, failures: int) -> float:
        """`backoff_s` shortened by up to `backoff_jitter` of itself, at random: agents that failed in
        the same poll (a network blip) come back spread out instead of in lock-step."""
        return self.backoff_s(failures) * (1.0 - self.backoff_jitter * self._rng.random())

    async def poll(self) -> FleetStatus:
        """Poll every agent whose backoff has expired; return the whole fleet's status.

        Phased (`want_phases`), each agent starts at its own phase within `spread_s` and what has
        arrived is handed to `on_progress` every `progress_every_s` as a whole-fleet status in which
        only the agents polled since the last one are new objects (the others are the very same
        `AgentStatus`, so a table can skip them by identity)."""
        started = self._clock()
        tracks = list(self._tracks.values())
        due = [t for t in tracks if started >= t.next_attempt_at]
        spread = 0.0 if self._burst_next else self.spread_s
        self._burst_next = False
        progress = self.on_progress
        if progress is None and spread <= 0:
            # poll_agent never raises (except cancellation), so one agent cannot abort the others.
            await asyncio.gather(*(self.poll_agent(t) for t in due))
            return self._fleet_status(started, tracks, tracks)
        finished: list[AgentTrack] = []
        every = self.progress_every_s
        offsets = phase_offsets(len(tracks), spread, every)
        place = {t.spec.name: offsets[i] for i, t in enumerate(tracks)}

        async def on_phase(track: AgentTrack) -> None:
            delay = place[track.spec.name] - (self._clock() - started)
            if delay > 0:
                await asyncio.sleep(delay)
            await self.poll_agent(track)
            finished.append(track)

        everyone = asyncio.ensure_future(asyncio.gather(*(on_phase(t) for t in due)))
        # Cancelled with the poll (the app closing): nobody awaits it then, so say it was seen.
        everyone.add_done_callback(lambda f: f.cancelled() or f.exception())
        try:
            while not everyone.done():
                # Handed over at fixed times after the poll's start (the ends of the phase slots), not
                # `every` after the last hand-over: late hand-overs would drift, and an agent's answer
                # would reach the screen a slot earlier or later from one poll to the next.
                boundary = started + (int(max(0.0, self._clock() - started) / every) + 1) * every
                await asyncio.wait([everyone], timeout=max(0.001, boundary - self._clock()))
                # Not before every agent has a status (the first poll): a row per agent or none.
                if progress is not None and finished and not everyone.done() and len(self._statuses) == len(tracks):
                    batch, finished[:] = finished[:], []
                    progress(replace(self._fleet_status(started, tracks, batch), complete=False))
            await everyone
        finally:
            everyone.cancel()
        # The last batch, the agents waiting out a backoff (their "retry in" moved) and any never shown.
        asked = {t.spec.name for t in due}
        waiting = [t for t in tracks if t.spec.name not in asked or t.spec.name not in self._statuses]
        return self._fleet_status(started, tracks, [*finished, *waiting])

    def _fleet_status(self, started: float, tracks: Sequence[AgentTrack], changed: Iterable[AgentTrack]) -> FleetStatus:
        now = self._clock()
        for track in changed:
            self._statuses[track.spec.name] = self.agent_status(track, now)
        return FleetStatus(
            polled_at=now,
            duration_s=max(0.0, now - started),
            agents=tuple(self._statuses[t.spec.name] for t in tracks),
        )

    def want_phases(self, spread_s: float, on_progress: Callable[[FleetStatus], None] | None = None) -> None:
        """Poll each agent on its own phase within `spread_s` and hand partial results to
        `on_progress` (called on the poller's loop) as they come; 0 and None: all at once, one result."""
        self.spread_s = max(0.0, spread_s)
        self.on_progress = on_progress

    def burst_next(self) -> None:
        """The next poll asks every agent at once (the user pressed refresh, a screen wants data now)."""
        self._burst_next = True

    async def series(self, name: str, metric: str, start: float, end: float, step_s: float) -> SeriesResponse:
        """Fetch one metric's series from agent `name`."""
        return await self._tracks[name].client.series(metric, start, end, step_s)

    async def snapshot(self, name: str) -> Snapshot:
        """Agent `name`'s whole newest sample (`/snapshot`: processes, disks, per-core CPU), which the
        summary a poll asks for leaves out; the host screen asks it for the agent it shows."""
        return await self._tracks[name].client.snapshot()

    def want_serving(self, wanted: bool) -> None:
        """Fetch serving status on every poll while `wanted`, else every `serving_idle_s`."""
        self.serving_wanted = wanted

    def want_feeds(self, *feeds: str) -> None:
        """The feeds ("alerts", "rollouts") the screen in front shows: fetched on every poll."""
        self.feeds_wanted = frozenset(feeds)

    def feed_wanted(self, feed: str) -> bool:
        """Whether `feed` is fetched on every poll (see `want_feeds`; by default every feed is)."""
        return self.feeds_wanted is None or feed in self.feeds_wanted

    async def set_fallback(self, name: str, endpoint: str, enabled: bool, reason: str) -> EndpointInfo:
        """Switch `endpoint` on agent `name` to (or back from) its fallback prediction."""
        return await self._tracks[name].client.set_fallback(endpoint, enabled, reason)

    async def aclose(self) -> None:
        """Close every agent's connection pool."""
        await asyncio.gather(*(t.client.aclose() for t in self._tracks.values()), return_exceptions=True)

    async def __aenter__(self) -> FleetPoller:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def poll_agent(self, track: AgentTrack) -> None:
        """One agent's part of a poll: its snapshot (and host info, serving status, audit check when due)
        into `track`. Never raises; feature pollers extend it to fetch their feed in the same round trip."""
        now = self._clock()
        t0 = time.monotonic()
        need_host = (self.ask_host or track.summary_route is False) and (
            track.host is None
            or (track.host_fetched_at is not None and now - track.host_fetched_at >= self.host_refresh_s)
        )
        need_serving = self._serving_due(track, now)
        calls: list[Any] = [self.latest_sample(track)]
        if need_host:
            calls.append(track.client.host_info())
        if need_serving:
            track.serving_attempt_at = now
            calls.append(track.client.serving())
        # Mostly the summary alone: awaited as it is (gather makes a Task of each, ~10 % of a poll's CPU).
        results = [await capture(calls[0])] if len(calls) == 1 else await asyncio.gather(*(capture(c) for c in calls))
        snap_result = results[0]
        host_result: Any = results[1] if need_host else None
        if need_serving:
            self._note_serving(track, results[-1])
        if not need_host and track.host is None and track.summary_route is False:
            # An older agent found without host info asked: its sample interval is there (stale judgement).
            host_result = await capture(track.client.host_info())
        if isinstance(host_result, HostInfo):
            track.host = host_result
            track.host_fetched_at = now
        if isinstance(snap_result, Snapshot):
            track.snapshot = snap_result
            track.asked_at = now
            track.latencies = ([*track.latencies, time.monotonic() - t0])[-5:]
            track.latency_s = statistics.median(track.latencies)
            track.last_seen = self._clock()
            if track.failures:
                # It was down: it may have restarted with other GPUs, settings or a newer version.
                track.host_fetched_at = None if track.host is None else now - self.host_refresh_s
                track.serving_attempt_at = None
                if track.summary_route is False:
                    track.summary_route = None
            track.failures = 0
            track.next_attempt_at = 0.0
            track.error = None
            await self._check_audit(track, now)
            return
        error = as_agent_error(snap_result)
        track.error = error
        if error.kind is ErrorKind.NOT_READY:
            # Alive but starting (no sample yet): keep the normal cadence, no backoff.
            track.failures = 0
            track.next_attempt_at = 0.0
            track.last_seen = self._clock()
            return
        track.failures += 1
        track.next_attempt_at = self._clock() + self.retry_delay_s(track.failures)

    async def latest_sample(self, track: AgentTrack) -> Snapshot:
        """The agent's newest sample: from its summary (one small request, 304 when nothing changed,
        the alert and rollout counts with it) or, from an agent without that route, `/snapshot`."""
        if track.summary_route is not False:
            try:
                summary, etag = await track.client.summary(track.summary_etag)
            except AgentError as exc:
                if exc.status_code != 404:  # the route never answers 404 itself: an older agent
                    raise
                track.summary_route = False
            else:
                track.summary_route = True
                track.summary_etag = etag
                if summary is not None:
                    track.summary = summary
                if track.summary is None or track.summary.snapshot is None:
                    track.summary_etag = None
                    raise AgentError(ErrorKind.NOT_READY, "503 no sample yet", status_code=503)
                return track.summary.snapshot
        return await track.client.snapshot()

    async def _check_audit(self, track: AgentTrack, now: float) -> None:
        if self.audit_heads is None or (track.audit_at is not None and now - track.audit_at < self.audit_every_s):
            return
        from console.core.audit_heads import check_anchor

        track.audit_at = now
        try:
            track.audit = await check_anchor(track.client, self.audit_heads, track.spec.url)
        except OSError as e:  # the state file: say so on the row, keep polling
            from console.core.audit_heads import AuditAnchor

            track.audit = AuditAnchor("unknown", f"audit head not saved: {e}")

    def _serving_due(self, track: AgentTrack, now: float) -> bool:
        if not self.ask_serving:
            return False
        if track.serving_attempt_at is None:
            return True
        if self.serving_wanted and track.serving_state is not ServingState.NONE:
            return True
        return now - track.serving_attempt_at >= self.serving_idle_s

    def _note_serving(self, track: AgentTrack, result: Any) -> None:
        if isinstance(result, ServingStatus):
            track.serving = result
            track.serving_state = ServingState.OK
            track.serving_error = None
            track.serving_at = self._clock()
        elif result is None:
            track.serving = None
            track.serving_state = ServingState.NONE
            track.serving_error = None
        else:
            error = as_agent_error(result)
            track.serving_state = ServingState.ERROR
            track.serving_error = error.message

    # What a poll builds per agent: feature pollers name a subclass carrying their feed and add its
    # fields in `status_extras`, so each agent's status is constructed once per poll (a frozen
    # dataclass rebuilt once per feature was ~5 % of a 1,000-agent poll's CPU).
    status_type: type[AgentStatus] = AgentStatus

    def status_extras(self, track: AgentTrack) -> dict[str, Any]:
        """The fields feature pollers add to `track`'s status (their feeds)."""
        return {}

    def agent_status(self, track: AgentTrack, now: float) -> AgentStatus:
        """What one poll says of one agent (with the feature pollers' `status_extras`)."""
        spec = track.spec
        interval = DEFAULT_SAMPLE_INTERVAL_S
        if track.host is not None:
            interval = track.host.sample_interval_s
        elif track.summary is not None:
            interval = track.summary.sample_interval_s
        offset = track.client.clock_offset_s
        age = None
        if track.snapshot is not None:
            # Compare on the agent's clock so a skewed console does not call a healthy agent stale.
            age = max(0.0, now + offset - track.snapshot.ts)
        display = ""
        if spec.name_from_url:
            if track.host is not None:
                display = track.host.agent_name
            elif track.snapshot is not None:
                display = track.snapshot.agent_name
        common: dict[str, Any] = {
            "name": spec.name,
            "url": spec.url,
            "display_name": display,
            "snapshot": track.snapshot,
            "host": track.host,
            "last_seen": track.last_seen,
            "sample_age_s": age,
            "sample_interval_s": interval,
            "failures": track.failures,
            "latency_s": track.latency_s,
            "clock_offset_s": offset,
            "serving": track.serving,
            "serving_state": track.serving_state,
            "serving_error": track.serving_error,
            "serving_at": track.serving_at,
            "audit": track.audit,
            "summary": track.summary,
            **self.status_extras(track),
        }
        make = self.status_type
        if track.error is not None:
            return make(
                state=AgentState.DOWN,
                reason=track.error.message,
                error_kind=track.error.kind,
                next_retry_at=track.next_attempt_at if track.failures else None,
                **common,
            )
        if track.snapshot is None:  # never polled yet
            return make(state=AgentState.DOWN, reason="not polled yet", **common)
        # Judged at the ask: the agent hands out its newest sample, so one already too old when we
        # asked means its sampler is behind, however long the poll (or the refresh interval) took.
        asked = track.asked_at if track.asked_at is not None else now
        asked_age = max(0.0, asked + offset - track.snapshot.ts)
        if asked_age > STALE_INTERVALS * interval:
            return make(state=AgentState.STALE, reason=f"last sample {asked_age:.0f}s old", **common)
        return make(state=AgentState.UP, **common)
