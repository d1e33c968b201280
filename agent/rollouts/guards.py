"""Rollout guards: live numbers of the candidate beside stable's, judged against the rollout's limits.

Once a second (`GUARD_EVAL_S`) the engine asks serving for the last `window_s` seconds of the endpoint (`RouteMetrics`;
5 s slots, at most the last 60 s) and judges each configured guard:

- `error_rate`: the candidate's failed calls (its model raised or timed out; the caller was answered by
  stable) over its requests; limit `max_error_rate`.
- `fallback_rate`: the candidate's requests answered with the fallback; limit `max_fallback_rate`.
- `p99_ms`: the candidate's p99 latency; limit `p99_slo_ms`.
- `p99_vs_stable`: the candidate's p99 against `max_p99_ratio_vs_stable` x stable's p99, expressed in ms
  as the limit; a limit is never closer than `P99_MIN_EXCESS_MS` above stable's p99, so sub-millisecond
  jitter on a fast model is not a breach. Needs `min_requests` on both sides.
- `prediction_drift`: Wasserstein distance between the candidate's and stable's output scores over the
  window, divided by the standard deviation of stable's (agent/monitoring/stats.py, the drift monitor's
  score); limit `max_prediction_drift`. Needs `min_requests` scores on both sides.
- `shadow_disagreement`: share of mirrored rows whose label differs from stable's answer. Always measured
  and reported (a shadow step is there to measure it; a retrained model near its threshold disagrees on a
  good share of rows), judged only against a `max_shadow_disagreement` the plan sets (off by default).
- `feature_drift_share`: share of features the drift monitor marks drifted in its latest window of the
  candidate's traffic (stable's beside); limit `max_feature_drift_share`.

While the candidate has fewer than `min_requests` live requests in the window (a shadow or blue/green
preview), its error rate, latency and output scores come from its mirrored calls. A guard that can't be judged
(too few requests) has no candidate value and is not breached. A breach is tracked from the tick it is
first seen (`breached_since`); held for `window_s` it aborts the rollout.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from agent.schemas import GuardMetric, RolloutGuards

P99_MIN_EXCESS_MS = 2.0


def _over(value: float | None, limit: float | None) -> bool:
    return value is not None and limit is not None and value > limit


def prediction_drift(stable_scores: Sequence[float], candidate_scores: Sequence[float]) -> float | None:
    """Wasserstein(stable, candidate) / std(stable), on the union of observed values; None when empty."""
    import numpy as np

    from agent.monitoring.stats import normalise_wasserstein, wasserstein_from_counts, weighted_std

    s = np.asarray(stable_scores, dtype=np.float64)
    c = np.asarray(candidate_scores, dtype=np.float64)
    s, c = s[np.isfinite(s)], c[np.isfinite(c)]
    if s.size == 0 or c.size == 0:
        return None
    values = np.unique(np.concatenate([s, c]))
    s_counts = np.bincount(np.searchsorted(values, s), minlength=values.size)
    c_counts = np.bincount(np.searchsorted(values, c), minlength=values.size)
    w = wasserstein_from_counts(values, s_counts, c_counts)
    return float(normalise_wasserstein(w, weighted_std(values, s_counts)))


def judge(
    metrics: Any | None, g: RolloutGuards, feature_drift: tuple[float | None, float | None] | None = None
) -> list[GuardMetric]:
    """The configured guards over one `RouteMetrics` (None: nothing measured yet), not yet time-tracked."""
    out: list[GuardMetric] = []
    st = metrics.stable if metrics is not None else None
    live = metrics.candidate if metrics is not None else None
    sh = metrics.shadow if metrics is not None else None
    st_ok = st is not None and st.requests >= g.min_requests
    live_ok = live is not None and live.requests >= g.min_requests
    shadow_ok = sh is not None and sh.requests >= g.min_requests

    cand_err = cand_fb = cand_p99 = None
    if live_ok:
        cand_err, cand_fb, cand_p99 = live.error_rate, live.fallback_rate, live.p99_ms
    elif shadow_ok:
        cand_err, cand_p99 = sh.errors / sh.requests, sh.p99_ms
    st_err = st.error_rate if st_ok else None
    st_fb = st.fallback_rate if st_ok else None
    st_p99 = st.p99_ms if st_ok else None

    # The candidate's requests a guard is judged on: its live ones, or its mirrored ones in a preview.
    cand_n = live.requests if live is not None else 0
    if not live_ok and sh is not None:
        cand_n = max(cand_n, sh.requests)
    both_n = min(cand_n, st.requests if st is not None else 0)  # guards comparing with stable need both

    def add(name: str, stable: float | None, cand: float | None, limit: float | None, n: int | None = cand_n) -> None:
        out.append(GuardMetric(
            name=name, stable=stable, candidate=cand, limit=limit, breached=_over(cand, limit),
            judged=cand is not None, requests=n, min_requests=g.min_requests if n is not None else None,
        ))  # fmt: skip

    if g.max_error_rate is not None:
        add("error_rate", st_err, cand_err, g.max_error_rate)
    if g.max_fallback_rate is not None:
        add("fallback_rate", st_fb, cand_fb, g.max_fallback_rate)
    if g.p99_slo_ms is not None:
        add("p99_ms", st_p99, cand_p99, g.p99_slo_ms)
    if g.max_p99_ratio_vs_stable is not None:
        limit = None
        if st_p99 is not None:
            limit = max(g.max_p99_ratio_vs_stable * st_p99, st_p99 + P99_MIN_EXCESS_MS)
        add("p99_vs_stable", st_p99, cand_p99 if limit is not None else None, limit, both_n)
    if g.max_prediction_drift is not None:
        drift = None
        cand_scores = live.scores if live_ok else sh.scores if shadow_ok else None
        enough = st_ok and cand_scores is not None and min(len(st.scores), len(cand_scores)) >= g.min_requests
        if enough:
            drift = prediction_drift(st.scores, cand_scores)
        add("prediction_drift", None, drift, g.max_prediction_drift, both_n)
    # Reported with or without a limit; with none it is never breached.
    dis = sh.disagreement_rate if shadow_ok and sh.rows else None
    add("shadow_disagreement", None, dis, g.max_shadow_disagreement, sh.requests if sh is not None else 0)
    if g.max_feature_drift_share is not None:
        st_share, cand_share = feature_drift or (None, None)
        add("feature_drift_share", st_share, cand_share, g.max_feature_drift_share, None)
    return out


class BreachTracker:
    """When each guard's current breach began (`breached_since`); one per rollout, in memory."""

    def __init__(self) -> None:
        self.since: dict[str, float] = {}

    def update(self, guards: list[GuardMetric], now: float) -> list[GuardMetric]:
        for m in guards:
            if m.breached:
                m.breached_since = self.since.setdefault(m.name, now)
            else:
                self.since.pop(m.name, None)
        return guards

    def held(self, guards: list[GuardMetric], now: float, window_s: float) -> GuardMetric | None:
        """The first guard whose breach has lasted `window_s` or more."""
        for m in guards:
            if m.breached and m.breached_since is not None and now - m.breached_since >= window_s:
                return m
        return None

    def reset(self) -> None:
        self.since.clear()


def feature_drift_share(con: Any, endpoint: str, version: int) -> float | None:
    """Share of features drifted in the monitor's latest window of `version` on `endpoint` (None: no window)."""
    row = con.execute(
        """SELECT avg(CASE WHEN drifted THEN 1.0 ELSE 0.0 END), count(*)
           FROM drift_scores
           WHERE endpoint = ? AND version = ? AND baseline = 'reference' AND feature NOT LIKE '\\_\\_%' ESCAPE '\\'
             AND verdict <> 'no data'
             AND window_end = (SELECT max(window_end) FROM drift_scores
                               WHERE endpoint = ? AND version = ? AND baseline = 'reference')""",
        [endpoint, version, endpoint, version],
    ).fetchall()[0]
    if not row[1]:
        return None
    return float(row[0])
