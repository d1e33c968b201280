"""The incident timeline of an endpoint (GET /api/v1/endpoints/{name}/timeline, …/timeline/before)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from agent.schemas.common import _Wire

TimelineCategory = Literal["change", "signal"]

# Series every timeline carries, in display order: (name, unit).
TIMELINE_SERIES: tuple[tuple[str, str], ...] = (
    ("requests_per_s", "req/s"),
    ("p50_ms", "ms"),
    ("p99_ms", "ms"),
    ("error_share", "share"),
    ("fallback_share", "share"),
    ("drift_score", "score"),
    ("host_cpu_percent", "%"),
    ("host_memory_percent", "%"),
    ("gpu_utilization_percent", "%"),
    ("gpu_memory_percent", "%"),
    ("xid_errors", "count"),
)


class TimelineItem(_Wire):
    """One thing that happened: a change someone (or the agent, on someone's behalf) made, or a signal."""

    ts: float  # unix seconds
    kind: str  # e.g. rollout.approve, rollout.weight, endpoint.fallback, alert.firing, drift.verdict
    category: TimelineCategory
    actor: str  # token name, uid:N, or watchkeeper-agent
    on_behalf_of: str | None = None  # for the agent's automatic actions: whose action caused it
    cause: str | None = None  # … and what that action was ("alice approved step 1")
    summary: str  # one line
    details: dict[str, Any] = Field(default_factory=dict)
    host: str = ""  # the agent that recorded it (the console merges several)
    ref: str | None = None  # rollout id, alert fingerprint, job id: what the item is about


class TimelineSeries(_Wire):
    name: str
    unit: str
    values: list[float | None]  # one per bucket; None: nothing measured in it
    label: str = ""  # e.g. the feature a drift score is for


class Timeline(_Wire):
    endpoint: str
    host: str = ""
    since: float
    until: float
    step_s: float
    buckets: list[float]  # start of each bucket (unix seconds), shared by every series
    series: list[TimelineSeries]
    items: list[TimelineItem]  # oldest first
    truncated: bool = False  # more items than the cap; the newest were kept
    notes: list[str] = Field(default_factory=list)  # what the timeline can't show, said once


class TimelineBefore(_Wire):
    """ "What changed before this?": the changes of the preceding window, newest first, and the series around."""

    endpoint: str
    at: float
    window_s: float
    alert: str | None = None  # the alert fingerprint the moment was taken from
    changes: list[TimelineItem]  # newest first
    timeline: Timeline  # series and items from at - window_s to at + window_s / 2
