"""A scripted incident as agents would answer it (for the timeline screen's tests and snapshots).

Deterministic: every value is a function of the bucket index and the host, every item at a fixed offset
before the console's frozen clock, so snapshots don't move.
"""

from __future__ import annotations

import math

from agent.schemas import TIMELINE_SERIES, Timeline, TimelineBefore, TimelineItem, TimelineSeries
from agent.timeline.series import axis, pick_step

FROZEN_NOW = 1_700_000_000.0
# (minutes before now, kind, category, actor, on_behalf_of, summary)
SCRIPT = (
    (52, "rollout.start", "change", "olga", None, "rollout r-7c1d started: flights v3 -> v4 (canary): ship v4"),
    (52, "rollout.weight", "change", "olga", None, "rollout r-7c1d step 1: weight 0% -> 10%"),
    (41, "rollout.approve", "change", "alice", None, "approved step 1 of rollout r-7c1d (weight 10%): looks fine"),
    (41, "rollout.weight", "change", "alice", None, "rollout r-7c1d step 3: weight 10% -> 50%"),
    (
        38,
        "rollout.abort",
        "change",
        "watchkeeper-agent",
        "alice",
        "rollout r-7c1d aborted: guard error_rate breached for 30 s: candidate 0.31 > limit 0.05 (stable 0)",
    ),
    (38, "alert.firing", "signal", "watchkeeper-agent", None, "critical alert rollout_guard fired: r-7c1d aborted"),
    (30, "endpoint.fallback", "change", "olga", None, "switched to fallback: holding while we look"),
    (24, "breaker.open", "signal", "watchkeeper-agent", None, "breaker opened: 12/20 calls failed or were slow in 10s"),
    (22, "endpoint.fallback", "change", "olga", None, "switched back from fallback: stable is fine"),
    (12, "drift.verdict", "signal", "watchkeeper-agent", None, "drift in 2 feature(s): temp 1.31, dep_hour 0.42"),
    (11, "alert.firing", "signal", "watchkeeper-agent", None, "warning alert feature_drift fired: temp, dep_hour"),
)


def _value(name: str, i: int, host_no: int, n: int) -> float | None:
    wave = (math.sin(i / 7.0 + host_no) + 1) / 2
    late = i > n * 0.55
    return {
        "requests_per_s": 40 + 20 * wave + 5 * host_no,
        "p50_ms": 4 + 2 * wave,
        "p99_ms": 12 + 8 * wave + (60 if 0.35 * n < i < 0.45 * n else 0),
        "error_share": 0.3 if 0.35 * n < i < 0.42 * n else 0.0,
        "fallback_share": 1.0 if 0.5 * n < i < 0.62 * n else 0.0,
        "drift_score": (0.05 + 0.02 * wave) if not late or i < n * 0.8 else 1.2 + 0.1 * wave,
        "host_cpu_percent": 30 + 25 * wave + 10 * host_no,
        "host_memory_percent": 55 + 3 * wave,
        "gpu_utilization_percent": 20 + 60 * wave if host_no else None,
        "gpu_memory_percent": 40 + 10 * wave if host_no else None,
        "xid_errors": 1.0 if host_no and i == int(n * 0.3) else None,
    }[name]


def make_timeline(host: str, endpoint: str, since: float, until: float, host_no: int = 0) -> Timeline:
    step = pick_step(until - since)
    t0, n = axis(since, until, step)
    series = [
        TimelineSeries(name=name, unit=unit, values=[_value(name, i, host_no, n) for i in range(n)],
                       label="temp" if name == "drift_score" else "")
        for name, unit in TIMELINE_SERIES
    ]  # fmt: skip
    items = []
    for minutes, kind, cat, actor, behalf, summary in SCRIPT:
        ts = FROZEN_NOW - minutes * 60 + host_no * 7
        if since <= ts <= until and (host_no == 0 or kind.startswith(("breaker", "alert.firing"))):
            items.append(
                TimelineItem(ts=ts, kind=kind, category=cat, actor=actor, on_behalf_of=behalf, summary=summary,
                             host=host, cause="alice approved step 1" if behalf else None)
            )  # fmt: skip
    return Timeline(
        endpoint=endpoint, host=host, since=since, until=until, step_s=step,
        buckets=[t0 + i * step for i in range(n)], series=series, items=items,
    )  # fmt: skip


def make_before(host: str, endpoint: str, at: float, window_s: float, host_no: int = 0) -> TimelineBefore:
    tl = make_timeline(host, endpoint, at - window_s, at + window_s / 2, host_no)
    changes = [x for x in reversed(tl.items) if x.category == "change" and x.ts <= at]
    return TimelineBefore(endpoint=endpoint, at=at, window_s=window_s, changes=changes, timeline=tl)
