"""A/B statistics against scipy to 1e-9, and the outcomes query over a real store."""

from __future__ import annotations

import duckdb
import numpy as np
import pytest
from scipy import stats

from agent.rollouts.abtest import ab_result, outcomes, two_proportion, welch
from agent.store.migrations import migrate


@pytest.mark.parametrize("seed", range(6))
def test_welch_matches_scipy(seed):
    rng = np.random.default_rng(seed)
    n_s, n_c = rng.integers(5, 400, size=2)
    stable = rng.normal(10, rng.uniform(0.5, 5), n_s)
    cand = rng.normal(10 + rng.uniform(-1, 1), rng.uniform(0.5, 5), n_c)
    lift, lo, hi, p = welch(stable, cand)
    ref = stats.ttest_ind(cand, stable, equal_var=False)
    ci = ref.confidence_interval(0.95)
    assert lift == pytest.approx(cand.mean() - stable.mean(), abs=1e-9)
    assert p == pytest.approx(ref.pvalue, abs=1e-9)
    assert (lo, hi) == pytest.approx((ci.low, ci.high), abs=1e-9)


@pytest.mark.parametrize(("x_s", "n_s", "x_c", "n_c"), [(30, 200, 45, 210), (500, 1000, 480, 1000), (0, 50, 3, 60),
                                                        (7, 7, 5, 9), (120, 4000, 160, 3900)])  # fmt: skip
def test_two_proportion_z_matches_its_definition_and_the_chi_square_test(x_s, n_s, x_c, n_c):
    lift, lo, hi, p = two_proportion(x_s, n_s, x_c, n_c)
    p_s, p_c = x_s / n_s, x_c / n_c
    pooled = (x_s + x_c) / (n_s + n_c)
    z = (p_c - p_s) / np.sqrt(pooled * (1 - pooled) * (1 / n_s + 1 / n_c))
    half = stats.norm.ppf(0.975) * np.sqrt(p_s * (1 - p_s) / n_s + p_c * (1 - p_c) / n_c)
    assert lift == pytest.approx(p_c - p_s, abs=1e-12)
    assert p == pytest.approx(2 * stats.norm.sf(abs(z)), abs=1e-9)
    # z squared is Pearson's chi-square of the 2x2 table without continuity correction: the same p-value.
    chi2 = stats.chi2_contingency([[x_s, n_s - x_s], [x_c, n_c - x_c]], correction=False)
    assert p == pytest.approx(chi2.pvalue, abs=1e-9)
    assert (lo, hi) == pytest.approx((lift - half, lift + half), abs=1e-12)


def test_verdicts():
    assert two_proportion(10, 10, 20, 20)[3] == 1.0  # all successes on both sides: no evidence
    few = ab_result("labels", [1.0] * 20, [0.0] * 20, min_samples=50)
    assert few.status == "not_enough_data" and few.lift is None and few.p_value is None
    assert few.stable_mean == 1.0 and few.candidate_mean == 0.0 and few.outcome == "positive_rate"
    worse = ab_result("labels", [1.0] * 30 + [0.0] * 70, [1.0] * 10 + [0.0] * 90, min_samples=50)
    assert worse.status == "candidate_worse" and worse.lift == pytest.approx(-0.2) and worse.ci_high < 0
    same = ab_result("labels", [1.0] * 30 + [0.0] * 70, [1.0] * 31 + [0.0] * 69, min_samples=50)
    assert same.status == "no_difference" and same.ci_low < 0 < same.ci_high
    rng = np.random.default_rng(0)
    better = ab_result("values", list(rng.normal(1, 1, 300)), list(rng.normal(1.5, 1, 300)), min_samples=50)
    assert better.status == "candidate_better" and better.test == "welch t" and better.outcome == "mean_value"


def test_outcomes_join_the_answering_version_and_the_latest_label():
    con = duckdb.connect(":memory:")
    migrate(con)
    since = 1_000_000.0

    def pred(rid: str, v: int, ts: float, status: str = "ok") -> None:
        con.execute(
            "INSERT INTO predictions VALUES (make_timestamp(CAST(? * 1e6 AS BIGINT)), ?, 'delays', 'flights', ?, 0, "
            "NULL, NULL, 0.5, 'x', 1.0, ?, NULL, 'realtime')",
            [ts, rid, v, status],
        )

    def fb(rid: str, label: str | None, value: float | None = None, at: float = 0.0, ep: str = "delays") -> None:
        row = [at, ep, rid, label, value]
        con.execute("INSERT INTO feedback VALUES (now()::TIMESTAMP, ?, ?, ?, 0, ?, ?, 'ci')", row)

    pred("a", 1, since + 1)
    pred("b", 2, since + 1)
    pred("c", 2, since + 2)
    pred("c", 2, since + 2, status="shadow")  # a mirrored call is not the caller's answer
    pred("d", 1, since - 10)  # before the rollout
    pred("e", 1, since + 3, status="fallback")
    pred("f", 3, since + 3)  # another version
    fb("a", "delayed")
    fb("b", "on_time", at=1)
    fb("b", "delayed", at=2)  # the latest wins
    fb("c", "1")
    for rid in "def":
        fb(rid, "delayed")
    fb("a", "delayed", ep="other")
    cur = con.cursor()
    kind, s, c = outcomes(cur, "delays", 1, 2, since, "delayed")
    assert (kind, sorted(s), sorted(c)) == ("labels", [1.0], [1.0, 1.0])
    # values, when no labels came
    con.execute("DELETE FROM feedback")
    fb("a", None, 3.5)
    fb("b", None, 1.0)
    kind, s, c = outcomes(cur, "delays", 1, 2, since, "delayed")
    assert (kind, s, c) == ("values", [3.5], [1.0])
