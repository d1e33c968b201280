"""Model-quality metrics against direct definitions on generated data."""

from __future__ import annotations

import numpy as np
import pytest

from agent.monitoring.quality import auc, classification, regression


def _auc_pairs(scores, positive):
    pos, neg = scores[positive], scores[~positive]
    diff = pos[:, None] - neg[None, :]
    return ((diff > 0).sum() + 0.5 * (diff == 0).sum()) / (pos.size * neg.size)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_auc_matches_the_pairwise_definition_with_ties(seed):
    rng = np.random.default_rng(seed)
    positive = rng.random(700) < 0.3
    scores = np.round(rng.normal(positive * 0.8, 1.0), 1)  # rounding makes many ties
    assert auc(scores, positive) == pytest.approx(_auc_pairs(scores, positive), abs=1e-12)


def test_auc_is_undefined_with_one_class():
    assert auc(np.array([0.1, 0.9]), np.array([True, True])) is None


def test_classification_metrics():
    truth = np.array(["delayed", "on_time", "delayed", "on_time", "on_time"], dtype=object)
    pred = np.array(["delayed", "delayed", "on_time", "on_time", "on_time"], dtype=object)
    m = classification(np.array([0.9, 0.6, 0.2, 0.1, 0.3]), pred, truth, "delayed")
    assert m["accuracy"] == pytest.approx(3 / 5)
    assert m["f1"] == pytest.approx(2 * 1 / (2 * 1 + 1 + 1))  # tp 1, fp 1, fn 1
    assert m["positive_rate"] == pytest.approx(2 / 5)
    assert m["auc"] == pytest.approx(_auc_pairs(np.array([0.9, 0.6, 0.2, 0.1, 0.3]), truth == "delayed"))


def test_regression_metrics_skip_missing():
    m = regression(np.array([1.0, 2.0, np.nan, 4.0]), np.array([1.5, 2.0, 3.0, np.nan]))
    assert m["mae"] == pytest.approx(0.25) and m["rmse"] == pytest.approx(np.sqrt(0.125))
    assert regression(np.array([np.nan]), np.array([1.0])) == {"mae": None, "rmse": None}
