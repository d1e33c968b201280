"""Typed messages that carry data from workers up to the UI (attributes flow back down)."""

from __future__ import annotations

from collections.abc import Mapping

from textual.message import Message

from agent.api.schemas import SeriesResponse
from console.client import FleetStatus


class FleetPolled(Message):
    """A poll of the whole fleet finished."""

    def __init__(self, status: FleetStatus) -> None:
        super().__init__()
        self.status = status


class SeriesLoaded(Message):
    """History for one agent arrived: metric name -> response; failures by metric."""

    def __init__(self, agent: str, series: Mapping[str, SeriesResponse], errors: Mapping[str, str]) -> None:
        super().__init__()
        self.agent = agent
        self.series = dict(series)
        self.errors = dict(errors)


class ConsoleError(Message):
    """Something the user should hear about; the App is the one sink that reports these."""

    def __init__(self, source: str, message: str, *, severity: str = "error") -> None:
        super().__init__()
        self.source = source
        self.message = message
        self.severity = severity
