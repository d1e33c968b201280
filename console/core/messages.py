"""Typed messages that carry data from workers up to the UI (attributes flow back down)."""

from __future__ import annotations

from collections.abc import Mapping

from textual.message import Message

from agent.schemas import EndpointInfo, SeriesResponse
from console.core.poller import FleetStatus


class FleetPolled(Message):
    """A poll of the whole fleet finished (`partial`: part of a phased poll arrived; the agents not
    polled yet keep their previous status)."""

    def __init__(self, status: FleetStatus, *, partial: bool = False) -> None:
        super().__init__()
        self.status = status
        self.partial = partial


class SeriesLoaded(Message):
    """History for one agent arrived: metric name -> response; failures by metric."""

    def __init__(self, agent: str, series: Mapping[str, SeriesResponse], errors: Mapping[str, str]) -> None:
        super().__init__()
        self.agent = agent
        self.series = dict(series)
        self.errors = dict(errors)


class FallbackToggled(Message):
    """A fallback switch finished: `info` is the agent's answer, or `error` says why it failed."""

    def __init__(
        self, agent: str, endpoint: str, enabled: bool, *, info: EndpointInfo | None = None, error: str | None = None
    ) -> None:
        super().__init__()
        self.agent = agent
        self.endpoint = endpoint
        self.enabled = enabled
        self.info = info
        self.error = error


class ConsoleError(Message):
    """Something the user should hear about; the App is the one sink that reports these."""

    def __init__(self, source: str, message: str, *, severity: str = "error") -> None:
        super().__init__()
        self.source = source
        self.message = message
        self.severity = severity
