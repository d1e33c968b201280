"""Signal builders: serving status, drift reports and quality reports in, signals out."""

from __future__ import annotations

import pytest

from agent.alerting.rules import DEFAULT_RULES, MIN_LABELLED, MIN_WINDOW_REQUESTS
from agent.alerting.signals import drift_signals, quality_signals, relative_drop, serving_signals
from agent.schemas import (
    DriftReportOut,
    EndpointConfig,
    EndpointInfo,
    EndpointVersionStats,
    FeatureDriftOut,
    LatencySummary,
    QualityReport,
    QualityWindow,
    ServingStatus,
)


def ep(name: str = "delays", fallback_mode: bool = False) -> EndpointInfo:
    return EndpointInfo(
        name=name, config=EndpointConfig(model="flights", version=1), model="flights", version=1,
        fallback_mode=fallback_mode, updated_at=0, updated_by="t",
    )  # fmt: skip


def vs(endpoint="delays", version=1, requests=100, errors=0, fallbacks=0, p99=5.0, total=None) -> EndpointVersionStats:
    return EndpointVersionStats(
        endpoint=endpoint, model="flights", version=version, requests=total if total is not None else requests,
        rows=requests, errors=errors, fallbacks=fallbacks, window_s=60, window_requests=requests,
        window_errors=errors, window_fallbacks=fallbacks, window_rps=requests / 60,
        window_error_rate=errors / requests if requests else 0,
        window_fallback_rate=fallbacks / requests if requests else 0,
        latency=LatencySummary(count=requests, p99_ms=p99 if requests else None),
        latency_total=LatencySummary(count=requests),
    )  # fmt: skip


def status(endpoints: list[EndpointInfo], stats: list[EndpointVersionStats]) -> ServingStatus:
    return ServingStatus(endpoints=endpoints, stats=stats, loaded_models=[], pool_budget_bytes=0, pool_used_bytes=0,
                         predlog_rows_written=0, predlog_rows_dropped=0)  # fmt: skip


def by_kind(signals, endpoint="delays"):
    return {s.kind: s for s in signals if s.endpoint == endpoint}


def test_rates_and_latency_sum_over_versions():
    st = status([ep()], [vs(version=1, requests=80, errors=8, fallbacks=4, p99=40),
                         vs(version=2, requests=20, errors=2, fallbacks=16, p99=300)])  # fmt: skip
    s = by_kind(serving_signals(st, None, DEFAULT_RULES))
    assert s["error_rate"].value == 0.1 and s["error_rate"].breached and s["error_rate"].threshold == 0.05
    assert s["fallback_rate"].value == 0.2 and s["fallback_rate"].breached
    assert s["latency_p99"].value == 300 and s["latency_p99"].breached  # the worst version's p99
    assert s["outage"].breached is False and s["outage"].value == 100
    assert "10.0%" in s["error_rate"].summary and "100 requests" in s["error_rate"].summary
    assert s["error_rate"].labels == {"model": "flights", "version": "1"}


def test_too_few_requests_judge_nothing_and_unused_kinds_are_skipped():
    st = status([ep()], [vs(requests=MIN_WINDOW_REQUESTS - 1, errors=5, p99=900)])
    s = by_kind(serving_signals(st, None, DEFAULT_RULES))
    assert s["error_rate"].value is None and not s["error_rate"].breached
    assert s["latency_p99"].value is None and "fewer than" in s["latency_p99"].summary
    only = [r for r in DEFAULT_RULES if r.kind == "error_rate"]
    assert {x.kind for x in serving_signals(st, None, only)} == {"error_rate"}
    assert serving_signals(st, None, [r for r in DEFAULT_RULES if r.kind == "feature_drift"]) == []


def test_outage_when_traffic_stops_or_everything_fails():
    before = status([ep()], [vs(requests=50)])
    silent = status([ep()], [vs(requests=0, total=50)])
    assert by_kind(serving_signals(silent, before, DEFAULT_RULES))["outage"].breached
    # counters reset (endpoint re-created): the previous evaluation still saw traffic
    reset = status([ep()], [])
    assert by_kind(serving_signals(reset, before, DEFAULT_RULES))["outage"].breached
    # never had traffic: not an outage
    assert not by_kind(serving_signals(reset, None, DEFAULT_RULES))["outage"].breached
    # every request failed or fell back
    dead = status([ep()], [vs(requests=3, errors=2, fallbacks=1)])
    o = by_kind(serving_signals(dead, None, DEFAULT_RULES))["outage"]
    assert o.breached and "all 3 requests" in o.summary
    # ...unless an operator switched it to fallback on purpose
    forced = status([ep(fallback_mode=True)], [vs(requests=3, fallbacks=3)])
    assert not by_kind(serving_signals(forced, None, DEFAULT_RULES))["outage"].breached


def test_deleted_endpoints_emit_nothing():
    st = status([ep("a")], [vs("a"), vs("gone", errors=90)])
    assert {s.endpoint for s in serving_signals(st, None, DEFAULT_RULES)} == {"a"}


def feat(name: str, drifted: bool = False, score: float = 0.05, issues: list[str] | None = None, **kw):
    return FeatureDriftOut(
        name=name, kind="numeric", n_ref=1000, n_cur=500, method="psi", score=score, threshold=0.2,
        drifted=drifted, verdict="drift" if drifted else "ok", quality_issues=issues or [], **kw,
    )  # fmt: skip


def report(features) -> DriftReportOut:
    return DriftReportOut(endpoint="delays", model="flights", version=3, baseline="reference", window_start=0,
                          window_end=60, n_ref=1000, n_cur=500, drift_share=0.5, dataset_drift=False,
                          features=features, computed_at=60)  # fmt: skip


def test_drift_signals_per_feature_prediction_label_and_quality():
    rep = report([
        feat("distance", drifted=True, score=0.31),
        feat("temp", score=0.02, issues=["missing rate 0.5% -> 5.0%"], missing_rate_cur=0.05),
        feat("__prediction__", drifted=True, score=0.4),
        feat("__label__", score=0.01),
    ])  # fmt: skip
    sigs = drift_signals(rep, "reference")
    drift = {(s.kind, s.subject): s for s in sigs if s.kind != "data_quality"}
    assert set(drift) == {("feature_drift", "distance"), ("feature_drift", "temp"),
                          ("prediction_drift", "__prediction__"), ("label_drift", "__label__")}  # fmt: skip
    d = drift[("feature_drift", "distance")]
    assert d.breached and d.value == 0.31 and d.threshold == 0.2 and d.endpoint == "delays"
    assert d.labels == {"baseline": "reference", "model": "flights", "version": "3", "method": "psi"}
    assert "drifted" in d.summary and "psi 0.31" in d.summary
    assert drift[("prediction_drift", "__prediction__")].breached
    assert not drift[("label_drift", "__label__")].breached
    q = {s.subject: s for s in sigs if s.kind == "data_quality"}
    assert q["temp"].breached and q["temp"].value == 0.05 and "missing rate" in q["temp"].summary
    assert not q["distance"].breached


def test_drift_signals_without_data_are_not_breached():
    f = feat("distance", drifted=True)
    f.n_cur, f.verdict = 0, "no data"
    [d, q] = drift_signals(report([f]), "previous")
    assert not d.breached and d.value is None and d.labels["baseline"] == "previous" and not q.breached


def window(labelled=500, auc=0.70, accuracy=0.70, end=3600.0, version=1) -> QualityWindow:
    return QualityWindow(model="flights", version=version, window_start=end - 3600, window_end=end, labelled=labelled,
                         predictions=labelled, auc=auc, accuracy=accuracy)  # fmt: skip


def test_quality_drop_against_the_reference_metric():
    rep = QualityReport(endpoint="delays", kind="binary", windows=[window(auc=0.9, end=0), window(auc=0.66)],
                        reference_metrics={"auc": 0.735779, "accuracy": 0.70, "f1": 0.45})  # fmt: skip
    s = {x.subject: x for x in quality_signals(rep)}
    assert set(s) == {"auc", "accuracy"}  # f1 is not in the window
    assert abs(s["auc"].value - (0.735779 - 0.66) / 0.735779) < 1e-9 and s["auc"].breached
    assert s["accuracy"].value == 0 and not s["accuracy"].breached
    assert s["auc"].labels["model_kind"] == "binary" and s["auc"].endpoint == "delays"
    few = QualityReport(endpoint="delays", kind="binary", windows=[window(labelled=MIN_LABELLED - 1, auc=0.1)],
                        reference_metrics={"auc": 0.7})  # fmt: skip
    [x] = quality_signals(few)
    assert x.value is None and not x.breached
    assert quality_signals(QualityReport(endpoint="d", kind="binary", windows=[])) == []


def test_relative_drop_direction():
    assert relative_drop("auc", 0.8, 0.6) == pytest.approx(0.25)
    assert relative_drop("rmse", 2.0, 3.0) == 0.5  # error metrics: higher is worse
    assert relative_drop("mae", 2.0, 1.0) == -0.5
    assert relative_drop("auc", 0.0, 0.5) is None
