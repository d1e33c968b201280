"""The demo's jobs on a real agent with the demo's config: a training run that completes, a validation that
fails with its exit code, a greedy job held at its memory limit (its pipeline near its limit) and one
that outgrows it (OUT_OF_MEMORY); stopping the demo cancels what still runs."""

from __future__ import annotations

import time

import httpx

from console.demo.fleet import DEMO_CONFIG
from console.demo.jobs import DemoJobs, demo_jobs


def test_demo_jobs_run_for_real_under_the_demo_quotas(agent_factory) -> None:
    agent = agent_factory(name="demo-local", config=DEMO_CONFIG)
    jobs = DemoJobs(agent.url, agent.token, jobs=demo_jobs(train_s=6), state_dir=agent.data_dir)
    assert jobs.available()
    with agent.client() as c:
        jobs.tick(c)
        ids = {kind: submitted[-1] for kind, submitted in jobs.submitted.items()}
        assert set(ids) == {"train", "validate", "hog", "oom"}, jobs.notes

        def state(kind: str) -> dict:
            return c.get(f"/api/v1/jobs/{ids[kind]}").json()

        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            states = {kind: state(kind)["state"] for kind in ids}
            near = {q["pipeline"]: q["near_limit"] for q in c.get("/api/v1/quotas").json()["quotas"]}
            if (states["train"], states["validate"], states["oom"], states["hog"]) == (
                "COMPLETED", "FAILED", "OUT_OF_MEMORY", "RUNNING") and "mem" in near.get("batch", []):  # fmt: skip
                break
            time.sleep(0.5)
        assert states == {"train": "COMPLETED", "validate": "FAILED", "oom": "OUT_OF_MEMORY", "hog": "RUNNING"}
        assert "mem" in near["batch"]
        assert state("validate")["exit_code"] == 2
        out = c.get(f"/api/v1/jobs/{ids['train']}/logs").json()["text"]
        assert "epoch" in out and "best_val_auc" in out
        err = c.get(f"/api/v1/jobs/{ids['validate']}/logs", params={"stream": "stderr"}).json()["text"]
        assert "below the bar 0.99" in err
        # The held job really holds its memory: most of its 272 MiB request, under it.
        deadline = time.monotonic() + 30
        while (state("hog").get("rss_bytes") or 0) < 200 * 2**20 and time.monotonic() < deadline:
            time.sleep(0.5)
        assert 200 * 2**20 <= state("hog")["rss_bytes"] <= 272 * 2**20

    jobs.stop()
    with httpx.Client(base_url=agent.url, headers=agent.headers(), timeout=10) as c:
        hog = c.get(f"/api/v1/jobs/{ids['hog']}").json()
    assert hog["state"] == "CANCELLED" and hog["cancelled_by"] == "admin"
