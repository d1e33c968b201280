"""Pure builders: the agent's wire types in, alert `Signal`s out (no I/O, no clocks, no state).

The alert loop calls `serving_signals` every interval; the drift monitor calls `drift_signals` and
`quality_signals` for its latest windows (`MonitorService.signals()`). A builder emits a signal for
every endpoint/feature/metric it can judge, breached or not, so an alert whose condition has ended
sees it end; what a builder cannot judge (too few requests, no data) has `value=None` and is not
breached. Thresholds and their meaning: agent/alerting/rules.py.
"""

from __future__ import annotations

from collections.abc import Iterable

from agent.alerting.rules import (
    DEFAULT_RULES,
    LOWER_IS_BETTER,
    MIN_LABELLED,
    MIN_WINDOW_REQUESTS,
    QUALITY_METRICS,
    SERVING_KINDS,
    Signal,
    breaches,
)
from agent.config import AlertRuleConfig
from agent.schemas import (
    DriftReportOut,
    EndpointVersionStats,
    FeatureDriftOut,
    QualityReport,
    ServingStatus,
)

PREDICTION = "__prediction__"
LABEL = "__label__"


def default_threshold(kind: str) -> float | None:
    """The built-in rule's threshold for a kind (used to judge a signal before a rule re-judges it)."""
    return next((r.threshold for r in DEFAULT_RULES if r.kind == kind), None)


def _fmt(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.4g}"


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


class _Window:
    """One endpoint's traffic over the serving window, summed over the versions that served it."""

    def __init__(self, stats: Iterable[EndpointVersionStats]) -> None:
        self.requests = self.errors = self.fallbacks = self.total = 0
        self.window_s = 0.0
        self.p99: float | None = None
        self.versions: list[int] = []
        for s in stats:
            self.total += s.requests
            self.window_s = max(self.window_s, s.window_s)
            if s.window_requests <= 0:
                continue
            self.versions.append(s.version)
            self.requests += s.window_requests
            self.errors += s.window_errors
            self.fallbacks += s.window_fallbacks
            p99 = s.latency.p99_ms
            if p99 is not None and (self.p99 is None or p99 > self.p99):
                self.p99 = p99


def _windows(status: ServingStatus) -> dict[str, _Window]:
    by_ep: dict[str, list[EndpointVersionStats]] = {}
    for s in status.stats:
        by_ep.setdefault(s.endpoint, []).append(s)
    return {ep.name: _Window(by_ep.get(ep.name, [])) for ep in status.endpoints}


def serving_signals(
    status: ServingStatus, previous: ServingStatus | None, rules: Iterable[AlertRuleConfig]
) -> list[Signal]:
    """latency_p99, error_rate, fallback_rate and outage per endpoint, for the kinds some rule uses.

    `previous` is the status at the previous evaluation (None at the first): an endpoint that had
    traffic in its window then and has none now is an outage even if the agent's counters were
    reset since (a re-created endpoint).
    """
    kinds = {r.kind for r in rules} & SERVING_KINDS
    if not kinds:
        return []
    now = _windows(status)
    before = _windows(previous) if previous is not None else {}
    out: list[Signal] = []
    for ep in status.endpoints:
        w = now[ep.name]
        labels = {"model": ep.model}
        if ep.version is not None:
            labels["version"] = str(ep.version)
        span = f"the last {w.window_s:.0f} s" if w.window_s else "the window"
        enough = w.requests >= MIN_WINDOW_REQUESTS
        few = f"{w.requests} requests in {span} (fewer than {MIN_WINDOW_REQUESTS})"
        if "error_rate" in kinds:
            v = w.errors / w.requests if enough else None
            t = default_threshold("error_rate")
            s = f"error rate {_pct(v)} ({w.errors} of {w.requests} requests in {span})" if v is not None else few
            out.append(Signal("error_rate", ep.name, None, v, t, breaches(v, t), s, dict(labels)))
        if "fallback_rate" in kinds:
            v = w.fallbacks / w.requests if enough else None
            t = default_threshold("fallback_rate")
            s = f"fallback rate {_pct(v)} ({w.fallbacks} of {w.requests} requests in {span})" if v is not None else few
            out.append(Signal("fallback_rate", ep.name, None, v, t, breaches(v, t), s, dict(labels)))
        if "latency_p99" in kinds:
            v = w.p99 if enough else None
            t = default_threshold("latency_p99")
            s = f"p99 latency {_fmt(v)} ms over {w.requests} requests in {span}" if v is not None else few
            out.append(Signal("latency_p99", ep.name, None, v, t, breaches(v, t), s, dict(labels)))
        if "outage" in kinds:
            prev = before.get(ep.name)
            had_traffic = (prev is not None and prev.requests > 0) or w.total > 0
            if w.requests == 0:
                down = had_traffic
                s = f"no requests in {span} after earlier traffic" if down else "no traffic yet"
            else:
                down = w.errors + w.fallbacks >= w.requests and not ep.fallback_mode
                s = (
                    f"all {w.requests} requests in {span} failed or fell back"
                    if down
                    else f"{w.requests - w.errors - w.fallbacks} of {w.requests} requests answered by the model"
                )
            out.append(Signal("outage", ep.name, None, float(w.requests), None, down, s, dict(labels)))
    return out


def drift_signals(report: DriftReportOut, baseline_kind: str) -> list[Signal]:
    """feature_drift per feature, prediction_drift (`__prediction__`), label_drift (`__label__`),
    and data_quality per feature, from one drift report against `baseline_kind`."""
    out: list[Signal] = []
    base = {"baseline": baseline_kind, "model": report.model, "version": str(report.version)}
    for f in report.features:
        kind = "prediction_drift" if f.name == PREDICTION else "label_drift" if f.name == LABEL else "feature_drift"
        what = "predictions" if kind == "prediction_drift" else "labels" if kind == "label_drift" else f.name
        labels = {**base, "method": f.method}
        no_data = f.n_cur <= 0 or f.verdict == "no data"
        unjudged = "reference_too_small" in f.quality_issues
        score = None if no_data or unjudged else f.score
        if no_data:
            s = f"{what}: no data in the window"
        elif unjudged:
            s = f"{what}: drift not judged: too few reference values ({f.n_ref}) for {f.n_cur} in the window"
        elif f.drifted:
            s = f"{what} drifted: {f.method} {_fmt(f.score)} over {f.n_cur} rows vs {baseline_kind}"
        else:
            s = f"{what}: {f.method} {_fmt(f.score)} over {f.n_cur} rows vs {baseline_kind}"
        drifted = bool(f.drifted) and not no_data and not unjudged
        out.append(Signal(kind, report.endpoint, f.name, score, f.threshold, drifted, s, labels))
        shares = [x for x in (f.missing_rate_cur, f.out_of_range_share, f.unseen_share) if x is not None]
        worst = None if no_data or not shares else max(shares)
        issues = list(f.quality_issues)
        if issues:
            s = f"{what}: " + "; ".join(_issue_text(i, f) for i in issues)
        elif no_data:
            s = f"{what}: no data in the window"
        else:
            s = f"{what}: no data-quality issues"
        q_labels = {**base}
        if f.unseen_top:
            q_labels["unseen_top"] = ",".join(f.unseen_top[:5])
        out.append(Signal("data_quality", report.endpoint, f.name, worst, None, bool(issues), s, q_labels))
    return out


def _issue_text(issue: str, f: FeatureDriftOut) -> str:
    """A data-quality issue kind as the on-call reads it: which way the missing rate moved, from what to what."""
    if issue == "missing_rate" and f.missing_rate_cur is not None:
        ref = f.missing_rate_ref or 0.0
        way = "fell" if f.missing_rate_cur < ref else "rose"
        return f"missing rate {way} {_pct(ref)} -> {_pct(f.missing_rate_cur)}"
    if issue == "reference_too_small":
        return f"too few reference values: {f.n_ref}"
    if issue == "out_of_range" and f.out_of_range_share is not None:
        lo, hi = _fmt(f.range_min), _fmt(f.range_max)
        src = f" ({f.range_source})" if f.range_source else ""
        return f"out of range {_pct(f.out_of_range_share)} outside [{lo}, {hi}]{src}"
    return issue


def default_metric(model_kind: str | None) -> str:
    """The metric a quality_drop rule without `metric` watches: auc (binary), accuracy (multiclass),
    rmse (regression)."""
    return {"multiclass": "accuracy", "regression": "rmse"}.get(model_kind or "", "auc")


def relative_drop(metric: str, reference: float, current: float) -> float | None:
    """How much worse `current` is than `reference`, relative to it (negative: better)."""
    if reference == 0:
        return None
    if metric in LOWER_IS_BETTER:
        return (current - reference) / abs(reference)
    return (reference - current) / abs(reference)


def quality_signals(report: QualityReport) -> list[Signal]:
    """quality_drop per metric that both the latest labelled window and the reference have."""
    windows = [w for w in report.windows if w.labelled > 0]
    if not windows:
        return []
    # The latest window; of several versions in it, the one with the most labels.
    w = max(windows, key=lambda x: (x.window_end, x.labelled))
    threshold = default_threshold("quality_drop")
    out: list[Signal] = []
    for metric in QUALITY_METRICS:
        ref = report.reference_metrics.get(metric)
        cur = getattr(w, metric, None)
        if ref is None or cur is None:
            continue
        labels = {"metric": metric, "model": w.model, "version": str(w.version), "model_kind": report.kind}
        if w.labelled < MIN_LABELLED:
            drop = None
            s = f"{metric}: {w.labelled} labelled predictions in the window (fewer than {MIN_LABELLED})"
        else:
            drop = relative_drop(metric, ref, cur)
            s = (
                f"{metric} {_fmt(cur)} vs reference {_fmt(ref)} ({_pct(drop or 0.0)} worse) "
                f"over {w.labelled} labelled predictions"
            )
        breached = breaches(drop, threshold)
        out.append(Signal("quality_drop", report.endpoint, metric, drop, threshold, breached, s, labels))
    return out
