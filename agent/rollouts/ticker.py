"""A rollout's clock: the thread that ticks live rollouts (timers, guards, the A/B result, loading after a
restart) and the `rollout_guard` alert signals it raises.
"""

from __future__ import annotations

import logging
import threading

from agent.rollouts import abtest
from agent.rollouts.guards import feature_drift_share, judge
from agent.rollouts.state import (
    AB_REFRESH_S,
    AGENT,
    ALERT_HOLD_S,
    FEATURE_DRIFT_REFRESH_S,
    GUARD_EVAL_S,
    IDLE_TICK_S,
    LIVE,
    Rollout,
    _ended,
    _fmt,
)
from agent.schemas import ABResult, GuardMetric

log = logging.getLogger("watchkeeper.rollouts")


class RolloutTicker:
    """The tick loop; mixed into RolloutEngine (agent/rollouts/engine.py), whose state and transitions it uses."""

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="rollouts", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(5)

    def _run(self) -> None:
        while not self._stop.is_set():
            # With nothing live the thread sleeps (an idle agent pays ~nothing); a new rollout wakes it.
            self._wake.wait(self.tick_s if self._busy() else IDLE_TICK_S)
            self._wake.clear()
            if self._stop.is_set():
                return
            try:
                self.tick()
            except Exception:
                log.exception("rollout tick failed")

    def _busy(self) -> bool:
        with self._lock:
            return bool(self._warm) or any(not _ended(r) for r in self._rollouts.values())

    # ------------------------------------------------------------------ the tick

    def tick(self, now: float | None = None) -> None:
        """One pass over live rollouts: endpoint checks, loading, routes, guards, timers, A/B."""
        now = self.clock() if now is None else now
        with self._lock:
            live = [r for r in self._rollouts.values() if r.state in LIVE]
            self._warm = [(mv, until) for mv, until in self._warm if until > now]
            warm = list(self._warm)
        for mv, _ in warm:
            if not self._loaded(mv.name, mv.version):
                self._load_soon(mv, now)
        alert = False
        for r in live:
            try:
                with self._lock:
                    if r.state in LIVE:
                        alert |= self._tick_one(r, now)
            except Exception:
                log.exception("rollout %s: tick failed", r.id)
        if alert:
            self.raise_alerts(now)
        for r in live:
            if r.strategy == "ab" and r.state in LIVE and now - r.ab_at >= AB_REFRESH_S:
                r.ab_at = now
                r.ab = self._ab(r)

    def _tick_one(self, r: Rollout, now: float) -> bool:
        """Returns True when the rollout was aborted by a guard (an alert to raise)."""
        ep = self.serving.endpoints.get(r.endpoint)
        current = ep.version.version if ep is not None and ep.version is not None else None
        if ep is None:
            self._end(r, "aborted", "the endpoint was deleted", AGENT.name)
            self._audit_auto(r, "rollout.abort", {"reason": r.end_reason})
            return False
        # Changes outside the rollout are refused (refuse_change), so these are what a crash left half done
        # (or a change at start-up): on record on behalf of whoever last changed the endpoint.
        changed_by = getattr(ep, "updated_by", None) or None
        cause = f"endpoint {r.endpoint} changed by {changed_by}" if changed_by else None
        if current == r.candidate_version:  # a promotion committed to the endpoint but not yet to the rollout
            self._promote(r, AGENT.name, now, "the endpoint already serves the candidate", None, changed_by, cause)
            return False
        if current != r.stable_version:
            self._end(r, "aborted", f"the endpoint now serves version {current} (changed outside the rollout)",
                      AGENT.name)  # fmt: skip
            self._audit_auto(r, "rollout.abort", {"reason": r.end_reason}, changed_by, cause)
            return False
        if not self._loaded(r.model, r.candidate_version):
            self._load_soon(self._candidate_mv(r), now)
        route = ep.route
        if route is None or route.rollout_id != r.id or route.weight != r.weight or route.shadow != r.shadow:
            self._apply_route(r)  # the endpoint was re-put (a new object) or the agent restarted
        g = r.spec.guards
        # Guards read every request's window (stats, scores): judged once a second, not at every tick, so a
        # watched endpoint's own latency doesn't pay for the watching (bench/serving.py agent-canary).
        if now - r.guards_at >= GUARD_EVAL_S or not r.guards:
            r.guards_at = now
            try:
                metrics = self.serving.route_metrics(r.endpoint, g.window_s)
            except Exception:
                metrics = None
            fd = None
            if g.max_feature_drift_share is not None:
                if now - r.feature_drift_at >= FEATURE_DRIFT_REFRESH_S:
                    r.feature_drift_at = now
                    r.feature_drift = self._feature_drift(r)
                fd = r.feature_drift
            r.guards = r.tracker.update(judge(metrics, g, fd), now)
        held = r.tracker.held(r.guards, now, g.window_s)
        if held is not None:
            why = (
                f"guard {held.name} breached for {now - (held.breached_since or now):.1f} s: candidate "
                f"{_fmt(held.candidate)} > limit {_fmt(held.limit)} (stable {_fmt(held.stable)})"
            )
            self._auto_abort(r, why, held)
            return True
        if r.state != "progressing" or r.step_index >= len(r.steps):
            return False
        step = r.steps[r.step_index]
        elapsed = now - r.step_started_at
        if step.analysis_s is not None:
            bad = next((m for m in r.guards if m.breached), None)
            if bad is not None:
                why = (
                    f"analysis at step {r.step_index} failed: guard {bad.name} candidate {_fmt(bad.candidate)} > "
                    f"limit {_fmt(bad.limit)}"
                )
                self._auto_abort(r, why, bad)
                return True
            if any(m.candidate is not None for m in r.guards):
                r.analysis_judged = True
            if elapsed >= step.analysis_s:
                if r.analysis_judged:
                    self._enter(r, r.step_index + 1, AGENT.name, now, f"analysis at step {r.step_index} passed")
                else:
                    r.state, r.resume_state, r.resume_advances = "paused", "progressing", True
                    r.paused_elapsed = elapsed
                    note = (
                        f"analysis at step {r.step_index} inconclusive: fewer than {g.min_requests} requests to judge "
                        "in the window; resume to accept it, or abort"
                    )
                    self._commit(r, "paused", AGENT.name, {"note": note})
                    self._audit_auto(r, "rollout.pause", {"reason": note})
        elif step.pause_s is not None and elapsed >= step.pause_s:
            note = f"pause of {step.pause_s:g} s at step {r.step_index} over"
            self._enter(r, r.step_index + 1, AGENT.name, now, note)
        return False

    def _auto_abort(self, r: Rollout, why: str, guard: GuardMetric) -> None:
        self._end(r, "aborted", why, AGENT.name, guard_abort=True)
        log.warning("rollout %s on %s aborted: %s", r.id, r.endpoint, why)
        self._audit_auto(r, "rollout.abort", {"reason": why, "guard": guard.model_dump()})

    def _ab(self, r: Rollout) -> ABResult | None:
        try:
            cand = self._candidate_mv(r)
            out = cand.signature.output
            pos = (out.labels or ["0", "1"])[1] if out.kind == "binary" else None
            cur = self._con.cursor()
            try:
                kind, s, c = abtest.outcomes(cur, r.endpoint, r.stable_version, r.candidate_version, r.started_at, pos)
            finally:
                cur.close()
            return abtest.ab_result(kind, s, c, r.spec.ab_min_samples)
        except Exception:
            log.exception("rollout %s: A/B result", r.id)
            return r.ab

    def _feature_drift(self, r: Rollout) -> tuple[float | None, float | None] | None:
        try:
            cur = self._con.cursor()
            try:
                return (
                    feature_drift_share(cur, r.endpoint, r.stable_version),
                    feature_drift_share(cur, r.endpoint, r.candidate_version),
                )
            finally:
                cur.close()
        except Exception:
            log.exception("rollout %s: feature drift", r.id)
            return None

    # ------------------------------------------------------------------ alerts

    def signals(self, now: float | None = None) -> list:
        """One `rollout_guard` signal per endpoint with rollouts: breached while its latest rollout stands
        aborted by a guard (for ALERT_HOLD_S, or until another rollout starts there)."""
        from agent.alerting.rules import Signal

        now = self.clock() if now is None else now
        with self._lock:
            latest: dict[str, Rollout] = {}
            for r in self._rollouts.values():
                if r.endpoint not in latest or r.started_at > latest[r.endpoint].started_at:
                    latest[r.endpoint] = r
            out = []
            for name, r in latest.items():
                if name not in self.serving.endpoints:
                    continue
                recent = r.ended_at is not None and now - r.ended_at < ALERT_HOLD_S
                breached = bool(r.state == "aborted" and r.guard_abort and recent)
                summary = (
                    f"rollout {r.id} of {name} ({r.strategy}, {r.model}:{r.candidate_version}) aborted: "
                    f"{r.end_reason}; traffic is back on {r.model}:{r.stable_version}"
                    if breached
                    else f"rollout {r.id} of {name}: {r.state}"
                )
                out.append(Signal(
                    kind="rollout_guard", endpoint=name, subject=None, value=1.0 if breached else 0.0, threshold=None,
                    breached=breached, summary=summary,
                    labels={"rollout": r.id, "model": r.model, "candidate_version": str(r.candidate_version)},
                ))  # fmt: skip
            return out

    def raise_alerts(self, now: float | None = None) -> None:
        """Evaluate the rollout_guard rule now (not at the alert loop's next turn)."""
        engine = self._alerts()
        if engine is None:
            return
        try:
            engine.evaluate(self.signals(now), now, covered={"rollout_guard"})
        except Exception:
            log.exception("raising the rollout alert")
