"""Guard judgement over a window of live traffic, and breaches tracked in time."""

from __future__ import annotations

import duckdb
import numpy as np
import pytest
from scipy import stats

from agent.rollouts.guards import P99_MIN_EXCESS_MS, BreachTracker, feature_drift_share, judge, prediction_drift
from agent.schemas import RolloutGuards
from agent.serving.service import RouteMetrics
from agent.serving.stats import ShadowWindow, VersionWindow
from agent.store.migrations import migrate


def g(**kw) -> RolloutGuards:
    return RolloutGuards.model_validate({"min_requests": 10, **kw})


def by_name(ms) -> dict:
    return {m.name: m for m in ms}


def rm(st: VersionWindow | None = None, ca: VersionWindow | None = None, sh: ShadowWindow | None = None):
    return RouteMetrics(st or VersionWindow(1), ca, sh or ShadowWindow())


def test_nothing_is_judged_before_min_requests():
    m = by_name(judge(rm(VersionWindow(1, requests=100), VersionWindow(2, requests=9, errors=9, error_rate=1.0)), g()))
    assert m["error_rate"].candidate is None and not m["error_rate"].breached and m["error_rate"].stable == 0.0
    assert [x.name for x in judge(None, g())] == ["error_rate", "fallback_rate", "p99_vs_stable",
                                                  "prediction_drift", "shadow_disagreement"]  # fmt: skip


def test_rates_and_latency_against_their_limits():
    st = VersionWindow(1, requests=100, p99_ms=4.0, error_rate=0.01)
    ca = VersionWindow(2, requests=50, errors=5, error_rate=0.1, fallbacks=10, fallback_rate=0.2, p99_ms=30.0)
    m = by_name(judge(rm(st, ca), g(p99_slo_ms=25, max_p99_ratio_vs_stable=3.0)))
    assert m["error_rate"].breached and (m["error_rate"].stable, m["error_rate"].candidate) == (0.01, 0.1)
    assert m["fallback_rate"].breached and m["p99_ms"].breached and m["p99_ms"].limit == 25
    assert m["p99_vs_stable"].breached and m["p99_vs_stable"].limit == 12.0
    # A fast stable: the ratio alone would flag sub-millisecond jitter; the limit keeps a floor above stable.
    st = VersionWindow(1, requests=100, p99_ms=0.2)
    ca = VersionWindow(2, requests=100, p99_ms=0.9)
    m = by_name(judge(rm(st, ca), g()))
    assert m["p99_vs_stable"].limit == pytest.approx(0.2 + P99_MIN_EXCESS_MS) and not m["p99_vs_stable"].breached


def test_prediction_drift_is_wasserstein_over_stables_std():
    rng = np.random.default_rng(4)
    a = rng.beta(2, 5, 500)
    b = np.round(rng.beta(2.5, 5, 300), 3)  # ties too
    got = prediction_drift(a, b)
    assert got == pytest.approx(stats.wasserstein_distance(a, b) / np.std(a), abs=1e-9)
    assert prediction_drift([], b) is None
    m = by_name(judge(rm(VersionWindow(1, requests=20, scores=list(a)),
                         VersionWindow(2, requests=20, scores=list(a + 0.3))), g()))  # fmt: skip
    assert m["prediction_drift"].breached and m["prediction_drift"].candidate == pytest.approx(0.3 / np.std(a))


def test_shadow_numbers_stand_in_while_the_candidate_has_no_live_traffic():
    sh = ShadowWindow(requests=40, rows=80, disagreements=20, disagreement_rate=0.25, p99_ms=3.0, errors=4,
                      scores=[0.5] * 40)  # fmt: skip
    st = VersionWindow(1, requests=40, p99_ms=1.0, scores=[0.1, 0.2] * 20)
    m = by_name(judge(rm(st, VersionWindow(2), sh), g(p99_slo_ms=2)))
    assert m["prediction_drift"].candidate == pytest.approx(prediction_drift(st.scores, sh.scores))
    # Disagreement is measured and reported by default, judged only against a limit the plan sets (issue 9).
    assert m["shadow_disagreement"].candidate == 0.25 and not m["shadow_disagreement"].breached
    assert m["shadow_disagreement"].limit is None
    limited = by_name(judge(rm(st, VersionWindow(2), sh), g(max_shadow_disagreement=0.10)))
    assert limited["shadow_disagreement"].breached and limited["shadow_disagreement"].limit == 0.10
    assert m["error_rate"].candidate == 0.1 and m["error_rate"].breached
    assert m["p99_ms"].candidate == 3.0 and m["p99_ms"].breached
    assert m["fallback_rate"].candidate is None


def test_breaches_are_held_before_they_count():
    t = BreachTracker()
    bad = judge(rm(VersionWindow(1, requests=10), VersionWindow(2, requests=10, error_rate=0.5)), g())
    ok = judge(rm(VersionWindow(1, requests=10), VersionWindow(2, requests=10)), g())
    t.update(bad, 100.0)
    assert by_name(bad)["error_rate"].breached_since == 100.0 and t.held(bad, 100.0, 5) is None
    bad2 = judge(rm(VersionWindow(1, requests=10), VersionWindow(2, requests=10, error_rate=0.5)), g())
    t.update(bad2, 104.0)
    assert by_name(bad2)["error_rate"].breached_since == 100.0 and t.held(bad2, 104.0, 5) is None
    assert t.held(bad2, 105.0, 5).name == "error_rate"
    t.update(ok, 106.0)  # cleared: the next breach starts its own clock
    bad3 = judge(rm(VersionWindow(1, requests=10), VersionWindow(2, requests=10, error_rate=0.5)), g())
    t.update(bad3, 107.0)
    assert by_name(bad3)["error_rate"].breached_since == 107.0 and t.held(bad3, 111.0, 5) is None


def test_feature_drift_share_reads_the_latest_window():
    con = duckdb.connect(":memory:")
    migrate(con)
    rows = [(10.0, "a", True, "drift"), (10.0, "b", False, "ok"), (20.0, "a", True, "drift"),
            (20.0, "b", True, "drift"), (20.0, "c", False, "no data"),
            (20.0, "__prediction__", True, "drift")]  # fmt: skip
    for end, feat, drifted, verdict in rows:
        con.execute(
            "INSERT INTO drift_scores VALUES ('delays', 'flights', 2, ?, 'reference', ?, 'numeric', 'psi', 0.3, ?, ?, "
            "0, 0, 0)",
            [end, feat, drifted, verdict],
        )
    assert feature_drift_share(con, "delays", 2) == 1.0
    assert feature_drift_share(con, "delays", 1) is None
    m = by_name(judge(None, g(max_feature_drift_share=0.5), (0.0, 1.0)))
    assert m["feature_drift_share"].breached and m["feature_drift_share"].stable == 0.0


def test_a_guard_without_enough_requests_says_not_judged_with_its_count():
    from types import SimpleNamespace

    def side(n, p99=5.0):
        return SimpleNamespace(requests=n, error_rate=0.0, fallback_rate=0.0, p99_ms=p99, errors=0, scores=[0.5] * n,
                               disagreement_rate=None, rows=0)  # fmt: skip

    g = RolloutGuards(min_requests=50)
    few = SimpleNamespace(stable=side(400), candidate=side(12), shadow=None)
    by = {m.name: m for m in judge(few, g)}
    err = by["error_rate"]
    assert not err.judged and err.candidate is None and not err.breached
    assert (err.requests, err.min_requests) == (12, 50)
    assert by["p99_vs_stable"].requests == 12 and not by["p99_vs_stable"].judged
    enough = SimpleNamespace(stable=side(400), candidate=side(80), shadow=None)
    assert all(m.judged for m in judge(enough, g) if m.name in ("error_rate", "p99_vs_stable"))
