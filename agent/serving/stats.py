"""Latency histograms and counters per endpoint and model version, over a rolling window and since start.

Log-spaced buckets (25 per decade from 10 µs to 100 s): recording is a bisect and two increments,
percentiles are interpolated within a bucket (error well under 10 %), and histograms merge by
adding counts — the same buckets feed the API, /metrics and the console.
"""

from __future__ import annotations

import bisect
import time
from collections import deque
from dataclasses import dataclass, field

from agent.schemas import EndpointVersionStats, LatencySummary

BOUNDS_MS: list[float] = [0.01 * 10 ** (i / 25) for i in range(25 * 7 + 1)]  # 0.01 ms .. 100 s
WINDOW_S = 60.0
SLOT_S = 5.0


def _new() -> list[int]:
    return [0] * (len(BOUNDS_MS) + 1)


@dataclass
class _Slot:
    start: float
    hist: list[int] = field(default_factory=_new)
    requests: int = 0
    errors: int = 0
    fallbacks: int = 0
    sum_ms: float = 0.0


class VersionStats:
    def __init__(self, endpoint: str, model: str, version: int) -> None:
        self.endpoint, self.model, self.version = endpoint, model, version
        self.hist = _new()
        self.requests = self.rows = self.errors = self.fallbacks = self.rejected = 0
        self.sum_ms = 0.0
        self.compute_ms = 0.0
        self.fallbacks_by_reason: dict[str, int] = {}
        self.shed: dict[str, int] = {}  # requests refused with 429 (overload, shed); fallbacks are counted above
        self.status_codes: dict[int, int] = {}
        self._slots: deque[_Slot] = deque()
        # Output scores while a rollout watches this endpoint (its prediction-drift guard).
        self.scores = ScoreSlots()

    def add_scores(self, scores: list[float]) -> None:
        self.scores.add(scores)

    def _slot(self, now: float) -> _Slot:
        start = now - now % SLOT_S
        if not self._slots or self._slots[-1].start != start:
            self._slots.append(_Slot(start))
            while self._slots and self._slots[0].start <= now - WINDOW_S - SLOT_S:
                self._slots.popleft()
        return self._slots[-1]

    def record(self, latency_ms: float, rows: int, status: int, fallback_reason: str | None, error: bool) -> None:
        now = time.time()
        i = bisect.bisect_left(BOUNDS_MS, latency_ms)
        s = self._slot(now)
        self.hist[i] += 1
        s.hist[i] += 1
        self.requests += 1
        s.requests += 1
        self.rows += rows
        self.sum_ms += latency_ms
        s.sum_ms += latency_ms
        self.status_codes[status] = self.status_codes.get(status, 0) + 1
        if error:
            self.errors += 1
            s.errors += 1
        if fallback_reason is not None:
            self.fallbacks += 1
            s.fallbacks += 1
            self.fallbacks_by_reason[fallback_reason] = self.fallbacks_by_reason.get(fallback_reason, 0) + 1

    def snapshot(self, batch_rows_mean: float | None = None) -> EndpointVersionStats:
        now = time.time()
        slots = [s for s in self._slots if s.start > now - WINDOW_S - SLOT_S]
        hist = _new()
        req = err = fb = 0
        total_ms = 0.0
        for s in slots:
            for i, c in enumerate(s.hist):
                if c:
                    hist[i] += c
            req += s.requests
            err += s.errors
            fb += s.fallbacks
            total_ms += s.sum_ms
        span = max(min(WINDOW_S, now - slots[0].start), 1.0) if slots else WINDOW_S
        return EndpointVersionStats(
            endpoint=self.endpoint,
            model=self.model,
            version=self.version,
            requests=self.requests,
            rows=self.rows,
            errors=self.errors,
            fallbacks=self.fallbacks,
            fallbacks_by_reason=dict(self.fallbacks_by_reason),
            rejected=self.rejected,
            window_s=span,
            window_requests=req,
            window_fallbacks=fb,
            window_errors=err,
            window_rps=req / span,
            window_error_rate=err / req if req else 0.0,
            window_fallback_rate=fb / req if req else 0.0,
            latency=summarize(hist, total_ms),
            latency_total=summarize(self.hist, self.sum_ms),
            batch_rows_mean=batch_rows_mean,
        )


def quantile(hist: list[int], q: float) -> float | None:
    """The q-quantile (0..1) of a bucketed histogram, interpolated linearly within its bucket."""
    total = sum(hist)
    if total == 0:
        return None
    rank = q * total
    seen = 0
    for i, c in enumerate(hist):
        if c and seen + c >= rank:
            lo = BOUNDS_MS[i - 1] if i > 0 else 0.0
            hi = BOUNDS_MS[i] if i < len(BOUNDS_MS) else BOUNDS_MS[-1]
            return lo + (hi - lo) * max(0.0, min(1.0, (rank - seen) / c))
        seen += c
    return BOUNDS_MS[-1]


def summarize(hist: list[int], sum_ms: float) -> LatencySummary:
    n = sum(hist)
    return LatencySummary(
        count=n,
        p50_ms=quantile(hist, 0.50),
        p95_ms=quantile(hist, 0.95),
        p99_ms=quantile(hist, 0.99),
        mean_ms=sum_ms / n if n else None,
    )


@dataclass
class VersionWindow:
    """One version's traffic over a recent window (rollout guards): counts, rates, latency, output scores."""

    version: int
    requests: int = 0
    errors: int = 0
    fallbacks: int = 0
    error_rate: float = 0.0
    fallback_rate: float = 0.0
    p50_ms: float | None = None
    p99_ms: float | None = None
    scores: list[float] = field(default_factory=list)


@dataclass
class ShadowWindow:
    """Mirrored requests over a recent window: the candidate against the answers stable gave."""

    requests: int = 0
    rows: int = 0
    disagreements: int = 0  # rows whose label differs from stable's
    disagreement_rate: float = 0.0
    score_abs_diff_mean: float | None = None
    p99_ms: float | None = None
    errors: int = 0
    scores: list[float] = field(default_factory=list)  # the candidate's outputs (its prediction drift)


def version_window(stats: VersionStats | None, version: int, seconds: float) -> VersionWindow:
    """Counts of the slots that started within the last `seconds` (5 s granularity), plus their scores."""
    out = VersionWindow(version)
    if stats is None:
        return out
    now = time.time()
    hist = _new()
    total_ms = 0.0
    for s in stats._slots:
        if s.start + SLOT_S <= now - seconds:
            continue
        out.requests += s.requests
        out.errors += s.errors
        out.fallbacks += s.fallbacks
        total_ms += s.sum_ms
        for i, c in enumerate(s.hist):
            if c:
                hist[i] += c
    if out.requests:
        out.error_rate = out.errors / out.requests
        out.fallback_rate = out.fallbacks / out.requests
        lat = summarize(hist, total_ms)
        out.p50_ms, out.p99_ms = lat.p50_ms, lat.p99_ms
    out.scores = stats.scores.since(now - seconds)
    return out


class ScoreSlots:
    """Recent output scores in 1-second slots of at most SCORES_PER_SLOT each, kept SCORE_KEEP_S.

    Bounded whatever the request rate (at 3k req/s a list per request would keep ~1M objects alive for the
    garbage collector and make every guard evaluation walk them); the first scores of each second stand for
    it, which is an unbiased sample for a distribution that doesn't change within the second.
    """

    def __init__(self) -> None:
        self._slots: deque[tuple[float, list[float]]] = deque()

    def add(self, scores: list[float]) -> None:
        now = time.time()
        start = now - now % 1.0
        if not self._slots or self._slots[-1][0] != start:
            self._slots.append((start, []))
            while self._slots and self._slots[0][0] < now - SCORE_KEEP_S:
                self._slots.popleft()
        slot = self._slots[-1][1]
        room = SCORES_PER_SLOT - len(slot)
        if room > 0:
            slot.extend(scores[:room])

    def since(self, t: float) -> list[float]:
        return [x for start, chunk in self._slots if start + 1.0 > t for x in chunk if x is not None]


SCORES_PER_SLOT = 500
SCORE_KEEP_S = WINDOW_S * 5


@dataclass
class _ShadowSlot:
    start: float
    requests: int = 0
    rows: int = 0
    disagreements: int = 0
    diff: float = 0.0
    errors: int = 0
    sum_ms: float = 0.0
    hist: list[int] = field(default_factory=_new)


class ShadowStats:
    """Mirrored calls summed in 1-second slots (kept SCORE_KEEP_S), plus the candidate's scores."""

    def __init__(self) -> None:
        self._slots: deque[_ShadowSlot] = deque()
        self.scores = ScoreSlots()

    def record(
        self, rows: int, disagreements: int, abs_diff_sum: float, latency_ms: float, error: bool,
        scores: list[float] | None = None,
    ) -> None:  # fmt: skip
        now = time.time()
        start = now - now % 1.0
        if not self._slots or self._slots[-1].start != start:
            self._slots.append(_ShadowSlot(start))
            while self._slots and self._slots[0].start < now - SCORE_KEEP_S:
                self._slots.popleft()
        s = self._slots[-1]
        s.requests += 1
        s.errors += error
        if not error:
            s.rows += rows
        s.disagreements += disagreements
        s.diff += abs_diff_sum
        s.sum_ms += latency_ms
        s.hist[bisect.bisect_left(BOUNDS_MS, latency_ms)] += 1
        if scores:
            self.scores.add(scores)

    def window(self, seconds: float) -> ShadowWindow:
        now = time.time()
        out = ShadowWindow()
        hist = _new()
        total_ms = 0.0
        diff = 0.0
        for s in self._slots:
            if s.start + 1.0 <= now - seconds:
                continue
            out.requests += s.requests
            out.rows += s.rows
            out.disagreements += s.disagreements
            out.errors += s.errors
            diff += s.diff
            total_ms += s.sum_ms
            for i, c in enumerate(s.hist):
                if c:
                    hist[i] += c
        if out.rows:
            out.disagreement_rate = out.disagreements / out.rows
            out.score_abs_diff_mean = diff / out.rows
        if out.requests:
            out.p99_ms = summarize(hist, total_ms).p99_ms
        out.scores = self.scores.since(now - seconds)
        return out
