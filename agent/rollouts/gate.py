"""The validation gate: stable and candidate on one fixed, registered dataset, before any traffic moves.

The dataset (agent/registry/datasets.py; its digest is recorded with the result) holds the signature's
feature columns and the truth: `label` for classifiers (0/1, booleans or class names; for a binary model
1/true is the positive class, the output's second label) or `value` for regressors. Both versions score
every row; the metrics come from agent/monitoring/quality.py (accuracy, AUC, F1, MAE, RMSE) and `log_loss`
(binary: from the positive-class score, clipped to [1e-15, 1 - 1e-15]).

Each `MetricThreshold` is judged as MLflow's: with `greater_is_better` (default by metric: accuracy, auc
and f1 higher, log_loss, mae and rmse lower),

- `threshold`: candidate >= threshold (lower-is-better: <=);
- `min_absolute_change`: candidate >= stable + change (lower-is-better: candidate <= stable - change);
- `min_relative_change`: candidate >= stable * (1 + change) (lower-is-better: <= stable * (1 - change)); with
  a stable value of 0 it falls back to "strictly better": candidate >= stable + 1e-10 (<= stable - 1e-10).

A metric the candidate has no value for fails; so does a change threshold when stable has none. The gate
passes when every threshold passes. No thresholds: the gate passes with the note "no gate".
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from agent.schemas import DatasetInfo, GateMetricOut, GateResult, MetricThreshold, ModelVersion

if TYPE_CHECKING:
    import numpy as np

GREATER_IS_BETTER = {"accuracy": True, "auc": True, "f1": True, "log_loss": False, "mae": False, "rmse": False}
CLASSIFIER_METRICS = ("accuracy", "auc", "f1", "log_loss")
REGRESSION_METRICS = ("mae", "rmse")
LOG_LOSS_EPS = 1e-15
ZERO_BASELINE_EPS = 1e-10

Evaluate = Callable[[ModelVersion, list[dict]], "tuple[np.ndarray, list[str | None]]"]


class GateError(ValueError):
    """The gate can't be run as asked (a bad threshold, a dataset that doesn't fit); `field` names the part."""

    def __init__(self, message: str, field: str) -> None:
        super().__init__(message)
        self.field = field


def greater_is_better(t: MetricThreshold) -> bool:
    return GREATER_IS_BETTER[t.metric] if t.greater_is_better is None else t.greater_is_better


def check_thresholds(thresholds: Sequence[MetricThreshold]) -> None:
    """Refuse thresholds that can never mean anything (MLflow refuses them too). Raises GateError."""
    for i, t in enumerate(thresholds):
        where = f"gate[{i}]"
        if t.threshold is None and t.min_absolute_change is None and t.min_relative_change is None:
            raise GateError(f"{where}: give threshold, min_absolute_change or min_relative_change", where)
        for name in ("threshold", "min_absolute_change", "min_relative_change"):
            v = getattr(t, name)
            if v is not None and not math.isfinite(v):
                raise GateError(f"{where}.{name} must be a finite number", f"{where}.{name}")
        if t.min_absolute_change is not None and t.min_absolute_change <= 0:
            raise GateError(f"{where}.min_absolute_change must be positive", f"{where}.min_absolute_change")
        if t.min_relative_change is not None and not 0 < t.min_relative_change <= 1:
            raise GateError(f"{where}.min_relative_change must be in (0, 1]", f"{where}.min_relative_change")


def judge(t: MetricThreshold, stable: float | None, candidate: float | None) -> GateMetricOut:
    """One threshold against the two versions' values (MLflow MetricThreshold semantics; module docstring)."""
    gib = greater_is_better(t)

    def better_or_equal(a: float, b: float) -> bool:
        return a >= b if gib else a <= b

    out = GateMetricOut(
        metric=t.metric, stable=stable, candidate=candidate, threshold=t.threshold,
        min_absolute_change=t.min_absolute_change, min_relative_change=t.min_relative_change, passed=True,
    )  # fmt: skip
    failed: list[str] = []
    direction = ">=" if gib else "<="
    if candidate is None or math.isnan(candidate):
        out.passed = False
        out.detail = f"the candidate has no {t.metric} on this dataset"
        return out
    if t.threshold is not None and not better_or_equal(candidate, t.threshold):
        failed.append(f"{candidate:.6g} is not {direction} threshold {t.threshold:.6g}")
    if t.min_absolute_change is not None or t.min_relative_change is not None:
        if stable is None or math.isnan(stable):
            out.passed = False
            out.detail = f"the stable version has no {t.metric} on this dataset to compare with"
            return out
        sign = 1.0 if gib else -1.0
        if t.min_absolute_change is not None:
            bound = stable + sign * t.min_absolute_change
            if not better_or_equal(candidate, bound):
                failed.append(
                    f"{candidate:.6g} is not {direction} stable {stable:.6g} {'+' if gib else '-'} "
                    f"{t.min_absolute_change:.6g} = {bound:.6g}"
                )
        if t.min_relative_change is not None:
            if stable == 0:
                bound = stable + sign * ZERO_BASELINE_EPS
                what = "stable is 0: the candidate must be strictly better"
            else:
                bound = stable * (1 + sign * t.min_relative_change)
                what = f"stable {stable:.6g} x (1 {'+' if gib else '-'} {t.min_relative_change:.6g})"
            if not better_or_equal(candidate, bound):
                failed.append(f"{candidate:.6g} is not {direction} {what} = {bound:.6g}")
    out.passed = not failed
    out.detail = "; ".join(failed) if failed else "passed"
    return out


# --------------------------------------------------------------------------- metrics


def log_loss(scores: np.ndarray, positive: np.ndarray) -> float | None:
    """Binary cross-entropy (natural log) of positive-class probabilities; None when empty."""
    import numpy as np

    p = np.clip(np.asarray(scores, dtype=np.float64), LOG_LOSS_EPS, 1 - LOG_LOSS_EPS)
    y = np.asarray(positive, dtype=bool)
    if p.size == 0:
        return None
    return float(-np.mean(np.where(y, np.log(p), np.log1p(-p))))


def truth_labels(values: Sequence[Any], mv: ModelVersion) -> list[str | None]:
    """The dataset's `label` column as the model's class names (0/1 and booleans for binary; indices too)."""
    out_spec = mv.signature.output
    names = out_spec.labels or (["0", "1"] if out_spec.kind == "binary" else None)
    res: list[str | None] = []
    for v in values:
        if v is None:
            res.append(None)
        elif isinstance(v, bool) and out_spec.kind == "binary":
            res.append(names[1] if v else names[0])  # type: ignore[index]
        elif isinstance(v, int | float) and not isinstance(v, bool) and names is not None:
            i = int(v)
            if i != v or not 0 <= i < len(names):
                raise GateError(f"label {v!r} is not a class index of {mv.name}:{mv.version}", "validation_dataset")
            res.append(names[i])
        elif isinstance(v, str) and out_spec.kind == "binary" and v.lower() in ("true", "false") and names:
            res.append(names[1] if v.lower() == "true" else names[0])
        else:
            res.append(str(v))
    return res


def metrics_for(
    mv: ModelVersion, scores: np.ndarray, predicted: list[str | None], truth: Sequence[Any], wanted: set[str]
) -> dict[str, float | None]:
    """The wanted metrics of one version's answers against the dataset's truth column."""
    import numpy as np

    from agent.monitoring import quality

    kind = mv.signature.output.kind
    out: dict[str, float | None] = dict.fromkeys(wanted)
    if kind == "regression":
        reg = quality.regression(np.asarray(scores, dtype=np.float64), np.asarray(truth, dtype=np.float64))
        for m in REGRESSION_METRICS:
            if m in wanted:
                out[m] = reg[m]
        return out
    labels = truth_labels(truth, mv)
    keep = np.array([t is not None for t in labels], dtype=bool)
    tr = np.asarray(labels, dtype=object)[keep]
    pr = np.asarray(predicted, dtype=object)[keep]
    sc = np.asarray(scores, dtype=np.float64)[keep]
    positive = None
    if kind == "binary":
        positive = (mv.signature.output.labels or ["0", "1"])[1]
    cls = quality.classification(sc if kind == "binary" else None, pr, tr, positive)
    for m in ("accuracy", "auc", "f1"):
        if m in wanted:
            out[m] = cls[m]
    if "log_loss" in wanted and kind == "binary":
        out["log_loss"] = log_loss(sc, tr == positive)
    return out


def _check_dataset(frame: Any, mv: ModelVersion, metrics: set[str]) -> str:
    """The truth column this gate needs, after checking the dataset has it and every feature column."""
    missing = [f.name for f in mv.signature.features if f.name not in frame.columns]
    if missing:
        raise GateError(
            f"the dataset lacks feature column(s) of {mv.name}:{mv.version}: {', '.join(missing)}",
            "validation_dataset",
        )
    kind = mv.signature.output.kind
    need = "value" if kind == "regression" else "label"
    wrong = sorted(metrics & set(CLASSIFIER_METRICS if kind == "regression" else REGRESSION_METRICS))
    if wrong:
        raise GateError(f"{', '.join(wrong)} can't be measured on a {kind} model", "gate")
    if "log_loss" in metrics and kind != "binary":
        raise GateError("log_loss is measured on binary models only", "gate")
    if need not in frame.columns:
        raise GateError(f"the dataset needs a {need!r} column for a {kind} model", "validation_dataset")
    return need


def run_gate(
    evaluate: Evaluate,
    stable: ModelVersion,
    candidate: ModelVersion,
    thresholds: Sequence[MetricThreshold],
    dataset: DatasetInfo | None,
    frame: Any,
    now: float,
) -> GateResult:
    """Score both versions on `frame` (a polars DataFrame of `dataset`) and judge every threshold.

    `evaluate(mv, records)` returns (scores, labels) of a version on rows (ServingService.evaluate_blocking).
    Raises GateError when the dataset doesn't fit the models or a metric doesn't fit the model kind.
    """
    if not thresholds:
        return GateResult(
            dataset=dataset.name if dataset else None, dataset_digest=dataset.digest if dataset else None,
            rows=0, passed=True, evaluated_at=now, note="no gate",
        )  # fmt: skip
    if dataset is None or frame is None:
        raise GateError("gate thresholds need a validation_dataset", "validation_dataset")
    check_thresholds(thresholds)
    wanted = {t.metric for t in thresholds}
    if stable.signature.output.kind != candidate.signature.output.kind:
        raise GateError("stable and candidate predict different kinds of output", "candidate_version")
    need = _check_dataset(frame, candidate, wanted)
    _check_dataset(frame, stable, wanted)
    truth = frame[need].to_list()
    values: dict[int, dict[str, float | None]] = {}
    for mv in (stable, candidate):
        names = [f.name for f in mv.signature.features]
        records = frame.select(names).to_dicts()
        try:
            scores, predicted = evaluate(mv, records)
        except GateError:
            raise
        except Exception as e:
            raise GateError(f"{mv.name}:{mv.version} could not score the dataset: {e}", "validation_dataset") from e
        values[mv.version] = metrics_for(mv, scores, predicted, truth, wanted)
    st, ca = values[stable.version], values[candidate.version]
    results = [judge(t, st.get(t.metric), ca.get(t.metric)) for t in thresholds]
    failed = [r.metric for r in results if not r.passed]
    return GateResult(
        dataset=f"{dataset.name}:{dataset.version}", dataset_digest=dataset.digest, rows=frame.height,
        passed=not failed, metrics=results, evaluated_at=now,
        note=f"failed: {', '.join(failed)}" if failed else "passed",
    )  # fmt: skip
