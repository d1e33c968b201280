"""Demo traffic against a real agent: the sample model is registered, endpoints serve, fallbacks show,
and the demo's rollouts run: a canary awaiting approval and a drill its guards abort."""

from __future__ import annotations

import time

import httpx

from console.demo.traffic import DemoTraffic


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
    # v1, the retrained v2 and the drill's v3, each registered once however often the demo starts
    assert [m["name"] for m in models] == ["flights"] and models[0]["versions"] == 3


def test_demo_replay_drifts_raises_an_alert_and_feeds_labels_back(agent_factory) -> None:
    from console.demo.fleet import DEMO_CONFIG

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


def test_demo_rollouts_canary_awaits_approval_and_the_drill_is_aborted_by_its_guards(agent_factory) -> None:
    a = agent_factory("demo-rollouts", config="flush_interval = 0.2\n")
    t = DemoTraffic(a.url, a.token, rate_per_s=50, state_dir=a.data_dir, drill_window_s=2, drill_every_s=3)
    t.setup()
    c = httpx.Client(base_url=a.url, headers=a.headers(), timeout=10)
    try:
        assert t.versions == {"stable": 1, "retrained": 2, "drill": 3}, list(t.notes)
        versions = {v["version"]: v for v in c.get("/api/v1/models/flights").json()}
        assert versions[2]["lineage"]["parent_version"] == 1 and versions[2]["tags"]["train_months"] == "1-6"
        assert versions[3]["tags"]["drill"] == "faulty" and versions[3]["digest"] != versions[1]["digest"]
        drill_ep = c.get("/api/v1/endpoints/delays-canary-drill").json()
        assert drill_ep["config"]["faults"]["version"] == 3 and drill_ep["config"]["fallback"]

        # The canary on `delays`, started by ci-bot, waits for an approver at 10 %.
        (canary,) = c.get("/api/v1/rollouts", params={"endpoint": "delays"}).json()
        assert canary["started_by"] == "ci-bot" and canary["candidate_version"] == 2
        assert (canary["state"], canary["awaiting_approval_for"], canary["weight"]) == ("awaiting_approval", 1, 10)
        bots = [k for k in c.get("/api/v1/tokens").json() if k["name"] == "ci-bot"]
        assert [(k["role"], k["revoked_at"]) for k in bots] == [("operator", None)]

        # A demo restart on the same data dir: nothing registered twice, no second token, the canary left.
        again = DemoTraffic(a.url, a.token, state_dir=a.data_dir)
        again.setup()
        assert again.versions == t.versions
        assert [k["name"] for k in c.get("/api/v1/tokens").json()].count("ci-bot") == 1
        assert [r["id"] for r in c.get("/api/v1/rollouts", params={"endpoint": "delays"}).json()] == [canary["id"]]

        t.start()
        # The on-call engineer (the admin, not ci-bot) approves: the two-person rule is satisfied.
        r = c.post(f"/api/v1/rollouts/{canary['id']}/approve", json={"step_index": 1, "reason": "10 % looks clean"})
        assert r.status_code == 200, r.text
        now = r.json()
        assert (now["state"], now["weight"], now["awaiting_approval_for"]) == ("awaiting_approval", 50, 3)

        # The drill: version 3 fails every request on delays-canary-drill; its guards abort it, the alert fires.
        found: dict = {}
        deadline = time.monotonic() + 25
        while time.monotonic() < deadline and "alert" not in found:
            drills = c.get("/api/v1/rollouts", params={"endpoint": "delays-canary-drill"}).json()
            if drills and drills[0]["state"] == "aborted":
                found["aborted"] = drills[0]
            firing = c.get("/api/v1/alerting", params={"state": "firing"}).json()["alerts"]
            if "aborted" in found and any(
                al["kind"] == "rollout_guard" and al["endpoint"] == "delays-canary-drill" for al in firing
            ):
                found["alert"] = True
            time.sleep(0.2)
        assert set(found) == {"aborted", "alert"}, (found, list(t.notes))
        aborted = found["aborted"]
        assert aborted["started_by"] == "ci-bot" and aborted["candidate_version"] == 3
        assert "error_rate" in aborted["end_reason"], aborted["end_reason"]
        # ... and starts again drill_every_s after it ended.
        deadline = time.monotonic() + 10
        while len(c.get("/api/v1/rollouts", params={"endpoint": "delays-canary-drill"}).json()) < 2:
            assert time.monotonic() < deadline, list(t.notes)
            time.sleep(0.2)
    finally:
        t.stop()
        c.close()
    assert t.errors == 0  # the drill's failures are handed back to stable: callers only see 200s
