"""Drift, data quality and labels on a real agent serving the shipped flights model.

Real summer traffic (serving_replay.parquet, July) against a profile fitted on January-April: the
temperature drifts, as it really did. Missing values and an unseen carrier are injected on top.
"""

from __future__ import annotations

import time

import httpx
import numpy as np
import polars as pl
import pytest

from agent.monitoring.quality import auc
from tests.serving.test_serving_agent import FEATURES, FLIGHTS, endpoint, register, serving_delays, wait_loaded

CONFIG = """flush_interval = 0.2
[monitoring]
window = 2
interval = 0.3
"""


def _summer(n: int) -> pl.DataFrame:
    df = pl.read_parquet(FLIGHTS / "serving_replay.parquet")
    return df.filter(pl.col("ts").dt.month() == 7).head(n)


def _send(c: httpx.Client, df: pl.DataFrame, batch: int = 100) -> list[dict]:
    out = []
    for i in range(0, df.height, batch):
        recs = df[i : i + batch].select(FEATURES).to_dicts()
        r = c.post("/api/v1/endpoints/delays/predict", json={"records": recs})
        assert r.status_code == 200, r.text
        out.append(r.json())
    return out


def _wait(fn, timeout: float = 20.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = fn()
        if got:
            return got
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture
def monitored(agent_factory):
    with serving_delays(agent_factory, "mon", CONFIG) as served:
        yield served


def test_summer_traffic_drifts_and_quality_problems_are_flagged(monitored):
    a, c = monitored
    t0 = time.time()
    summer = _summer(1500)
    # Injected data-quality problems: pressure missing on 20 % of rows, an unseen carrier on 5 %.
    rng = np.random.default_rng(3)
    gone = pl.Series(rng.random(summer.height) < 0.2)
    odd = pl.Series(rng.random(summer.height) < 0.05)
    summer = summer.with_columns(
        pl.when(gone).then(None).otherwise(pl.col("pressure")).alias("pressure"),
        pl.when(odd).then(pl.lit("ZZ")).otherwise(pl.col("carrier")).alias("carrier"),
    )
    answers = _send(c, summer)
    # Corrupt values are refused (422) and counted against their feature in the window.
    bad = summer.head(1).select(FEATURES).to_dicts()[0] | {"temp": "warm"}
    for _ in range(3):
        assert c.post("/api/v1/endpoints/delays/predict", json={"records": [bad]}).status_code == 422

    def merged():
        r = c.get("/api/v1/endpoints/delays/drift", params={"since": t0 - 5})
        assert r.status_code == 200, r.text
        rep = r.json()
        return rep if rep["n_cur"] == summer.height else None

    rep = _wait(merged, what="all rows in closed windows")
    feats = {f["name"]: f for f in rep["features"]}
    assert set(FEATURES) <= set(feats) and "__prediction__" in feats and "__label__" not in feats
    temp = feats["temp"]
    assert temp["drifted"] and temp["verdict"] in ("drift", "drift+quality") and temp["method"]
    assert temp["wasserstein_norm"] > 1.0  # July is ~3 reference std warmer than January-April
    assert "missing_rate" in feats["pressure"]["quality_issues"]
    assert feats["pressure"]["missing_rate_cur"] == pytest.approx(summer["pressure"].null_count() / summer.height)
    assert "unseen" in feats["carrier"]["quality_issues"] and feats["carrier"]["unseen_top"] == ["ZZ"]
    assert feats["temp"]["rejected_requests"] == 3 and "rejected_values" in feats["temp"]["quality_issues"]
    assert feats["distance"]["rejected_requests"] == 0 and feats["__prediction__"]["rejected_requests"] is None
    assert rep["features"][0]["score"] is not None  # sorted by severity, most drifted first
    assert 0 < rep["drift_share"] <= 1
    # One definition of the share, with its numerator and denominator on the wire.
    assert 0 < rep["features_judged"] <= len(FEATURES) and rep["features_drifted"] >= 1
    assert rep["drift_share"] == pytest.approx(rep["features_drifted"] / rep["features_judged"])

    # The latest window alone, against the reference and against the previous window.
    latest = c.get("/api/v1/endpoints/delays/drift").json()
    assert latest["window_end"] is not None and latest["n_cur"] > 0 and latest["features"]
    hist = c.get("/api/v1/endpoints/delays/drift/history", params={"since": t0 - 5}).json()
    assert len(hist["features"]["temp"]) >= 1 and all(p["score"] is not None for p in hist["features"]["temp"])

    h = c.get("/api/v1/endpoints/delays/drift/histogram", params={"feature": "temp", "since": t0 - 5}).json()
    assert h["kind"] == "numeric" and len(h["bins"]) == len(h["reference"]) == len(h["current"])
    assert sum(h["reference"]) == pytest.approx(1.0) and sum(h["current"]) == pytest.approx(1.0)
    assert sum(h["current"][-2:]) > 0.9 and sum(h["reference"][-2:]) < 0.25  # warm bins: most of July, few of spring
    hc = c.get("/api/v1/endpoints/delays/drift/histogram", params={"feature": "carrier", "since": t0 - 5}).json()
    assert "(unseen)" in hc["bins"]

    # Labels arrive late and out of order: quality per version and window from the joined rows.
    rows = []
    for ans in answers:
        for i, p in enumerate(ans["predictions"]):
            rows.append((ans["request_id"], i, p["score"], p["label"]))
    truth = ["delayed" if d else "on_time" for d in summer["delayed"].to_list()]
    items = [{"request_id": rid, "row_idx": i, "label": t} for (rid, i, _, _), t in zip(rows, truth, strict=True)]
    items.reverse()
    items.append({"request_id": "never-logged", "row_idx": 0, "label": "delayed"})
    r = c.post("/api/v1/endpoints/delays/feedback", json={"items": items})
    assert r.status_code == 200, r.text
    assert r.json() == {"accepted": len(items), "unknown_request_ids": 1}
    q = c.get("/api/v1/endpoints/delays/quality", params={"window": 86400 * 30}).json()
    assert q.get("kind") == "binary", q
    assert q["reference_metrics"]["auc"] == pytest.approx(0.735779)
    (w,) = q["windows"]
    assert w["labelled"] == w["predictions"] == summer.height
    pred_labels = np.array([x[3] for x in rows], dtype=object)
    assert w["accuracy"] == pytest.approx(float(np.mean(pred_labels == np.array(truth, dtype=object))))
    scores = np.array([x[2] for x in rows])
    assert w["auc"] == pytest.approx(auc(scores, np.array(truth) == "delayed"))
    assert w["positive_rate"] == pytest.approx(float(np.mean(np.array(truth) == "delayed")))
    # feedback runs on the writer's connection: the prediction log must keep flowing after it (regression:
    # a result left unfinished there made the next log INSERT fail and drop rows)
    _send(c, _summer(50))
    c.get("/api/v1/endpoints/delays/predictions", params={"limit": 1})  # flushes what is buffered
    assert c.get("/api/v1/serving").json()["predlog_rows_dropped"] == 0

    # A restart keeps the windows: the latest report comes back from the store.
    end = latest["window_end"]
    a.stop()
    a.start()
    c2 = a.client()
    again = c2.get("/api/v1/endpoints/delays/drift").json()
    assert again["window_end"] >= end and again["features"]
    c2.close()


def test_monitoring_errors_name_the_field(monitored):
    _, c = monitored
    r = c.get("/api/v1/endpoints/nope/drift")
    assert r.status_code == 404 and r.json()["field"] == "name"
    r = c.get("/api/v1/endpoints/delays/drift", params={"baseline": "yesterday"})
    assert r.status_code == 422
    r = c.get("/api/v1/endpoints/delays/drift/histogram", params={"feature": "nope"})
    assert r.status_code == 404 and r.json()["field"] == "feature"
    r = c.post("/api/v1/endpoints/delays/feedback", json={"items": [{"request_id": "x"}]})
    assert r.status_code == 422 and r.json()["field"] == "items.0.label"
    r = c.post("/api/v1/endpoints/delays/feedback", json={"items": []})
    assert r.status_code == 422
    r = c.put("/api/v1/endpoints/strict", json={"model": "flights", "version": 1, "drift": {"psi_typo": 0.1}})
    assert r.status_code == 422 and r.json()["field"] == "drift"
    # before any window closed: an empty report that says why
    rep = c.get("/api/v1/endpoints/delays/drift").json()
    assert rep["features"] == [] and rep["note"]


def _parquet(df: pl.DataFrame) -> bytes:
    import io

    buf = io.BytesIO()
    df.write_parquet(buf)
    return buf.getvalue()


def test_registration_fits_the_profile_and_checks_validation_data_for_skew(agent_factory):
    import json

    a = agent_factory("reg", config=CONFIG)
    c = a.client()
    meta = json.loads((FLIGHTS / "metadata.json").read_text())
    meta.pop("profile")
    ref = pl.read_parquet(FLIGHTS / "reference.parquet").rename({"delayed": "label"})
    summer = _summer(2000).rename({"delayed": "label"})

    def post(**data: bytes):
        files = {
            "artifact": ("model.onnx", (FLIGHTS / "model.onnx").read_bytes()),
            "metadata": (None, json.dumps(meta)),
        }
        files.update({k: (f"{k}.parquet", v) for k, v in data.items()})
        return c.post("/api/v1/models/fitted/versions", files=files)

    r = post(reference=_parquet(ref.drop("temp")))
    assert r.status_code == 422 and r.json()["field"] == "reference" and "temp" in str(r.json()["detail"])
    r = post(validation=_parquet(summer))
    assert r.status_code == 422 and r.json()["field"] == "validation"
    r = post(reference=b"not parquet")
    assert r.status_code == 422 and r.json()["field"] == "reference"
    r = post(reference=_parquet(ref), validation=_parquet(summer))
    assert r.status_code == 201, r.text
    assert r.json()["has_profile"]
    prof = c.get("/api/v1/models/fitted/versions/1/profile").json()
    assert prof["schema"] == "watchkeeper.reference-profile/2" and prof["rows"] == ref.height
    assert prof["prediction"] == "__prediction__" and prof["label"] == "__label__"
    skew = {f["name"]: f for f in prof["validation_skew"]["features"]}
    assert skew["temp"]["drifted"] and skew["temp"]["wasserstein_norm"] > 1.0
    assert prof["validation_skew"]["n_cur"] == summer.height
    # nothing half-registered by the refused attempts, and no temporary files left behind
    assert [v["version"] for v in c.get("/api/v1/models/fitted").json()] == [1]
    assert not [p for p in (a.data_dir / "tmp").iterdir() if p.is_file()]
    c.close()


def test_drift_alerts_stay_on_during_a_canary(agent_factory):
    # The candidate's windows (5 % of the rows: "no data") close at the same moments as stable's; they must
    # not stand in for the endpoint's latest window, or its drift alerts go quiet for the whole rollout.
    from tests.rollouts.test_rollouts_agent import LENIENT, start

    a = agent_factory("canary-drift", config=CONFIG + "\n[alerting]\ninterval = 0.3\n")
    with a.client() as c:
        register(c)
        register(c, tags={"build": "second"}, doc=b"rebuild 2")
        endpoint(c)
        wait_loaded(c)
        ro = start(c, strategy="canary", guards=LENIENT, steps=[{"set_weight": 5}, {"approval": True}])
        assert ro["state"] == "awaiting_approval" and ro["weight"] == 5

        # One burst of 100 requests of 10 rows: the candidate gets ~5 of them (~50 rows, "no data"), stable the
        # rest; both windows close together and the candidate's is processed last.
        _send(c, _summer(1000), batch=10)

        def drift_alert():
            alerts = c.get("/api/v1/alerting").json()["alerts"]
            return next((x for x in alerts if x["kind"] == "feature_drift" and x["state"] == "firing"), None)

        found = _wait(drift_alert, timeout=30, what="a feature_drift alert during the canary")
        assert "temp" in found["labels"]["features"].split(",")
        assert found["labels"]["version"] == "1"  # judged on stable's traffic, the endpoint's own version
