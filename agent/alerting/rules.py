"""Alert rules: what each kind measures, what its threshold means, and the built-in defaults.

A rule (`[[alerting.rules]]`, `agent.config.AlertRuleConfig`) names a kind, a threshold, a hold
time (`for`), a severity and optionally the endpoints it applies to (empty: every endpoint). Each
evaluation turns the agent's state into `Signal`s (agent/alerting/signals.py); the engine applies
every rule to the signals of its kind. An alert is one (rule, endpoint, subject): it is *pending*
from its first breach, *firing* once the breach has held for `for` seconds (notified once), and
*resolved* when the breach ends or its endpoint/feature goes away.

Kinds and their thresholds (every comparison is "value > threshold"):

- `latency_p99`: threshold in milliseconds. Value: the endpoint's p99 request latency over the
  serving window (the last 60 s; the largest p99 of the versions that served in it). Needs at least
  `MIN_WINDOW_REQUESTS` requests in the window. Default 250 ms, for 60 s, warning.
- `error_rate`: threshold a share 0..1. Value: requests answered with an error status (model error,
  timeout, breaker open, shed or model unavailable on an endpoint *without* a fallback) divided by
  the window's requests. Needs `MIN_WINDOW_REQUESTS`. Default 0.05, for 60 s, critical.
- `fallback_rate`: threshold a share 0..1. Value: requests answered with the fallback prediction
  (any reason, an operator's switch included) divided by the window's requests. Needs
  `MIN_WINDOW_REQUESTS`. Default 0.10, for 60 s, warning.
- `outage`: no threshold. Breached when an endpoint served traffic earlier (in the previous
  evaluation's window or since the agent started) and has none in the current window, or when
  every request of its window failed or fell back (an operator's fallback switch excepted).
  Default for 60 s, critical.
- `feature_drift`: threshold optional. Without one, a feature breaches when the drift monitor says
  it drifted (its own per-method threshold, per endpoint: `EndpointConfig.drift`). With one, the
  feature's drift score (the primary method's: PSI, Jensen-Shannon, ...) is compared with it.
  One alert per endpoint listing the drifted features (`group_by = "subject"`: one per feature).
  Default warning, for 0 (a drift window is already a minute of data), kept firing until 5 minutes
  clear (`keep_firing_for`).
- `prediction_drift`: the same, for the model's output (the monitor's `__prediction__` feature).
- `label_drift`: the same, for the arrived labels (`__label__`).
- `data_quality`: threshold optional. Without one, a feature breaches when the monitor lists
  quality issues for it (missing rate rising or falling, out-of-range values, unseen categories, a
  reference too small to judge drift against). With one,
  the worst of its current missing rate, out-of-range share and unseen share is compared with it.
  Grouped per endpoint and held like `feature_drift`.
- `quality_drop`: threshold a relative drop 0..1 of the rule's `metric` (accuracy, auc, f1, mae,
  rmse; without one: auc for binary models, accuracy for multiclass, rmse for regression) in the
  latest labelled window against the model version's reference
  metric: (reference - current) / reference, or (current - reference) / reference for the error
  metrics mae and rmse. Needs `MIN_LABELLED` labelled predictions. Default 0.05, warning.
- `rollout_guard`: no threshold. Breached while an endpoint's latest rollout stands aborted by one of its
  guards or a failed analysis (agent/rollouts: traffic is already back on stable), for an hour or until
  the next rollout starts there. Raised when the rollout aborts, not at the next evaluation. Default for 0,
  critical.
- `job_failed`: no threshold. Breached for each job whose last attempt ended FAILED, OUT_OF_MEMORY, TIMEOUT
  or LOST in the last hour (retried attempts don't count: only a job that gave up). One alert per job
  (subject: the job id; label pipeline). Default for 0, warning.
- `job_duration`: threshold a factor k. Value: a running job's elapsed time over its pipeline's recent p95
  (the last 50 completed attempts; needs `MIN_DURATIONS`). Default 2.0, for 0, warning.
- `job_pending`: threshold in seconds. Value: how long a pending job has waited (held jobs and jobs waiting
  for a dependency are waiting by intent and not judged). Default 1800 s, for 0, warning.
- `quota_near_limit`: threshold optional, a share 0..1. Value: a pipeline's usage of one resource (the
  higher of allocated and measured) over its quota's limit; without a threshold the quota's own
  `near_limit` (default 0.9) judges. Subject `pipeline/resource`. Default for 300 s, warning.

Jobs' signals have no endpoint (`endpoints` in such a rule matches nothing); their pipeline is a label.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from agent.config import AlertKind, AlertRuleConfig
from agent.schemas import AlertRuleOut

# Rate and latency rules need this many requests in the window: one failed request out of two is
# not a 50 % error rate worth waking someone for (a dead endpoint is the `outage` rule's job).
MIN_WINDOW_REQUESTS = 10
# quality_drop needs this many labelled predictions in the window before a metric means anything.
MIN_LABELLED = 30

SERVING_KINDS: frozenset[str] = frozenset({"latency_p99", "error_rate", "fallback_rate", "outage"})
DRIFT_KINDS: frozenset[str] = frozenset({"feature_drift", "prediction_drift", "label_drift", "data_quality"})
MONITOR_KINDS: frozenset[str] = DRIFT_KINDS | {"quality_drop"}
ROLLOUT_KINDS: frozenset[str] = frozenset({"rollout_guard"})
JOB_KINDS: frozenset[str] = frozenset({"job_failed", "job_duration", "job_pending", "quota_near_limit"})
# Kinds whose breach is "value > threshold" when a rule gives a threshold.
THRESHOLD_KINDS: frozenset[str] = frozenset(
    {"latency_p99", "error_rate", "fallback_rate", "quality_drop", "job_duration", "job_pending", "quota_near_limit",
     *DRIFT_KINDS}
)  # fmt: skip
# job_duration needs this many completed attempts of the pipeline before its p95 means anything.
MIN_DURATIONS = 5
QUALITY_METRICS = ("accuracy", "auc", "f1", "mae", "rmse")
# Per-feature kinds grouped by default into one alert per endpoint (Alertmanager's group_by): a
# pipeline change drifts a dozen features at once, and that is one thing to look at, not a dozen.
GROUPED_KINDS: frozenset[str] = frozenset({"feature_drift", "data_quality"})
# Drift windows are a minute of data each: a feature that drifts in one window and not the next is
# flapping, not resolved. A firing drift/quality alert resolves after 5 clear minutes.
KEEP_FIRING_S: dict[str, float] = {kind: 300.0 for kind in DRIFT_KINDS}
LOWER_IS_BETTER = frozenset({"mae", "rmse"})


@dataclass
class Signal:
    """One measured thing an alert rule can judge: a value of one kind, for an endpoint and subject.

    `breached` is the source's own verdict (with `threshold` the one it used); a rule with its own
    threshold re-judges `value` against it. `subject` is e.g. the feature or metric; None for
    endpoint-wide kinds.
    """

    kind: AlertKind
    endpoint: str | None
    subject: str | None
    value: float | None
    threshold: float | None
    breached: bool
    summary: str
    labels: dict[str, str] = field(default_factory=dict)


def _rule(name: str, kind: str, threshold: float | None, for_s: float, severity: str, **kw) -> AlertRuleConfig:
    return AlertRuleConfig.model_validate(
        {"name": name, "kind": kind, "threshold": threshold, "for": for_s, "severity": severity, **kw}
    )


DEFAULT_RULES: list[AlertRuleConfig] = [
    _rule("feature_drift", "feature_drift", None, 0, "warning"),
    _rule("prediction_drift", "prediction_drift", None, 0, "warning"),
    _rule("label_drift", "label_drift", None, 0, "warning"),
    _rule("data_quality", "data_quality", None, 0, "warning"),
    _rule("latency_p99", "latency_p99", 250.0, 60, "warning"),
    _rule("error_rate", "error_rate", 0.05, 60, "critical"),
    _rule("fallback_rate", "fallback_rate", 0.10, 60, "warning"),
    _rule("outage", "outage", None, 60, "critical"),
    _rule("quality_drop", "quality_drop", 0.05, 0, "warning"),
    _rule("rollout_guard", "rollout_guard", None, 0, "critical"),
    _rule("job_failed", "job_failed", None, 0, "warning"),
    _rule("job_duration", "job_duration", 2.0, 0, "warning"),
    _rule("job_pending", "job_pending", 1800.0, 0, "warning"),
    _rule("quota_near_limit", "quota_near_limit", None, 300, "warning"),
]


def effective_rules(rules: list[AlertRuleConfig] | None) -> list[AlertRuleConfig]:
    """The configured rules; None (nothing configured) means the built-in defaults."""
    return list(DEFAULT_RULES) if rules is None else list(rules)


def breaches(value: float | None, threshold: float | None) -> bool:
    """`value > threshold`; an unknown (None/NaN) value never breaches."""
    if value is None or threshold is None or math.isnan(value):
        return False
    return value > threshold


def rule_out(rule: AlertRuleConfig) -> AlertRuleOut:
    return AlertRuleOut(
        name=rule.name,
        kind=rule.kind,
        severity=rule.severity,
        threshold=rule.threshold,
        for_s=rule.for_s,
        endpoints=list(rule.endpoints),
        group_by=group_by(rule),
        keep_firing_for_s=keep_firing_for(rule),
    )


def group_by(rule: AlertRuleConfig) -> str:
    """'endpoint' (one alert listing the subjects) or 'subject' (one alert each)."""
    if rule.group_by is not None:
        return rule.group_by
    return "endpoint" if rule.kind in GROUPED_KINDS else "subject"


def keep_firing_for(rule: AlertRuleConfig) -> float:
    """Seconds a firing alert's condition must stay clear before it resolves."""
    return rule.keep_firing_for if rule.keep_firing_for is not None else KEEP_FIRING_S.get(rule.kind, 0.0)
