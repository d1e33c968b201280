"""The validation gate: MLflow MetricThreshold semantics, metrics on a fixed dataset, refusals that name the part."""

from __future__ import annotations

import math

import numpy as np
import polars as pl
import pytest
from scipy import stats

from agent.rollouts.gate import GateError, check_thresholds, judge, log_loss, run_gate
from agent.schemas import DatasetInfo, MetricThreshold, OutputSpec
from tests.rollouts.fakes import FLIGHTS, version


def th(metric: str, **kw) -> MetricThreshold:
    return MetricThreshold(metric=metric, **kw)


@pytest.mark.parametrize(
    ("t", "stable", "cand", "passed"),
    [
        # threshold: candidate >= threshold (higher is better) / <= threshold (lower is better)
        (th("auc", threshold=0.8), 0.1, 0.8, True),
        (th("auc", threshold=0.8), 0.9, 0.79, False),
        (th("log_loss", threshold=0.5), 9.0, 0.5, True),
        (th("log_loss", threshold=0.5), 0.1, 0.51, False),
        # min_absolute_change: candidate >= stable + change / <= stable - change
        (th("accuracy", min_absolute_change=0.01), 0.80, 0.81, True),
        (th("accuracy", min_absolute_change=0.01), 0.80, 0.8099, False),
        (th("rmse", min_absolute_change=0.5), 10.0, 9.5, True),
        (th("rmse", min_absolute_change=0.5), 10.0, 9.6, False),
        # min_relative_change: candidate >= stable * (1 + change) / <= stable * (1 - change)
        (th("f1", min_relative_change=0.1), 0.5, 0.55, True),
        (th("f1", min_relative_change=0.1), 0.5, 0.549, False),
        (th("mae", min_relative_change=0.1), 2.0, 1.8, True),
        (th("mae", min_relative_change=0.1), 2.0, 1.81, False),
        # a stable value of 0: strictly better is enough
        (th("auc", min_relative_change=0.5), 0.0, 1e-9, True),
        (th("auc", min_relative_change=0.5), 0.0, 0.0, False),
        (th("mae", min_relative_change=0.5), 0.0, 0.0, False),
        # greater_is_better given explicitly wins over the metric's default
        (th("mae", threshold=3.0, greater_is_better=True), 0.0, 3.5, True),
        # all at once: every one must hold
        (th("auc", threshold=0.7, min_absolute_change=0.02, min_relative_change=0.01), 0.75, 0.77, True),
        (th("auc", threshold=0.7, min_absolute_change=0.02, min_relative_change=0.05), 0.75, 0.77, False),
        # missing values fail
        (th("auc", threshold=0.5), 0.9, None, False),
        (th("auc", threshold=0.5), 0.9, math.nan, False),
        (th("auc", min_absolute_change=0.1), None, 0.9, False),
        (th("auc", threshold=0.5), None, 0.9, True),  # no comparison asked: stable's value is not needed
    ],
)
def test_metric_threshold_semantics(t, stable, cand, passed):
    out = judge(t, stable, cand)
    assert out.passed is passed, out.detail
    assert (out.stable, out.threshold, out.min_absolute_change) == (stable, t.threshold, t.min_absolute_change)


def test_infinite_thresholds_are_refused_by_the_wire_model():
    with pytest.raises(ValueError, match="finite number"):
        th("auc", threshold=math.inf)


@pytest.mark.parametrize(
    ("t", "field"),
    [
        (th("auc"), "gate[0]"),
        (th("auc", min_absolute_change=-0.1), "gate[0].min_absolute_change"),
        (th("auc", min_relative_change=1.5), "gate[0].min_relative_change"),
        # The wire model refuses Infinity already (every request model does); the gate still checks.
        (MetricThreshold.model_construct(metric="auc", threshold=math.inf), "gate[0].threshold"),
    ],
)
def test_thresholds_that_mean_nothing_are_refused(t, field):
    with pytest.raises(GateError) as ei:
        check_thresholds([t])
    assert ei.value.field == field


def _frame(n: int = 400) -> pl.DataFrame:
    feats = [f.name for f in version(1).signature.features]
    return pl.read_parquet(FLIGHTS / "reference.parquet").head(n).select([*feats, pl.col("delayed").alias("label")])


def _eval(scores: dict[int, np.ndarray], threshold: float = 0.22):
    def evaluate(mv, records):
        s = scores[mv.version][: len(records)]
        return s, ["delayed" if x >= threshold else "on_time" for x in s]

    return evaluate


DS = DatasetInfo(name="val", version=1, digest="ab" * 32, rows=400, columns=[], size_bytes=1, created_at=0,
                 created_by="ci")  # fmt: skip


def test_binary_metrics_match_their_definitions():
    frame = _frame()
    y = frame["label"].to_numpy().astype(bool)
    rng = np.random.default_rng(3)
    s1 = np.clip(y * 0.3 + rng.random(y.size) * 0.7, 0.001, 0.999)
    s2 = np.clip(y * 0.5 + rng.random(y.size) * 0.5, 0.001, 0.999)
    gate = [th("accuracy", threshold=0.0), th("auc", threshold=0.0), th("f1", threshold=0.0),
            th("log_loss", threshold=100.0)]  # fmt: skip
    res = run_gate(_eval({1: s1, 2: s2}), version(1), version(2), gate, DS, frame, 5.0)
    assert res.passed and res.rows == 400 and res.dataset == "val:1" and res.dataset_digest == DS.digest
    got = {m.metric: m.candidate for m in res.metrics}
    pred = s2 >= 0.22
    tp, fp, fn = (pred & y).sum(), (pred & ~y).sum(), (~pred & y).sum()
    u = stats.mannwhitneyu(s2[y], s2[~y]).statistic
    ll = -np.mean(y * np.log(s2) + (~y) * np.log(1 - s2))
    assert got["accuracy"] == pytest.approx(np.mean(pred == y), abs=1e-12)
    assert got["f1"] == pytest.approx(2 * tp / (2 * tp + fp + fn), abs=1e-12)
    assert got["auc"] == pytest.approx(u / (y.sum() * (~y).sum()), abs=1e-12)
    assert got["log_loss"] == pytest.approx(ll, abs=1e-12)
    assert {m.metric: m.stable for m in res.metrics}["auc"] < got["auc"]


def test_labels_may_be_booleans_integers_or_class_names():
    frame = _frame()
    s = np.linspace(0.01, 0.99, frame.height)
    gate = [th("accuracy", threshold=0.0), th("auc", threshold=0.0)]
    ev = _eval({1: s, 2: s})
    results = []
    for label in (pl.col("label"), pl.col("label").cast(pl.Int64),
                  pl.when(pl.col("label")).then(pl.lit("delayed")).otherwise(pl.lit("on_time"))):  # fmt: skip
        f = frame.with_columns(label.alias("label"))
        results.append([(m.metric, m.candidate) for m in run_gate(ev, version(1), version(2), gate, DS, f, 0).metrics])
    assert results[0] == results[1] == results[2]


def test_regression_metrics_and_the_value_column():
    reg = version(1).model_copy(update={"signature": version(1).signature.model_copy(
        update={"output": OutputSpec(kind="regression")})})  # fmt: skip
    reg2 = reg.model_copy(update={"version": 2})
    frame = _frame(100).drop("label").with_columns(pl.Series("value", np.arange(100, dtype=float)))
    truth = np.arange(100, dtype=float)
    ev = _eval({1: truth + 2.0, 2: truth + np.where(np.arange(100) % 2, 1.0, -1.0)})
    res = run_gate(ev, reg, reg2, [th("mae", min_relative_change=0.4), th("rmse", threshold=1.0)], DS, frame, 0)
    by = {m.metric: m for m in res.metrics}
    assert (by["mae"].stable, by["mae"].candidate) == (2.0, 1.0) and by["mae"].passed
    assert by["rmse"].candidate == 1.0 and by["rmse"].passed and res.passed
    with pytest.raises(GateError, match="can't be measured on a regression model"):
        run_gate(ev, reg, reg2, [th("auc", threshold=0.5)], DS, frame, 0)


def test_datasets_that_do_not_fit_are_refused():
    frame = _frame()
    ev = _eval({1: np.zeros(400), 2: np.zeros(400)})
    with pytest.raises(GateError) as ei:
        run_gate(ev, version(1), version(2), [th("auc", threshold=0.5)], DS, frame.drop("distance"), 0)
    assert ei.value.field == "validation_dataset" and "distance" in str(ei.value)
    with pytest.raises(GateError, match="'label' column"):
        run_gate(ev, version(1), version(2), [th("auc", threshold=0.5)], DS, frame.drop("label"), 0)
    res = run_gate(ev, version(1), version(2), [], None, None, 7.0)
    assert res.passed and res.note == "no gate" and res.evaluated_at == 7.0


def test_log_loss_clips_certain_mistakes():
    assert log_loss(np.array([1.0]), np.array([False])) == pytest.approx(-math.log(1e-15), rel=1e-3)  # finite
    assert log_loss(np.array([]), np.array([], dtype=bool)) is None
