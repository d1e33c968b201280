"""Circuit breaker per endpoint: closed -> open on error rate or slow calls -> half-open probes -> closed.

Closed: every call allowed; outcomes kept for `window_s`. When at least `min_requests` outcomes are
in the window and the failure share reaches `error_rate`, the breaker opens. Open: no call reaches
the model for `open_s` (callers get the fallback or 503). Then half-open: up to
`half_open_probes` calls go through; all succeeding closes it, any failure re-opens it. A call
slower than `slow_call_ms` counts as a failure. Single-threaded by design: it lives on the loop.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable

from agent.schemas import BreakerConfig


class CircuitBreaker:
    def __init__(self, cfg: BreakerConfig, clock: Callable[[], float] = time.monotonic) -> None:
        self.cfg = cfg
        self._clock = clock
        self._outcomes: deque[tuple[float, bool]] = deque()
        self._failures = 0
        self.state = "closed" if cfg.enabled else "disabled"
        self._opened_at = 0.0
        self._probes_started = 0
        self._probes_ok = 0
        self.opened_count = 0
        self.last_reason = ""
        self.since = time.time()  # wall clock of the last state change, for people
        # Told (new state, reason) at every transition; the serving layer records it for the timeline.
        self.on_change: Callable[[str, str], None] | None = None

    def _moved(self, state: str, reason: str) -> None:
        self.state = state
        self.since = time.time()
        if self.on_change is not None:
            try:
                self.on_change(state, reason)
            except Exception:  # a record that can't be queued never breaks a call
                pass

    def allow(self) -> bool:
        """May this call reach the model? Moves open -> half-open when the open period ends."""
        if self.state in ("closed", "disabled"):
            return True
        if self.state == "open":
            if self._clock() - self._opened_at < self.cfg.open_s:
                return False
            self._moved("half_open", f"open for {self.cfg.open_s:g}s; probing with {self.cfg.half_open_probes} calls")
            self._probes_started = self._probes_ok = 0
        if self._probes_started < self.cfg.half_open_probes:
            self._probes_started += 1
            return True
        return False

    def record(self, ok: bool, latency_ms: float) -> None:
        """Report a call's outcome (only calls that `allow()` let through)."""
        if self.state == "disabled":
            return
        slow = self.cfg.slow_call_ms is not None and latency_ms > self.cfg.slow_call_ms
        good = ok and not slow
        if self.state == "half_open":
            if not good:
                self._open("probe failed" if not ok else "probe slow")
                return
            self._probes_ok += 1
            if self._probes_ok >= self.cfg.half_open_probes:
                self._moved("closed", f"{self._probes_ok} probe calls succeeded")
                self._outcomes.clear()
                self._failures = 0
            return
        if self.state != "closed":
            return
        now = self._clock()
        self._outcomes.append((now, good))
        if not good:
            self._failures += 1
        horizon = now - self.cfg.window_s
        while self._outcomes and self._outcomes[0][0] < horizon:
            _, was_good = self._outcomes.popleft()
            if not was_good:
                self._failures -= 1
        total = len(self._outcomes)
        if total >= self.cfg.min_requests and self._failures / total >= self.cfg.error_rate:
            self._open(f"{self._failures}/{total} calls failed or were slow in {self.cfg.window_s:g}s")

    def _open(self, reason: str) -> None:
        self._opened_at = self._clock()
        self.opened_count += 1
        self.last_reason = reason
        self._moved("open", reason)
        self._outcomes.clear()
        self._failures = 0
