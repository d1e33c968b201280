"""A pipeline whose jobs go to Slurm: each job step is submitted as soon as its parents are, queued behind
them there (--dependency=afterok), a cached step is never submitted, and a step queued behind a parent whose
output turned out the same as before is a cache hit after all (its queued job cancelled). A real agent, the
real single-node Slurm of test_slurm_backend.py's module setup."""

from __future__ import annotations

import time

import pytest

from tests.pipelines.test_api_agent import wait_run
from tests.slurm.agents import restart

pytestmark = pytest.mark.usefixtures("empty_queue")

PIPE = """
name = "train"
[params]
lr = 1
seed = 1
[steps.prep]
command = ["/bin/sh", "-c", "sleep 2; seq 5 > $WK_OUTPUT_DATA"]
outputs = ["data"]
resources = { cpu = 0.5, mem = "40M" }
[steps.fit]
# its output depends on lr, not on seed
command = ["/bin/sh", "-c", "sleep 2; echo {params.lr} > $WK_OUTPUT_MODEL; cat $WK_INPUT_DATA >> $WK_OUTPUT_MODEL"]
params = ["lr", "seed"]
inputs = { data = "prep.data" }
outputs = ["model"]
resources = { cpu = 0.5, mem = "40M" }
[steps.eval]
command = ["/bin/sh", "-c", "wc -l < $WK_INPUT_MODEL > $WK_OUTPUT_SCORE"]
inputs = { model = "fit.model" }
outputs = ["score"]
resources = { cpu = 0.5, mem = "40M" }
"""


def _steps(run: dict) -> dict[str, dict]:
    return {s["step"]: s for s in run["steps"]}


def test_a_pipeline_in_slurm_queues_steps_behind_their_parents_and_skips_cached_ones(agent, cluster):
    with agent.client() as c:
        assert c.post("/api/v1/pipelines", json={"content": PIPE}).status_code == 201
        r = c.post("/api/v1/pipelines/train/runs", json={"reason": "first"})
        assert r.status_code == 202, r.text
        run1 = wait_run(c, r.json()["id"])
        assert run1["state"] == "COMPLETED", [(x["step"], x["state"], x["reason"], x["job_id"]) for x in run1["steps"]]
        s = _steps(run1)
        jobs = {name: c.get(f"/api/v1/jobs/{s[name]['job_id']}").json() for name in s}
        assert {j["backend"] for j in jobs.values()} == {"slurm"}
        # each job was submitted before its parent's ended (each parent runs 2 s; Slurm's times are whole
        # seconds), waiting on it in Slurm
        assert jobs["fit"]["depends_on"] == [jobs["prep"]["id"]] and jobs["eval"]["depends_on"] == [jobs["fit"]["id"]]
        assert jobs["fit"]["submitted_at"] < jobs["prep"]["ended_at"] - 0.5
        assert jobs["eval"]["submitted_at"] < jobs["fit"]["ended_at"] - 0.5
        assert jobs["eval"]["started_at"] >= jobs["fit"]["ended_at"] - 1  # Slurm's times are whole seconds
        score = agent.data_dir / "pipelines" / "runs" / run1["id"] / "eval" / "out" / "score"
        assert score.read_text().strip() == "6"  # it read fit's output: lr and prep's five lines
        assert s["eval"]["cache_key"] and not s["eval"]["cache_hit"]

        # seed changes fit's key, not its output: prep is cached (never submitted), fit runs, and eval, queued
        # behind it, is a cache hit once fit's output is known: its queued job is cancelled
        run2 = wait_run(c, c.post("/api/v1/pipelines/train/runs", json={"params": {"seed": 2}}).json()["id"])
        assert run2["state"] == "COMPLETED", run2
        s2 = _steps(run2)
        assert s2["prep"]["cache_hit"] and s2["prep"]["job_id"] is None
        assert not s2["fit"]["cache_hit"] and s2["fit"]["job_id"]
        assert s2["eval"]["cache_hit"] and s2["eval"]["reused_from"] == run1["id"], s2["eval"]
        assert s2["eval"]["cache_key"] == s["eval"]["cache_key"]
        ev = c.get(f"/api/v1/jobs/{s2['eval']['job_id']}").json()
        assert ev["depends_on"] == [s2["fit"]["job_id"]] and ev["state"] == "CANCELLED", ev

        # a failing parent: its child, queued behind it, ends UPSTREAM_FAILED (Slurm never runs it)
        broken = PIPE.replace("sleep 2; echo", "sleep 1; exit 3; echo")
        assert c.post("/api/v1/pipelines", json={"content": broken}).status_code == 201
        run3 = wait_run(c, c.post("/api/v1/pipelines/train/runs", json={"params": {"lr": 7}}).json()["id"])
        s3 = _steps(run3)
        assert run3["state"] == "FAILED" and s3["fit"]["state"] == "FAILED", run3
        assert s3["eval"]["state"] == "UPSTREAM_FAILED" and s3["eval"]["job_id"], s3["eval"]
        ev = c.get(f"/api/v1/jobs/{s3['eval']['job_id']}").json()
        assert ev["state"] == "CANCELLED" and ev["started_at"] is None, ev


def test_a_run_with_steps_queued_in_slurm_survives_kill9_of_the_agent(agent, cluster):
    slow = PIPE.replace("sleep 2; echo", "sleep 6; echo")  # fit runs long enough to kill the agent under it
    with agent.client() as c:
        assert c.post("/api/v1/pipelines", json={"content": slow}).status_code == 201
        run_id = c.post("/api/v1/pipelines/train/runs", json={"params": {"lr": 3}}).json()["id"]
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:  # fit running in Slurm, eval queued behind it
            s = _steps(c.get(f"/api/v1/pipelines/runs/{run_id}").json())
            if s["fit"]["state"] == "RUNNING" and s["eval"]["job_id"]:
                fit = c.get(f"/api/v1/jobs/{s['fit']['job_id']}").json()
                if fit["state"] == "RUNNING":
                    break
            time.sleep(0.2)
        assert s["eval"]["state"] == "RUNNING" and s["eval"]["cache_key"] is None, s["eval"]
    agent.kill()
    b = restart(agent)
    try:
        with b.client() as c:
            run = wait_run(c, run_id)
            assert run["state"] == "COMPLETED", [(x["step"], x["state"], x["reason"]) for x in run["steps"]]
            s2 = _steps(run)
            # the same jobs, watched again: nothing submitted twice; eval's key settled when fit completed
            assert s2["fit"]["job_id"] == s["fit"]["job_id"] and s2["eval"]["job_id"] == s["eval"]["job_id"]
            assert s2["eval"]["cache_key"] and not s2["eval"]["cache_hit"]
            score = b.data_dir / "pipelines" / "runs" / run_id / "eval" / "out" / "score"
            assert score.read_text().strip() == "6"
    finally:
        b.stop()
