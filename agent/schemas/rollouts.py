"""Rollouts on the wire: plans, steps, guards, gates, approvals, A/B results."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from agent.schemas.common import STRICT_INPUT, WholeInt, _Wire
from agent.schemas.registry import NAME_PATTERN, Lineage

RolloutStrategy = Literal["canary", "bluegreen", "shadow", "ab"]
RolloutState = Literal[
    "validating", "progressing", "paused", "awaiting_approval", "aborted", "promoted", "rolled_back", "rejected"
]
ROLLOUT_TERMINAL = ("aborted", "promoted", "rolled_back", "rejected")


class RolloutStep(_Wire):
    """One step of a plan (Argo Rollouts' model). Exactly one of the fields is set.

    - set_weight: the candidate's share of live traffic, percent 0..100 (canary, blue/green switch, A/B split);
    - shadow: the share (0..1) of live traffic also sent to the candidate, whose answers are never returned;
    - pause_s: wait this long (guards keep watching);
    - approval: wait until a principal with the approver role (not the rollout's author) approves this step;
    - analysis_s: hold for this long and pass only if every guard stayed green for the whole time.
    """

    model_config = STRICT_INPUT
    set_weight: float | None = Field(default=None, ge=0, le=100)
    shadow: float | None = Field(default=None, ge=0, le=1)
    pause_s: float | None = Field(default=None, gt=0, le=30 * 86400)
    approval: bool | None = None
    analysis_s: float | None = Field(default=None, gt=0, le=86400)


class MetricThreshold(_Wire):
    """MLflow MetricThreshold semantics: the candidate must reach `threshold` (absolute) and beat the stable
    version by at least `min_absolute_change` / `min_relative_change` (in the better direction)."""

    model_config = STRICT_INPUT
    metric: Literal["accuracy", "auc", "f1", "log_loss", "mae", "rmse"]
    threshold: float | None = None
    min_absolute_change: float | None = None
    min_relative_change: float | None = None
    greater_is_better: bool | None = None  # None: by metric (loss and errors are lower-is-better)


class RolloutGuards(_Wire):
    """Checked continuously on live traffic of the candidate (and stable); a breach held for `window_s` aborts."""

    model_config = STRICT_INPUT
    window_s: float = Field(default=30.0, gt=0, le=3600)
    min_requests: WholeInt = Field(default=20, ge=1)
    max_error_rate: float | None = Field(default=0.05, ge=0, le=1)
    max_fallback_rate: float | None = Field(default=0.10, ge=0, le=1)
    p99_slo_ms: float | None = Field(default=None, gt=0)
    max_p99_ratio_vs_stable: float | None = Field(default=2.0, gt=0)
    # Wasserstein / std of stable's scores; not applied to A/B arms unless set (agent/rollouts/plans.py)
    max_prediction_drift: float | None = Field(default=0.2, ge=0)
    # Share of mirrored rows with another label: always measured, aborts only when a limit is set.
    max_shadow_disagreement: float | None = Field(default=None, ge=0, le=1)
    max_feature_drift_share: float | None = Field(default=None, ge=0, le=1)


class RolloutCreate(_Wire):
    """`POST /api/v1/endpoints/{name}/rollouts`: start moving `endpoint` to `candidate_version` of its model."""

    model_config = STRICT_INPUT
    candidate_version: WholeInt = Field(ge=1)
    strategy: RolloutStrategy
    steps: list[RolloutStep] | None = None  # None: the strategy's default plan (docs/rollouts.md)
    gate: list[MetricThreshold] = Field(default_factory=list)
    validation_dataset: str | None = Field(default=None, pattern=NAME_PATTERN)  # a registered dataset
    guards: RolloutGuards = Field(default_factory=RolloutGuards)
    ab_caller_header: str = Field(default="x-caller-key", min_length=1, max_length=64)
    ab_min_samples: WholeInt = Field(default=200, ge=10)
    keep_stable_warm_s: float = Field(default=600.0, ge=0, le=7 * 86400)  # blue/green: instant rollback
    two_person_rule: bool = True
    reason: str = Field(default="", max_length=500)


class RolloutAction(_Wire):
    """Body of approve / reject / promote / pause / resume / abort / rollback."""

    model_config = STRICT_INPUT
    step_index: WholeInt | None = Field(default=None, ge=0)  # approve/reject: the step being approved (stale -> 409)
    reason: str = Field(default="", max_length=500)


class ApprovalOut(_Wire):
    step_index: int
    decision: Literal["approved", "rejected"]
    principal: str
    at: float
    reason: str = ""
    client: str | None = None


class GateMetricOut(_Wire):
    metric: str
    stable: float | None
    candidate: float | None
    threshold: float | None = None
    min_absolute_change: float | None = None
    min_relative_change: float | None = None
    passed: bool
    detail: str = ""


class GateResult(_Wire):
    dataset: str | None
    dataset_digest: str | None
    rows: int
    passed: bool
    metrics: list[GateMetricOut] = Field(default_factory=list)
    evaluated_at: float | None = None
    note: str = ""


class GuardMetric(_Wire):
    """One guard, stable beside candidate over the guard window."""

    name: str
    stable: float | None
    candidate: float | None
    limit: float | None
    breached: bool
    breached_since: float | None = None
    # Not judged (candidate None) until the candidate has `min_requests` requests in the window: "ok"
    # must never stand for "nothing measured". `requests`: what it has (live, or mirrored for a preview).
    judged: bool = True
    requests: int | None = None
    min_requests: int | None = None


class ABResult(_Wire):
    """A/B on the posted outcome (feedback label/value): lift of the candidate with a confidence interval."""

    outcome: str  # "positive_rate" (labels) or "mean_value" (values)
    stable_n: int
    candidate_n: int
    stable_mean: float | None
    candidate_mean: float | None
    lift: float | None  # candidate - stable (absolute)
    ci_low: float | None  # 95 % confidence interval of the lift
    ci_high: float | None
    p_value: float | None
    test: str  # "two-proportion z" or "welch t"
    status: Literal["not_enough_data", "no_difference", "candidate_better", "candidate_worse"]


class RolloutOut(_Wire):
    id: str
    endpoint: str
    model: str
    stable_version: int
    candidate_version: int
    strategy: RolloutStrategy
    state: RolloutState
    steps: list[RolloutStep]
    step_index: int
    step_started_at: float
    weight: float  # candidate's share of live traffic now, percent
    shadow: float  # share mirrored to the candidate now, 0..1
    candidate_loaded: bool
    awaiting_approval_for: int | None = None  # step index waiting for an approver
    approvals: list[ApprovalOut] = Field(default_factory=list)
    gate: GateResult | None = None
    guards: list[GuardMetric] = Field(default_factory=list)
    ab: ABResult | None = None
    candidate_lineage: Lineage | None = None
    started_by: str
    started_at: float
    updated_at: float
    ended_at: float | None = None
    end_reason: str = ""
    two_person_rule: bool = True
    host: str = ""
