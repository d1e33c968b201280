"""Drift and data-quality verdicts, including the two failures of default drift tests that must be caught."""

from __future__ import annotations

import json
import math

import numpy as np
import polars as pl
import pytest
from scipy import stats

from agent.monitoring.drift import DriftThresholds, compare
from agent.monitoring.profile import fit_profile
from agent.monitoring.window import WindowHistogram


def data(n: int, seed: int, *, shift: float = 0.0, missing: float = 0.005, unseen: float = 0.0) -> pl.DataFrame:
    rng = np.random.default_rng(seed)
    out = {}
    for i in range(4):
        x = rng.normal(shift if i == 0 else 0.0, 1.0, n)
        if i == 1:
            x[rng.random(n) < missing] = np.nan
        out[f"x{i}"] = x
    out["counts"] = rng.poisson(3, n).astype(float)
    cat = rng.choice(["a", "b", "c", "d"], n, p=[0.4, 0.3, 0.2, 0.1]).astype(object)
    if unseen:
        # The seen categories keep their relative frequencies: only the unseen share is new.
        cat[rng.random(n) < unseen] = "brand_new"
    out["cat"] = pl.Series(cat, dtype=pl.String)
    out["score"] = rng.random(n)
    return pl.DataFrame(out)


NUMERIC = ["x0", "x1", "x2", "x3", "counts"]


@pytest.fixture(scope="module")
def profile():
    return fit_profile(data(200_000, 1), numeric=NUMERIC, categorical=["cat"], prediction="score")


@pytest.fixture(scope="module")
def reference(profile):
    return WindowHistogram.from_profile(profile)


def window(profile, frame, ranges=None):
    return WindowHistogram.empty(profile, ranges).update(frame)


def test_missing_rate_jump_is_a_quality_issue_the_scores_do_not_see(profile, reference):
    rep = compare(reference, window(profile, data(50_000, 2, missing=0.05)))
    f = rep.feature("x1")
    assert f.missing_rate_ref == pytest.approx(0.005, abs=0.001)
    assert f.missing_rate_cur == pytest.approx(0.05, abs=0.005)
    assert f.quality_issues == ["missing_rate"] and f.verdict == "quality"
    assert f.method == "wasserstein" and f.score < f.threshold and not f.drifted
    assert f.psi < 0.2
    assert rep.feature("x2").verdict == "ok"


def test_unseen_category_is_a_quality_issue_the_scores_do_not_see(profile, reference):
    rep = compare(reference, window(profile, data(50_000, 3, unseen=0.02)))
    f = rep.feature("cat")
    assert f.unseen_share == pytest.approx(0.02, abs=0.003)
    assert f.unseen_top == ["brand_new"]
    assert f.quality_issues == ["unseen"] and f.verdict == "quality"
    assert f.method == "jensenshannon" and f.js < 0.1 and not f.drifted
    assert f.chi2_pvalue is not None and f.psi < 0.2


def test_undrifted_million_rows_stay_quiet_and_half_sigma_shift_drifts(profile, reference):
    rep = compare(reference, window(profile, data(1_000_000, 4)))
    for f in rep.features:
        assert f.verdict == "ok", f
        if f.kind == "numeric":
            assert f.wasserstein_norm < 0.02 and f.psi < 0.01 and f.ks_stat < 0.01
        else:
            assert f.js < 0.01
    assert rep.drift_share == 0.0 and not rep.dataset_drift and rep.n_cur == 1_000_000

    rep = compare(reference, window(profile, data(1_000_000, 5, shift=0.5)))
    f = rep.feature("x0")
    assert f.verdict == "drift" and f.drifted
    assert f.wasserstein_norm == pytest.approx(0.5, abs=0.02) and f.psi > 0.2 and f.ks_pvalue < 1e-100
    assert rep.features[0].name == "x0"  # most severe first
    assert [g.name for g in rep.features if g.drifted] == ["x0"]
    assert rep.drift_share == pytest.approx(1 / 6) and not rep.dataset_drift


def test_dataset_drift_when_half_the_features_drift(profile, reference):
    f = data(20_000, 6)
    f = f.with_columns(pl.col("x1") + 1.0, pl.col("x2") * 3.0, pl.col("x3") - 0.4)
    rep = compare(reference, window(profile, f))
    assert sorted(g.name for g in rep.features if g.drifted) == ["x1", "x2", "x3"]
    assert rep.drift_share == pytest.approx(3 / 6) and rep.dataset_drift


def test_prediction_drift_is_reported_but_not_counted(profile, reference):
    f = data(20_000, 7).with_columns(pl.col("score") ** 3)
    rep = compare(reference, window(profile, f))
    s = rep.feature("score")
    assert s.role == "prediction" and s.drifted
    assert rep.drift_share == 0.0


def test_small_reference_uses_tests_matching_scipy():
    rng = np.random.default_rng(11)
    ref = {"v": rng.integers(0, 8, 800).astype(float), "c": rng.choice(["p", "q", "r"], 800)}
    cur = {"v": rng.integers(1, 9, 600).astype(float), "c": rng.choice(["p", "q", "r"], 600, p=[0.2, 0.3, 0.5])}
    p = fit_profile(ref, numeric=["v"], categorical=["c"])
    rep = compare(WindowHistogram.from_profile(p), window(p, cur))
    v, c = rep.feature("v"), rep.feature("c")
    assert v.method == "ks" and c.method == "chi2"
    want = stats.ks_2samp(ref["v"], cur["v"])  # exact p-value: both samples <= 10000
    assert math.isclose(v.ks_stat, want.statistic, rel_tol=1e-9)
    assert math.isclose(v.score, want.pvalue, rel_tol=1e-9) and v.drifted == (want.pvalue < 0.05)
    cats = ["p", "q", "r"]
    table = [[int(np.sum(ref["c"] == k)) for k in cats], [int(np.sum(cur["c"] == k)) for k in cats]]
    want = stats.chi2_contingency(table)
    assert math.isclose(c.chi2_stat, want.statistic, rel_tol=1e-9)
    assert math.isclose(c.score, want.pvalue, rel_tol=1e-9, abs_tol=1e-300) and c.drifted


def test_ks_pvalue_beside_wasserstein_is_asymptotic_unless_asked():
    rng = np.random.default_rng(16)
    ref, cur = rng.integers(0, 300, 3000).astype(float), rng.integers(5, 300, 2000).astype(float)
    p = fit_profile({"v": ref}, numeric=["v"], categorical=[])
    assert p.columns["v"].fine.mode == "exact"  # 300 distinct values: D is exact
    refh, h = WindowHistogram.from_profile(p), window(p, {"v": cur})
    f = compare(refh, h).feature("v")
    assert f.method == "wasserstein"
    assert math.isclose(f.ks_pvalue, stats.ks_2samp(ref, cur, method="asymp").pvalue, rel_tol=1e-9)
    g = compare(refh, h, DriftThresholds(ks_method="scipy")).feature("v")
    assert math.isclose(g.ks_pvalue, stats.ks_2samp(ref, cur).pvalue, rel_tol=1e-9)


def test_too_little_data_is_no_data(profile, reference):
    rep = compare(reference, window(profile, data(50, 8, shift=3.0)))
    assert {f.verdict for f in rep.features} == {"no data"}
    assert not any(f.drifted for f in rep.features)
    assert rep.drift_share is None and not rep.dataset_drift
    empty = compare(reference, WindowHistogram.empty(profile))
    assert {f.verdict for f in empty.features} == {"no data"}
    f = empty.feature("x0")
    assert f.psi is None and f.ks_pvalue is None and f.wasserstein_norm is None and f.missing_rate_cur is None
    json.dumps(empty.to_json(), allow_nan=False)


def test_a_column_gone_missing_is_quality_not_no_data(profile, reference):
    f = data(500, 9).with_columns(pl.lit(None, dtype=pl.Float64).alias("x2")).drop("cat")
    rep = compare(reference, window(profile, f))
    for name in ("x2", "cat"):
        g = rep.feature(name)
        assert g.n_cur == 0 and g.verdict == "quality" and g.quality_issues == ["missing_rate"]
        assert g.missing_rate_cur == 1.0


def test_out_of_range_against_reference_and_signature_ranges(profile, reference):
    f = data(20_000, 10).with_columns(pl.col("x3").clip(-2.0, 2.0))
    f = f.with_columns(pl.when(pl.int_range(pl.len()) < 400).then(99.0).otherwise(pl.col("x3")).alias("x3"))
    rep = compare(reference, window(profile, f))
    g = rep.feature("x3")
    assert g.out_of_range_share == pytest.approx(0.02) and "out_of_range" in g.quality_issues
    rep = compare(reference, window(profile, f, ranges={"x3": (None, 1.0)}))
    share = float((f["x3"] > 1.0).mean())
    assert rep.feature("x3").out_of_range_share == pytest.approx(share)


def test_constant_and_single_category_columns():
    p = fit_profile({"k": [5.0] * 2000, "one": ["z"] * 2000}, numeric=["k"], categorical=["one"])
    ref = WindowHistogram.from_profile(p)
    same = compare(ref, window(p, {"k": [5.0] * 300, "one": ["z"] * 300}))
    k = same.feature("k")
    assert k.verdict == "ok" and k.wasserstein_norm == 0.0 and k.ks_stat == 0.0 and k.ks_pvalue == 1.0
    one = same.feature("one")
    assert one.verdict == "ok" and one.js == 0.0 and (one.chi2_stat, one.chi2_pvalue) == (0.0, 1.0)
    moved = compare(ref, window(p, {"k": [5.5] * 300, "one": ["z"] * 300})).feature("k")
    assert moved.drifted and moved.verdict == "drift+quality" and moved.quality_issues == ["out_of_range"]


def test_thresholds_from_dict():
    t = DriftThresholds.from_dict({"wasserstein": 0.2, "numeric_method": "psi", "min_rows": 10})
    assert (t.wasserstein, t.numeric_method, t.min_rows, t.psi) == (0.2, "psi", 10, 0.2)
    assert DriftThresholds.from_dict({"psi": 0.3}, base=t).numeric_method == "psi"
    with pytest.raises(ValueError, match=r"^wasserstien: unknown"):
        DriftThresholds.from_dict({"wasserstien": 0.2})
    with pytest.raises(ValueError, match=r"^psi:"):
        DriftThresholds.from_dict({"psi": "high"})
    with pytest.raises(ValueError, match=r"^ks_pvalue:"):
        DriftThresholds.from_dict({"ks_pvalue": 5})
    with pytest.raises(ValueError, match=r"^numeric_method:"):
        DriftThresholds.from_dict({"numeric_method": "magic"})
    with pytest.raises(ValueError, match=r"^min_rows:"):
        DriftThresholds.from_dict({"min_rows": 1.5})
    assert DriftThresholds.from_dict(DriftThresholds().to_dict()) == DriftThresholds()


def test_thresholds_change_the_method(profile, reference):
    rep = compare(reference, window(profile, data(20_000, 12)), DriftThresholds(numeric_method="ks"))
    f = rep.feature("x0")
    assert f.method == "ks" and f.score == f.ks_pvalue and f.threshold == 0.05


def test_compare_refuses_other_profiles(profile):
    other = fit_profile(data(1000, 13), numeric=NUMERIC, categorical=["cat"])
    with pytest.raises(ValueError, match="profile"):
        compare(WindowHistogram.from_profile(other), WindowHistogram.empty(profile))


def test_window_against_window_and_json(profile):
    a = window(profile, data(30_000, 14))
    b = window(profile, data(30_000, 15, shift=0.4))
    rep = compare(a, b)
    assert rep.feature("x0").drifted and rep.n_ref == 30_000
    d = json.loads(json.dumps(rep.to_json(), allow_nan=False))
    assert d["features"][0]["name"] == "x0" and d["thresholds"]["wasserstein"] == 0.1
    assert set(d["features"][0]) >= {"psi", "ks_stat", "ks_pvalue", "wasserstein_norm", "verdict", "quality_issues"}
