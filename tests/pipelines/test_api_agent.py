"""/api/v1/pipelines over real HTTP against a real agent: registration errors name the field, runs,
compare, cancel, roles, audit."""

from __future__ import annotations

import time
from pathlib import Path

import httpx

PIPE = """
name = "api"
[params]
n = 2
[steps.make]
command = ["/bin/sh", "-c", "seq {params.n} > $WK_OUTPUT_NUMS"]
params = ["n"]
outputs = ["nums"]
[steps.count]
command = ["/bin/sh", "-c", "wc -l < $WK_INPUT_NUMS > $WK_OUTPUT_C"]
inputs = { nums = "make.nums" }
outputs = ["c"]
"""


def wait_run(c: httpx.Client, run_id: str, timeout: float = 120.0) -> dict:
    deadline = time.monotonic() + timeout
    run: dict = {}
    while time.monotonic() < deadline:
        run = c.get(f"/api/v1/pipelines/runs/{run_id}").json()
        if run.get("state") in ("COMPLETED", "FAILED", "CANCELLED"):
            return run
        time.sleep(0.1)
    raise AssertionError(f"run {run_id} not over after {timeout}s: {run}")


def test_register_run_compare_cancel_over_http(agent_factory, tmp_path: Path) -> None:
    a = agent_factory("pl", config="flush_interval = 0.2\n")
    c = a.client()
    r = c.post("/api/v1/pipelines", json={"content": PIPE.replace('"make.nums"', '"make.nope"')})
    assert r.status_code == 422 and r.json()["field"] == "steps.count.inputs.nums", r.text
    r = c.post("/api/v1/pipelines", json={"content": PIPE, "surprise": 1})
    assert r.status_code == 422
    r = c.post("/api/v1/pipelines", json={"content": PIPE})
    assert r.status_code == 201, r.text
    assert r.json()["version"].startswith("sha256:") and [s["name"] for s in r.json()["steps"]] == ["make", "count"]
    r = c.post("/api/v1/pipelines/api/runs", json={"params": {"m": 1}})
    assert r.status_code == 422 and r.json()["field"] == "params.m"
    assert c.post("/api/v1/pipelines/nope/runs", json={}).status_code == 404
    r1 = c.post("/api/v1/pipelines/api/runs", json={"reason": "first"})
    assert r1.status_code == 202, r1.text
    run1 = wait_run(c, r1.json()["id"])
    assert run1["state"] == "COMPLETED" and all(s["job_id"] for s in run1["steps"]), run1
    assert run1["host"] == "pl" and run1["pipeline_version"].startswith("sha256:")
    run2 = wait_run(c, c.post("/api/v1/pipelines/api/runs", json={"params": {"n": 5}}).json()["id"])
    cmp_ = c.get("/api/v1/pipelines/runs/compare", params={"a": run1["id"], "b": run2["id"]}).json()
    assert {"key": "n", "a": 2, "b": 5, "changed": True} in cmp_["params"]
    assert all(s["outputs_changed"] for s in cmp_["steps"])
    run3 = wait_run(c, c.post("/api/v1/pipelines/api/runs", json={}).json()["id"])
    assert run3["cache_hits"] == 2 and all(s["cache_hit"] for s in run3["steps"])
    runs = c.get("/api/v1/pipelines/runs", params={"pipeline": "api"}).json()
    assert runs["total"] == 3 and runs["runs"][0]["id"] == run3["id"]
    listed = c.get("/api/v1/pipelines").json()["pipelines"]
    assert listed[0]["last_run"]["id"] == run3["id"]
    r = c.post(f"/api/v1/pipelines/runs/{run3['id']}/cancel", json={})
    assert r.status_code == 409
    # A viewer reads but does not run.
    tok = c.post("/api/v1/tokens", json={"name": "v", "role": "viewer"}).json()["token"]
    with a.client(token=tok) as v:
        assert v.get("/api/v1/pipelines/runs").status_code == 200
        assert v.post("/api/v1/pipelines/api/runs", json={}).status_code == 403
    actions = [e["action"] for e in c.get("/api/v1/audit", params={"limit": 200}).json()]
    assert actions.count("pipeline.run") == 3 and "pipeline.register" in actions
    # A run and its steps survive a restart.
    a.stop()
    a.start()
    with a.client() as c2:
        again = c2.get(f"/api/v1/pipelines/runs/{run1['id']}").json()
        assert again["state"] == "COMPLETED" and again["steps"] == run1["steps"]
    c.close()
