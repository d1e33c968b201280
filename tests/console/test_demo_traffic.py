"""Demo traffic against a real agent: the sample model is registered, endpoints serve, fallbacks show."""

from __future__ import annotations

import time

import httpx

from console.demo_traffic import DemoTraffic


def test_demo_traffic_serves_and_exercises_fallbacks(agent_factory) -> None:
    a = agent_factory("demo-traffic", config="flush_interval = 0.2\n")
    t = DemoTraffic(a.url, a.token, rate_per_s=60)
    assert t.available()
    t.setup()
    t.setup()  # idempotent: a second demo run on the same data dir
    t.start()
    deadline = time.monotonic() + 20
    try:
        while time.monotonic() < deadline:
            st = httpx.get(f"{a.url}/api/v1/serving", headers=a.headers()).json()
            by = {s["endpoint"]: s for s in st["stats"]}
            if by.get("delays", {}).get("requests", 0) >= 20 and by.get("delays-flaky", {}).get("fallbacks", 0) >= 1:
                break
            time.sleep(0.2)
        else:
            raise AssertionError(f"not enough traffic: {by}")
    finally:
        t.stop()
    assert t.sent > 0 and t.errors == 0  # fallbacks answer 200: callers never see the faults
    models = httpx.get(f"{a.url}/api/v1/models", headers=a.headers()).json()
    assert [m["name"] for m in models] == ["flights"] and models[0]["versions"] == 1


def test_demo_replay_drifts_raises_an_alert_and_feeds_labels_back(agent_factory) -> None:
    from console.demo import DEMO_CONFIG

    fast = DEMO_CONFIG.replace("window = 20", "window = 2").replace("interval = 2", "interval = 0.3")
    a = agent_factory("demo-drift", config="flush_interval = 0.2\n" + fast.replace("interval = 3", "interval = 0.5"))
    t = DemoTraffic(a.url, a.token, rate_per_s=80, feedback_delay_s=0.5)
    t.setup()
    t.start()
    c = httpx.Client(base_url=a.url, headers=a.headers(), timeout=10)
    found: dict = {}
    deadline = time.monotonic() + 40
    try:
        while time.monotonic() < deadline and len(found) < 3:
            rep = c.get("/api/v1/endpoints/delays/drift").json()
            if any(f["drifted"] for f in rep["features"]):
                found["drift"] = rep
            alerts = c.get("/api/v1/alerting", params={"state": "firing"}).json()["alerts"]
            if any(al["kind"] == "feature_drift" and al["endpoint"] == "delays" for al in alerts):
                found["alert"] = alerts
            q = c.get("/api/v1/endpoints/delays/quality").json()
            if sum(w["labelled"] for w in q.get("windows", [])) > 0:
                found["labels"] = q
            time.sleep(0.3)
    finally:
        t.stop()
        c.close()
    assert set(found) == {"drift", "alert", "labels"}, f"missing {set(found) ^ {'drift', 'alert', 'labels'}}"
    # May onwards is warmer than the January-April training months: temperature leads the drift.
    drifted = {f["name"] for f in found["drift"]["features"] if f["drifted"]}
    assert "temp" in drifted
