"""The monitoring half of the agents' API: drift, histograms, model quality and model alerts.

`MonitoringClient` adds those routes to `AgentClient`; `MonitoringPoller` is the `FleetPoller` the
TUI runs. Alerts are fleet-wide state, so each poll also asks every due agent for its alerts
(concurrently with its snapshot: one round trip, same backoff); drift is fetched on demand, for the
endpoint on screen, by the screen that shows it.

Like `console.core.client` this imports no Textual and nothing from `agent/` but the wire contract.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, TypeVar
from urllib.parse import quote

from pydantic import TypeAdapter, ValidationError

from agent.schemas import (
    API_PREFIX,
    AlertAck,
    AlertOut,
    AlertRuleOut,
    AlertSilence,
    AlertsResponse,
    DriftHistory,
    DriftReportOut,
    HistogramOut,
    QualityReport,
    Timeline,
    TimelineBefore,
    WebhookStatus,
)
from console.core.client import AgentClient
from console.core.config import AgentSpec
from console.core.errors import capture
from console.core.feeds import FeedState, FeedTrack, beside, route_unavailable, unless_unavailable
from console.core.poller import FleetPoller, FleetSource

if TYPE_CHECKING:
    from console.core.poller import AgentTrack

# The agent serves its model alerts here (`/api/v1/alerts` is its own conditions, an older route).
ALERTS_LIST_PATH = f"{API_PREFIX}/alerting"
# An agent without alerting (404: older agent; 503 alerting_unavailable) is asked again this often.
ALERTS_IDLE_S = 120.0

_DRIFT = TypeAdapter(DriftReportOut)
_HISTORY = TypeAdapter(DriftHistory)
_HISTOGRAM = TypeAdapter(HistogramOut)
_QUALITY = TypeAdapter(QualityReport)
_ALERTS = TypeAdapter(AlertsResponse)
_ALERT = TypeAdapter(AlertOut)

T = TypeVar("T")


@dataclass(frozen=True)
class AlertFeed:
    """One agent's model alerts as of its last poll. Times are console-clock unix seconds."""

    state: FeedState = FeedState.UNKNOWN
    alerts: tuple[AlertOut, ...] = ()
    rules: tuple[AlertRuleOut, ...] = ()
    webhooks: tuple[WebhookStatus, ...] = ()
    error: str | None = None
    fetched_at: float | None = None  # the last good answer


def _range(params: dict[str, Any], since: float | None, until: float | None = None) -> dict[str, Any]:
    if since is not None:
        params["since"] = f"{since:.3f}"
    if until is not None:
        params["until"] = f"{until:.3f}"
    return params


class MonitoringClient(AgentClient):
    """`AgentClient` plus the drift, quality and alert routes."""

    def _endpoint_path(self, endpoint: str, tail: str) -> str:
        return f"{API_PREFIX}/endpoints/{quote(endpoint, safe='')}/{tail}"

    async def drift(
        self, endpoint: str, baseline: str = "reference", since: float | None = None, until: float | None = None
    ) -> DriftReportOut:
        """`GET /api/v1/endpoints/{name}/drift`: the latest closed window (or a merged range) vs a baseline."""
        params = _range({"baseline": baseline}, since, until)
        return await self.fetch(self._endpoint_path(endpoint, "drift"), _DRIFT, params)

    async def drift_history(
        self, endpoint: str, baseline: str = "reference", since: float | None = None
    ) -> DriftHistory:
        """`GET .../drift/history`: each feature's score per window, oldest first."""
        params = _range({"baseline": baseline}, since)
        return await self.fetch(self._endpoint_path(endpoint, "drift/history"), _HISTORY, params)

    async def drift_histogram(
        self, endpoint: str, feature: str, since: float | None = None, until: float | None = None
    ) -> HistogramOut:
        """`GET .../drift/histogram?feature=`: reference vs current shares over the profile's bins."""
        params = _range({"feature": feature}, since, until)
        return await self.fetch(self._endpoint_path(endpoint, "drift/histogram"), _HISTOGRAM, params)

    async def quality(self, endpoint: str) -> QualityReport:
        """`GET .../quality`: model quality per version and window (labelled predictions)."""
        return await self.fetch(self._endpoint_path(endpoint, "quality"), _QUALITY)

    async def model_alerts(self, state: str | None = None) -> AlertsResponse | None:
        """`GET /api/v1/alerting[?state=]`; None when the agent has no alerting (404, or not running)."""
        return await unless_unavailable(
            self.fetch(ALERTS_LIST_PATH, _ALERTS, {"state": state} if state else None),
            lambda exc: route_unavailable(exc, "alerting_unavailable"),
        )

    async def ack_alert(self, fingerprint: str, comment: str = "") -> AlertOut | None:
        """`POST /api/v1/alerts/{fingerprint}/ack` (operator; the agent audits it)."""
        body = AlertAck(comment=comment).model_dump_json().encode()
        return await self._post_alert(f"{API_PREFIX}/alerts/{quote(fingerprint, safe='')}/ack", body)

    async def silence_alert(self, fingerprint: str, duration_s: float, comment: str = "") -> AlertOut | None:
        """`POST /api/v1/alerts/{fingerprint}/silence` (operator; the agent audits it)."""
        body = AlertSilence(duration_s=duration_s, comment=comment).model_dump_json().encode()
        return await self._post_alert(f"{API_PREFIX}/alerts/{quote(fingerprint, safe='')}/silence", body)

    async def _post_alert(self, path: str, body: bytes) -> AlertOut | None:
        response = await self.request("POST", path, body=body)
        try:
            return _ALERT.validate_json(response.content)
        except ValidationError:
            # A 2xx means the agent did it; an answer we cannot read must not make it look failed.
            return None


class MonitoringSource(FleetSource, Protocol):
    """What the drift and alerts screens need from the data layer (MonitoringPoller, or a test fake)."""

    async def drift(
        self, name: str, endpoint: str, baseline: str = "reference", since: float | None = None
    ) -> DriftReportOut: ...

    async def drift_history(self, name: str, endpoint: str, baseline: str = "reference") -> DriftHistory: ...

    async def drift_histogram(self, name: str, endpoint: str, feature: str) -> HistogramOut: ...

    async def quality(self, name: str, endpoint: str) -> QualityReport: ...

    async def ack_alert(self, name: str, fingerprint: str, comment: str) -> AlertOut | None: ...

    async def silence_alert(self, name: str, fingerprint: str, duration_s: float, comment: str) -> AlertOut | None: ...


def alert_counts(track: AgentTrack) -> object:
    """What the agent's summary says of its alerts (firing by severity, pending); None without one."""
    summary = track.summary
    if summary is None:
        return None
    firing = None if summary.alerts_firing is None else tuple(sorted(summary.alerts_firing.items()))
    return firing, summary.alerts_pending


def alerts_quiet(counts: object) -> bool:
    """The summary counts no alert firing or pending (or the agent runs no alerting)."""
    if not isinstance(counts, tuple):
        return False
    firing, pending = counts
    return not firing and not pending


class MonitoringPoller(FleetPoller):
    """`FleetPoller` that also fetches every agent's alerts on each poll (see the module docstring).

    `alerts_state` narrows what is asked for (`watchkeeper alerts --state firing`); the TUI asks for
    all of them. An agent without alerting is asked again only every `alerts_idle_s`.
    """

    def __init__(
        self,
        specs: Iterable[AgentSpec],
        *,
        alerts_state: str | None = None,
        alerts_idle_s: float = ALERTS_IDLE_S,
        client_factory: Callable[[AgentSpec], AgentClient] = MonitoringClient,
        **kwargs: Any,
    ) -> None:
        super().__init__(specs, client_factory=client_factory, **kwargs)
        self.alerts_state = alerts_state
        self.alerts_idle_s = alerts_idle_s
        self._alert_tracks = {s.name: FeedTrack(AlertFeed()) for s in self.specs}

    def _monitoring(self, name: str) -> MonitoringClient:
        return self.client_with(name, MonitoringClient, "monitoring")

    async def poll_agent(self, track: AgentTrack) -> None:
        alerts = self._alert_tracks[track.spec.name]
        now = self.now()
        if alerts.may_wait(track, now, wanted=self.feed_wanted("alerts")):
            # Nobody looks at the alerts: the summary (this poll's one request) says whether they changed.
            await super().poll_agent(track)
            counts = alert_counts(track)
            if alerts.settled(counts, quiet=alerts_quiet(counts)):
                return
            alerts.attempt_at = now
            result = await capture(self._fetch_alerts(track))
        elif not alerts.due(now, self.alerts_idle_s):
            await super().poll_agent(track)
            return
        else:
            result = await beside(super().poll_agent(track), self._fetch_alerts(track))
        counts = alert_counts(track)
        alerts.based_on(counts, alerts_quiet(counts))
        if isinstance(result, AlertsResponse):
            alerts.feed = AlertFeed(
                state=FeedState.OK,
                alerts=tuple(result.alerts),
                rules=tuple(result.rules),
                webhooks=tuple(result.webhooks),
                fetched_at=self.now(),
            )
        elif result is None:
            alerts.feed = AlertFeed(state=FeedState.NONE, fetched_at=self.now())
        else:
            alerts.failed(result)

    async def _fetch_alerts(self, track: AgentTrack) -> AlertsResponse | None:
        return await self._monitoring(track.spec.name).model_alerts(self.alerts_state)

    def status_extras(self, track: AgentTrack) -> dict[str, Any]:
        return {**super().status_extras(track), "alerts": self._alert_tracks[track.spec.name].feed}

    # ------------------------------------------------------------------ on demand (MonitoringSource)

    async def drift(
        self, name: str, endpoint: str, baseline: str = "reference", since: float | None = None
    ) -> DriftReportOut:
        """Agent `name`'s drift report for `endpoint`."""
        return await self._monitoring(name).drift(endpoint, baseline, since)

    async def drift_history(self, name: str, endpoint: str, baseline: str = "reference") -> DriftHistory:
        """Agent `name`'s per-window drift scores for `endpoint`."""
        return await self._monitoring(name).drift_history(endpoint, baseline)

    async def drift_histogram(self, name: str, endpoint: str, feature: str) -> HistogramOut:
        """Reference vs current histogram of one feature of `endpoint` on agent `name`."""
        return await self._monitoring(name).drift_histogram(endpoint, feature)

    async def quality(self, name: str, endpoint: str) -> QualityReport:
        """Model quality of `endpoint` on agent `name`."""
        return await self._monitoring(name).quality(endpoint)

    async def timeline(self, name: str, endpoint: str, since: float, until: float) -> Timeline:
        """Agent `name`'s incident timeline of `endpoint` (console/timeline/)."""
        from console.timeline.client import fetch_timeline

        return await fetch_timeline(self.client(name), endpoint, since, until)

    async def timeline_before(self, name: str, endpoint: str, at: float, window_s: float) -> TimelineBefore:
        """What changed on agent `name` in the `window_s` before `at` (console/timeline/)."""
        from console.timeline.client import fetch_before

        return await fetch_before(self.client(name), endpoint, at, window_s)

    async def ack_alert(self, name: str, fingerprint: str, comment: str) -> AlertOut | None:
        """Acknowledge alert `fingerprint` on agent `name`."""
        return await self._monitoring(name).ack_alert(fingerprint, comment)

    async def silence_alert(self, name: str, fingerprint: str, duration_s: float, comment: str) -> AlertOut | None:
        """Silence alert `fingerprint` on agent `name` for `duration_s`."""
        return await self._monitoring(name).silence_alert(fingerprint, duration_s, comment)
