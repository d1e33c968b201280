"""Model quality from labels that arrived late: accuracy, AUC, F1 for classifiers, MAE and RMSE for regressors.

Pure numpy over arrays already joined (prediction score/label beside the true label or value), so the
monitor service and its tests share one implementation.
"""

from __future__ import annotations

import numpy as np


def auc(scores: np.ndarray, positive: np.ndarray) -> float | None:
    """Area under the ROC curve (Mann-Whitney U with average ranks for ties); None with one class only."""
    scores = np.asarray(scores, dtype=np.float64)
    positive = np.asarray(positive, dtype=bool)
    n_pos = int(positive.sum())
    n_neg = positive.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return None
    order = np.argsort(scores, kind="mergesort")
    s = scores[order]
    ranks = np.empty(s.size, dtype=np.float64)
    # Average rank within each run of equal scores, so ties count one half as the U statistic requires.
    starts = np.flatnonzero(np.r_[True, s[1:] != s[:-1]])
    ends = np.r_[starts[1:], s.size]
    avg = (starts + ends + 1) / 2.0
    ranks[order] = np.repeat(avg, ends - starts)
    u = ranks[positive].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def classification(
    scores: np.ndarray | None, predicted: np.ndarray, truth: np.ndarray, positive_label: str | None
) -> dict[str, float | None]:
    """accuracy, f1 (of `positive_label`), auc (from `scores`, binary only) and the positive rate of the truth."""
    predicted = np.asarray(predicted, dtype=object)
    truth = np.asarray(truth, dtype=object)
    out: dict[str, float | None] = {"accuracy": None, "f1": None, "auc": None, "positive_rate": None}
    if truth.size == 0:
        return out
    out["accuracy"] = float(np.mean(predicted == truth))
    if positive_label is not None:
        is_pos = truth == positive_label
        pred_pos = predicted == positive_label
        tp = int(np.sum(is_pos & pred_pos))
        fp = int(np.sum(~is_pos & pred_pos))
        fn = int(np.sum(is_pos & ~pred_pos))
        out["f1"] = 2 * tp / (2 * tp + fp + fn) if (2 * tp + fp + fn) else None
        out["positive_rate"] = float(is_pos.mean())
        if scores is not None:
            ok = ~np.isnan(np.asarray(scores, dtype=np.float64))
            out["auc"] = auc(np.asarray(scores, dtype=np.float64)[ok], is_pos[ok])
    return out


def regression(predicted: np.ndarray, truth: np.ndarray) -> dict[str, float | None]:
    """mae and rmse over rows where both are present."""
    p = np.asarray(predicted, dtype=np.float64)
    t = np.asarray(truth, dtype=np.float64)
    ok = ~(np.isnan(p) | np.isnan(t))
    if not ok.any():
        return {"mae": None, "rmse": None}
    err = p[ok] - t[ok]
    return {"mae": float(np.abs(err).mean()), "rmse": float(np.sqrt((err**2).mean()))}
