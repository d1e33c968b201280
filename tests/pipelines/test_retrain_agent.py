"""The drift-triggered retrain, end to end against a real agent: summer traffic drifts `delays`, the
feature_drift alert fires, the retrain-flights pipeline runs once (by its alert trigger), the new
version is registered with its lineage from the run, the validation gate runs against the version the
endpoint serves, and the canary waits for a person's approval. The model is kept tiny (3,000 rows,
one epoch) and the gate lenient: this checks the chain, not the model."""

from __future__ import annotations

import io
import json
import time
from pathlib import Path

import httpx
import polars as pl

from tests.monitoring.test_monitor_agent import _send, _summer
from tests.pipelines.test_api_agent import wait_run
from tests.serving.test_serving_agent import FEATURES, endpoint, reference, register, wait_loaded

PIPELINE = Path(__file__).resolve().parents[2] / "sample_data" / "flights" / "pipeline" / "retrain-flights.toml"
CONFIG = "flush_interval = 0.2\n[monitoring]\nwindow = 2\ninterval = 0.3\n[alerting]\ninterval = 0.3\n"


def _tiny(text: str) -> str:
    return (text.replace("rows = 20000", "rows = 3000").replace("epochs = 3", "epochs = 1")
            .replace('gate = [{ metric = "auc", threshold = 0.6 }, { metric = "log_loss", threshold = 0.7 }]',
                     'gate = [{ metric = "auc", threshold = 0.3 }]'))  # fmt: skip


def test_drift_triggers_a_retrain_that_ends_in_a_canary_awaiting_approval(agent_factory) -> None:
    a = agent_factory("ct", config=CONFIG)
    c = a.client()
    c.timeout = httpx.Timeout(60)
    register(c)
    endpoint(c)
    wait_loaded(c)
    buf = io.BytesIO()
    reference(2000).select([*FEATURES, pl.col("delayed").alias("label")]).write_parquet(buf)
    r = c.post("/api/v1/datasets/flights-val/versions", files={"data": ("val.parquet", buf.getvalue())})
    assert r.status_code == 201, r.text
    content = _tiny(PIPELINE.read_text())
    assert "rows = 3000" in content and "threshold = 0.3" in content
    r = c.post("/api/v1/pipelines", json={"content": content, "path": str(PIPELINE)})
    assert r.status_code == 201, r.text
    assert c.get("/api/v1/pipelines/runs").json()["total"] == 0

    _send(c, _summer(1000), batch=10)  # July weather against a January-April reference: drift

    deadline = time.monotonic() + 60
    runs: list = []
    while time.monotonic() < deadline and not runs:
        runs = c.get("/api/v1/pipelines/runs", params={"pipeline": "retrain-flights"}).json()["runs"]
        time.sleep(0.3)
    assert runs, "the drift alert did not start a run"
    run = wait_run(c, runs[0]["id"], timeout=400)
    steps = {s["step"]: s for s in run["steps"]}
    assert run["state"] == "COMPLETED", json.dumps(run)[:3000]
    assert run["trigger"] == "alert" and "feature_drift" in run["trigger_detail"] and "delays" in run["trigger_detail"]
    assert steps["train"]["job_id"] and steps["prepare"]["isolation"] == "none"
    assert steps["evaluate"]["metrics"]["val_rows"] == 450.0
    # The alert keeps firing while the run goes and after: still one run.
    _send(c, _summer(300), batch=10)
    time.sleep(2)
    assert c.get("/api/v1/pipelines/runs", params={"pipeline": "retrain-flights"}).json()["total"] == 1

    [model] = run["models"]
    assert model["model"] == "flights" and model["version"] == 2 and model["rollout_id"]
    mv = c.get("/api/v1/models/flights/versions/2").json()
    lin = mv["lineage"]
    assert lin["build_id"] == run["id"] and lin["parent_version"] == 1
    assert lin["code_commit"] == (run["code_commit"] or "unknown (not in a git repo)")
    assert lin["job_id"] == steps["train"]["job_id"]  # the job that trained it (export ran in-process)
    inputs = {d["digest"] for s in run["steps"] for d in s["inputs"].values() if d.get("source")}
    assert len(inputs) == 2 and lin["data_version"].startswith("sha256:")
    assert mv["tags"]["pipeline_run"] == run["id"] and mv["metrics"]["val_rows"] == 450.0

    ro = c.get(f"/api/v1/rollouts/{model['rollout_id']}").json()
    assert ro["state"] == "awaiting_approval", ro
    assert ro["candidate_version"] == 2 and ro["stable_version"] == 1 and ro["strategy"] == "canary"
    assert ro["gate"]["passed"] and ro["candidate_lineage"]["build_id"] == run["id"]
    audit = c.get("/api/v1/audit", params={"limit": 500}).json()
    # The chain is on record as the agent's, each entry naming its cause.
    auto = {e["action"]: e for e in audit if e["action"] in ("pipeline.run", "model.register", "rollout.create")}
    assert set(auto) == {"pipeline.run", "model.register", "rollout.create"}
    assert all(e["principal"] == "watchkeeper-agent" and e["detail"]["automatic"] for e in auto.values())
    assert "feature_drift" in auto["pipeline.run"]["detail"]["cause"]
    assert auto["rollout.create"]["detail"]["pipeline_run"] == run["id"]
    c.close()
