"""Monitoring on the wire: drift reports and history, histograms, feedback labels, quality windows."""

from __future__ import annotations

from typing import Literal

from pydantic import ConfigDict, Field

from agent.schemas.common import MAX_UNIX_S, STRICT_INPUT, WholeInt, _Wire

DriftVerdict = Literal["ok", "drift", "quality", "drift+quality", "no data"]
DriftBaseline = Literal["reference", "previous"]


class FeatureDriftOut(_Wire):
    """One feature (or `__prediction__` / `__label__`) of one window against a baseline.

    Effect sizes (psi, wasserstein_norm, js, ks_stat) sit beside p-values: at a million rows every
    p-value is tiny. `score` is the primary method's value, compared with `threshold`.
    """

    name: str
    kind: Literal["numeric", "categorical"]
    n_ref: int
    n_cur: int
    method: str
    score: float | None
    threshold: float | None
    drifted: bool
    verdict: DriftVerdict
    psi: float | None = None
    ks_stat: float | None = None
    ks_pvalue: float | None = None
    wasserstein_norm: float | None = None
    js: float | None = None
    chi2_stat: float | None = None
    chi2_pvalue: float | None = None
    missing_rate_ref: float | None = None
    missing_rate_cur: float | None = None
    out_of_range_share: float | None = None
    unseen_share: float | None = None
    unseen_top: list[str] = Field(default_factory=list)
    # Requests refused (422) for this feature's value in the window: wrong type, corrupt, missing under "reject".
    # Counted in the agent's memory: absent (None) for windows from before a restart.
    rejected_requests: int | None = None
    quality_issues: list[str] = Field(default_factory=list)
    # Numeric: the bounds `out_of_range_share` was counted against (None: open) and where they came from:
    # "signature" (its min/max), "reference" (the profile's observed min/max) or "signature+reference".
    range_min: float | None = None
    range_max: float | None = None
    range_source: str | None = None


class DriftReportOut(_Wire):
    """`GET /api/v1/endpoints/{name}/drift`: one window (or a merged range of windows) vs a baseline."""

    endpoint: str
    model: str
    version: int
    baseline: DriftBaseline
    window_start: float | None
    window_end: float | None
    n_ref: int
    n_cur: int
    drift_share: float  # drifted / judged features; 0 when none was judged (then features_judged is 0)
    features_judged: int | None = None  # features with enough rows on both sides (None: an older agent)
    features_drifted: int | None = None  # ... of which drifted
    dataset_drift: bool
    features: list[FeatureDriftOut]
    computed_at: float
    note: str = ""  # e.g. "no reference profile for this version"


class DriftPoint(_Wire):
    window_end: float
    score: float | None
    drifted: bool
    verdict: DriftVerdict


class DriftHistory(_Wire):
    """`GET /api/v1/endpoints/{name}/drift/history`: per feature, its score per window (sparklines)."""

    endpoint: str
    baseline: DriftBaseline
    features: dict[str, list[DriftPoint]]


class HistogramOut(_Wire):
    """Reference vs current distribution of one feature over the profile's frozen bins (for plotting).

    Numeric: `bins` are labels of the coarse bins ("< 7", "[7, 8)", ..., ">= 19"); categorical: the
    categories, then "(unseen)" and "(missing)". Counts are shares of the rows (0..1).
    """

    endpoint: str
    feature: str
    kind: Literal["numeric", "categorical"]
    bins: list[str]
    reference: list[float]
    current: list[float]
    window_start: float | None
    window_end: float | None


class FeedbackItem(_Wire):
    # A label or a value (or both): an item with neither says nothing.
    model_config = ConfigDict(
        **STRICT_INPUT,
        json_schema_extra={
            "anyOf": [
                {"required": ["label"], "properties": {"label": {"type": "string"}}},
                {"required": ["value"], "properties": {"value": {"type": "number"}}},
            ]
        },
    )
    request_id: str = Field(min_length=1, max_length=128)
    row_idx: WholeInt = Field(default=0, ge=0, le=1_000_000)  # a row of one predict request (max_rows at most)
    label: str | None = Field(default=None, max_length=256)  # classification: the true class
    value: float | None = None  # regression target or a business outcome (e.g. revenue)
    ts: float | None = Field(default=None, ge=0, le=MAX_UNIX_S)  # when the outcome happened; default: received


class FeedbackBatch(_Wire):
    """`POST /api/v1/endpoints/{name}/feedback`: labels arriving late and in any order."""

    model_config = STRICT_INPUT
    items: list[FeedbackItem] = Field(min_length=1, max_length=100_000)


class FeedbackAccepted(_Wire):
    accepted: int
    unknown_request_ids: int  # not (yet) in the prediction log: kept, joined when they arrive


class QualityWindow(_Wire):
    """Model quality of one version over one window of predictions whose labels have arrived."""

    model: str
    version: int
    window_start: float
    window_end: float
    labelled: int
    predictions: int
    accuracy: float | None = None
    auc: float | None = None
    f1: float | None = None
    mae: float | None = None
    rmse: float | None = None
    positive_rate: float | None = None  # labels: share of the positive class (label drift)


class QualityReport(_Wire):
    """`GET /api/v1/endpoints/{name}/quality`: quality per version and window; the reference's metrics."""

    endpoint: str
    kind: Literal["binary", "multiclass", "regression"]
    windows: list[QualityWindow]
    reference_metrics: dict[str, float] = Field(default_factory=dict)
