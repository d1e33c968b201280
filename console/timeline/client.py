"""Fetching an endpoint's timeline from agents and merging the hosts' timelines into one (no Textual).

Every agent answers on the same axis for the same range (buckets aligned to multiples of the step), so
merging is per bucket: traffic and XID errors add up across hosts; latency, shares, drift and the hosts'
CPU, memory and GPUs take the worst host (the one an engineer has to look at).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Protocol
from urllib.parse import quote

from pydantic import TypeAdapter

from agent.schemas import API_PREFIX, Timeline, TimelineBefore, TimelineItem, TimelineSeries
from console.core.client import AgentClient
from console.core.errors import capture, why

_TIMELINE = TypeAdapter(Timeline)
_BEFORE = TypeAdapter(TimelineBefore)
SUMMED = frozenset({"requests_per_s", "xid_errors"})


class TimelineSource(Protocol):
    """What the timeline screen asks of the console's source (the pollers implement it)."""

    async def timeline(self, name: str, endpoint: str, since: float, until: float) -> Timeline: ...

    async def timeline_before(self, name: str, endpoint: str, at: float, window_s: float) -> TimelineBefore: ...


def _path(endpoint: str, tail: str) -> str:
    return f"{API_PREFIX}/endpoints/{quote(endpoint, safe='')}/{tail}"


async def fetch_timeline(client: AgentClient, endpoint: str, since: float, until: float) -> Timeline:
    """`GET /api/v1/endpoints/{name}/timeline?since=&until=` on one agent."""
    return await client.fetch(_path(endpoint, "timeline"), _TIMELINE, {"since": since, "until": until})


async def fetch_before(client: AgentClient, endpoint: str, at: float, window_s: float) -> TimelineBefore:
    """`GET …/timeline/before?at=&window=` on one agent."""
    return await client.fetch(_path(endpoint, "timeline/before"), _BEFORE, {"at": at, "window": window_s})


def _merge_values(name: str, columns: list[list[float | None]]) -> list[float | None]:
    out: list[float | None] = []
    for vals in zip(*columns, strict=True):
        have = [v for v in vals if v is not None]
        if not have:
            out.append(None)
        else:
            out.append(sum(have) if name in SUMMED else max(have))
    return out


def merge(timelines: Sequence[Timeline]) -> Timeline:
    """One timeline from several hosts' (same endpoint, same range): items interleaved by time, series per
    bucket summed (traffic, XIDs) or the worst host's (the rest)."""
    if not timelines:
        raise ValueError("nothing to merge")
    if len(timelines) == 1:
        return timelines[0]
    first = timelines[0]
    same = [t for t in timelines if t.buckets == first.buckets]
    series = []
    for s in first.series:
        cols = [next((x.values for x in t.series if x.name == s.name), [None] * len(first.buckets)) for t in same]
        labels = sorted({x.label for t in same for x in t.series if x.name == s.name and x.label})
        series.append(
            TimelineSeries(name=s.name, unit=s.unit, values=_merge_values(s.name, cols), label=",".join(labels))
        )
    items = sorted((x for t in timelines for x in t.items), key=lambda x: x.ts)
    notes = sorted({n for t in timelines for n in t.notes})
    if len(same) < len(timelines):
        notes.append(f"{len(timelines) - len(same)} host(s) answered on another time axis; their series are left out")
    return Timeline(
        endpoint=first.endpoint, host=", ".join(t.host for t in timelines), since=first.since, until=first.until,
        step_s=first.step_s, buckets=first.buckets, series=series, items=items,
        truncated=any(t.truncated for t in timelines), notes=notes,
    )  # fmt: skip


def merge_changes(answers: Sequence[TimelineBefore]) -> list[TimelineItem]:
    """The changes of several hosts' "what changed before", newest first."""
    return sorted((x for a in answers for x in a.changes), key=lambda x: x.ts, reverse=True)


async def gather_timelines(
    source: TimelineSource, agents: Sequence[str], endpoint: str, since: float, until: float
) -> tuple[Timeline | None, dict[str, str]]:
    """Every agent's timeline, merged; and, per agent that failed, why."""
    answers = await asyncio.gather(*(capture(source.timeline(a, endpoint, since, until)) for a in agents))
    good = [x for x in answers if isinstance(x, Timeline)]
    errors = {a: why(x) for a, x in zip(agents, answers, strict=True) if isinstance(x, BaseException)}
    return (merge(good) if good else None), errors


async def gather_before(
    source: TimelineSource, agents: Sequence[str], endpoint: str, at: float, window_s: float
) -> tuple[list[TimelineItem], dict[str, str]]:
    """Every agent's changes in the window before `at`, newest first; and, per agent that failed, why."""
    answers = await asyncio.gather(*(capture(source.timeline_before(a, endpoint, at, window_s)) for a in agents))
    good = [x for x in answers if isinstance(x, TimelineBefore)]
    errors = {a: why(x) for a, x in zip(agents, answers, strict=True) if isinstance(x, BaseException)}
    return merge_changes(good), errors
