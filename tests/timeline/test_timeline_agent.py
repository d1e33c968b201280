"""A scripted incident against a real agent, read back as one timeline.

olga (operator) canaries a faulty candidate; alice (approver) approves its first step; the candidate's
error-rate guard breaches and the agent aborts on alice's behalf; the rollout_guard alert fires; olga switches
the endpoint to its fallback and back; summer traffic drifts and the feature_drift alert fires. The timeline
must hold every one of those in order with its actor, and "what changed before" the guard alert must name
alice's approval and the weight step it made.
"""

from __future__ import annotations

import json
import threading
import time

import httpx
import polars as pl
import pytest

from console.cli import main
from tests.rollouts.test_rollouts_agent import act, tokens, wait_for
from tests.serving.test_serving_agent import FEATURES, FLIGHTS, endpoint, records, reference, register, wait_loaded

CONFIG = """flush_interval = 0.2
[monitoring]
window = 2
interval = 0.3
[alerting]
interval = 0.5
"""
PREDICT = "/api/v1/endpoints/delays/predict"


def _summer(n: int) -> list[dict]:
    df = pl.read_parquet(FLIGHTS / "serving_replay.parquet")
    return df.filter(pl.col("ts").dt.month() == 7).head(n).select(FEATURES).to_dicts()


def _items(c: httpx.Client, since: float, **params) -> list[dict]:
    r = c.get("/api/v1/endpoints/delays/timeline", params={"since": since, **params})
    assert r.status_code == 200, r.text
    return r.json()["items"]


def _index(items: list[dict], kind: str, actor: str | None = None, text: str = "") -> int:
    for i, x in enumerate(items):
        if x["kind"] == kind and (actor is None or x["actor"] == actor) and text in x["summary"]:
            return i
    lines = "\n".join(f"{x['kind']} {x['actor']} {x['summary']}" for x in items)
    raise AssertionError(f"no {kind} by {actor} ({text!r}) in:\n{lines}")


@pytest.fixture
def incident(agent_factory):
    a = agent_factory("tl", config=CONFIG)
    c = a.client()
    register(c)
    register(c, doc=b"v2")
    endpoint(c, faults={"version": 2, "error_rate": 1.0})
    wait_loaded(c)
    t = tokens(c, olga="operator", alice="approver")
    olga, alice = a.client(t["olga"]), a.client(t["alice"])
    t0 = time.time() - 60
    guards = {"window_s": 2, "min_requests": 10, "max_p99_ratio_vs_stable": None, "max_prediction_drift": None}
    r = olga.post(
        "/api/v1/endpoints/delays/rollouts",
        json={"candidate_version": 2, "strategy": "canary", "guards": guards, "reason": "ship v2",
              "steps": [{"set_weight": 10}, {"approval": True}, {"set_weight": 50}, {"approval": True},
                        {"set_weight": 100}]},
    )  # fmt: skip
    assert r.status_code == 201, r.text
    rid = r.json()["id"]
    r = act(alice, rid, "approve", step_index=1, reason="canary looks fine")
    assert r.status_code == 200 and r.json()["weight"] == 50, r.text

    stop = threading.Event()

    def traffic() -> None:
        # One row a request, paced: enough requests for the guard, too few rows a window (< 100) for the
        # drift monitor to judge, so the only drift on the timeline is the summer traffic below.
        rec = records(reference(200))
        with a.client() as cl:
            for i in range(10_000):
                if stop.is_set():
                    break
                cl.post(PREDICT, json={"records": [rec[i % len(rec)]]})
                time.sleep(0.03)

    th = threading.Thread(target=traffic)
    th.start()
    try:
        wait_for(lambda: c.get(f"/api/v1/rollouts/{rid}").json()["state"] == "aborted", timeout=30)
    finally:
        stop.set()
        th.join()
    guard_alert = wait_for(
        lambda: next((x for x in c.get("/api/v1/alerting").json()["alerts"] if x["kind"] == "rollout_guard"), None)
    )
    r = olga.post("/api/v1/endpoints/delays/fallback", json={"enabled": True, "reason": "guard fired, holding"})
    assert r.status_code == 200, r.text
    time.sleep(0.05)
    r = olga.post("/api/v1/endpoints/delays/fallback", json={"enabled": False, "reason": "stable is fine"})
    assert r.status_code == 200, r.text
    summer = _summer(1500)
    for i in range(0, len(summer), 100):
        assert c.post(PREDICT, json={"records": summer[i : i + 100]}).status_code == 200
    wait_for(
        lambda: any(x["kind"] == "feature_drift" and x["state"] == "firing"
                    for x in c.get("/api/v1/alerting").json()["alerts"]),
        timeout=30,
    )  # fmt: skip
    yield a, c, t0, rid, guard_alert
    olga.close()
    alice.close()
    c.close()


def test_the_incident_reads_in_order_with_its_actors(incident, tmp_path, capsys):
    a, c, t0, rid, _guard_alert = incident
    items = wait_for(lambda: (x := _items(c, t0)) and any(i["kind"] == "drift.verdict" for i in x) and x, timeout=10)
    created = _index(items, "endpoint.config", "admin", "endpoint created")
    start = _index(items, "rollout.start", "olga", rid)
    first = _index(items, "rollout.weight", "olga", "weight 0% -> 10%")
    approve = _index(items, "rollout.approve", "alice", "step 1")
    step = _index(items, "rollout.weight", "alice", "weight 10% -> 50%")
    abort = _index(items, "rollout.abort", "watchkeeper-agent", "guard error_rate")
    fired = _index(items, "alert.firing", "watchkeeper-agent", "rollout_guard")
    fb_on = _index(items, "endpoint.fallback", "olga", "switched to fallback: guard fired")
    fb_off = _index(items, "endpoint.fallback", "olga", "switched back")
    drift = _index(items, "drift.verdict", "watchkeeper-agent", "temp")
    drift_alert = _index(items, "alert.firing", "watchkeeper-agent", "feature_drift")
    assert created < start < first < approve < step < min(abort, fired) and max(abort, fired) < fb_on
    assert fb_on < fb_off < drift <= drift_alert
    assert abs(items[abort]["ts"] - items[fired]["ts"]) < 2  # the guard's alert is raised with the abort
    assert [x["ts"] for x in items] == sorted(x["ts"] for x in items)
    ab = items[abort]
    assert ab["on_behalf_of"] == "alice" and ab["cause"] == "alice approved step 1"
    assert ab["details"]["guard_name"] == "error_rate" and ab["category"] == "change"
    assert items[approve]["summary"].endswith("canary looks fine") and items[fired]["category"] == "signal"
    assert all(x["host"] == "tl" for x in items)
    # The agent's own start is on it too, and a clean restart shows as a stop and a start.
    assert _index(items, "agent.start", "watchkeeper-agent") < created

    tl = c.get("/api/v1/endpoints/delays/timeline", params={"since": t0}).json()
    series = {s["name"]: s for s in tl["series"]}
    assert len(tl["buckets"]) == len(series["requests_per_s"]["values"]) == len(series["host_cpu_percent"]["values"])
    assert sum(v or 0 for v in series["requests_per_s"]["values"]) > 0
    assert any(v for v in series["host_cpu_percent"]["values"] if v is not None)
    assert series["drift_score"]["label"]  # the top feature

    # The CLI: the same timeline as a postmortem skeleton, and as JSON.
    fleet = tmp_path / "fleet.toml"
    fleet.write_text(f'[[agent]]\nname = "{a.name}"\nurl = "{a.url}"\ntoken = "{a.token}"\n')
    capsys.readouterr()
    assert main(["timeline", "delays", "--since", str(t0), "--markdown", "--fleet", str(fleet)]) == 0
    md = capsys.readouterr().out
    assert md.startswith("# Incident: delays") and "## Timeline (UTC)" in md and "## Figures before / after" in md
    assert "rollout.abort" in md and "on behalf of alice" in md and "**turning point**" in md
    assert "- **alice**: rollout.approve x1, rollout.weight x1" in md
    assert "**watchkeeper-agent** (on behalf of alice)" in md
    assert main(["timeline", "delays", "--since", str(t0), "--json", "--fleet", str(fleet)]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert [x["kind"] for x in doc["timeline"]["items"]] == [x["kind"] for x in items]
    assert main(["timeline", "nope", "--fleet", str(fleet)]) == 1
    assert "no agent has endpoint 'nope'" in capsys.readouterr().err


def test_what_changed_before_the_guard_alert(incident):
    a, c, t0, _rid, guard_alert = incident
    r = c.get("/api/v1/endpoints/delays/timeline/before", params={"alert": guard_alert["fingerprint"]})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["window_s"] == 1800 and body["at"] == pytest.approx(guard_alert["firing_at"])
    changes = body["changes"]
    assert [x["ts"] for x in changes] == sorted((x["ts"] for x in changes), reverse=True)  # newest first
    assert all(x["category"] == "change" and x["ts"] <= body["at"] for x in changes)
    step = _index(changes, "rollout.weight", "alice", "weight 10% -> 50%")
    approve = _index(changes, "rollout.approve", "alice", "step 1")
    assert step < approve  # the weight step came after (is newer than) the approval that made it
    assert not any(x["kind"] == "endpoint.fallback" for x in changes)  # that came after the alert
    assert body["timeline"]["series"] and body["timeline"]["until"] > body["at"]
    # Bad input: a clear 4xx naming the field.
    r = c.get("/api/v1/endpoints/delays/timeline/before")
    assert r.status_code == 422 and r.json()["field"] == "at"
    r = c.get("/api/v1/endpoints/delays/timeline/before", params={"alert": "nope"})
    assert r.status_code == 404 and r.json()["field"] == "alert"
    r = c.get("/api/v1/endpoints/nope/timeline")
    assert r.status_code == 404 and r.json()["field"] == "name"
    r = c.get("/api/v1/endpoints/delays/timeline", params={"since": 100, "until": 50})
    assert r.status_code == 422 and r.json()["field"] == "until"
    # A restart is on the timeline: the clean stop, then the start.
    a.stop()
    a.start()
    items = wait_for(lambda: (x := _items(c, t0)) and sum(i["kind"] == "agent.start" for i in x) == 2 and x)
    starts = [i for i, x in enumerate(items) if x["kind"] == "agent.start"]
    assert starts[0] < _index(items, "agent.stop", "watchkeeper-agent") < starts[1]


def test_breaker_config_reload_and_a_crash_are_on_the_timeline(agent_factory):
    a = agent_factory("brk", config=CONFIG)
    c = a.client()
    register(c)
    endpoint(c, faults={"error_rate": 1.0})
    wait_loaded(c)
    t0 = time.time() - 5
    rec = records(reference(1))
    for _ in range(30):  # every call fails; with a fallback, callers get 200s
        assert c.post(PREDICT, json={"records": rec}).status_code == 200
    assert c.get("/api/v1/endpoints/delays").json()["breaker_state"] == "open"
    items = wait_for(lambda: [x for x in _items(c, t0) if x["kind"] == "breaker.open"], timeout=10)
    assert items[0]["actor"] == "watchkeeper-agent" and items[0]["category"] == "signal"
    assert "failed or were slow" in items[0]["summary"]
    # A changed config shows as a reload at the next start; a kill -9 as a start after no clean stop.
    a.stop()
    cfg = a.data_dir.parent / f"{a.name}.toml"
    cfg.write_text(cfg.read_text().replace("interval = 0.5", "interval = 0.6"))
    a.start()
    reload = wait_for(lambda: [x for x in _items(c, t0) if x["kind"] == "config.reload"], timeout=10)
    assert reload[0]["actor"] == "watchkeeper-agent" and reload[0]["details"]["from"] != reload[0]["details"]["to"]
    # the start's row is flushed (flush_interval 0.2 s) before the kill: seen through the API
    wait_for(lambda: [x for x in _items(c, t0) if x["kind"] == "agent.start"][1:], timeout=10)
    a.kill()
    a.start()
    starts = wait_for(lambda: [x for x in _items(c, t0) if x["kind"] == "agent.start"][2:], timeout=10)
    assert "without a clean stop" in starts[-1]["summary"] and "config changed" not in starts[-1]["summary"]
    c.close()
