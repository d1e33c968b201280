"""Admission against a real agent: each pending reason, FIFO after a cancel, 409 for a job that never fits."""

from __future__ import annotations

import time

from tests.jobs.conftest import submit, token, wait_job

CONFIG = """
[jobs]
serving_reserve_cpu = 0

[[quotas]]
pipeline = "one"
max_running_jobs = 1

[[quotas]]
pipeline = "cpuq"
cpu = 1

[[quotas]]
pipeline = "memq"
mem = "200MiB"

[[quotas]]
pipeline = "tiny"
mem = "100MiB"
"""

SLEEP = ["sleep", "30"]


def wait_reason(c, job_id: str, reason: str, timeout: float = 10.0) -> dict:
    """The job PENDING with `reason`: admission gives the reason at its next pass after the submit (a
    submit is answered once journaled, often before that pass)."""
    deadline = time.monotonic() + timeout
    while True:
        job = c.get(f"/api/v1/jobs/{job_id}").json()
        if job["state"] == "PENDING" and job["reason"] == reason:
            return job
        assert time.monotonic() < deadline, (reason, job)
        time.sleep(0.02)


def test_pending_reasons_and_fifo(agent_factory) -> None:
    a = agent_factory(config=CONFIG)
    with a.client() as c:
        first = submit(c, pipeline="one", command=SLEEP, cpu=0.1, mem="10M")
        wait_job(c, first["id"], {"RUNNING"})
        queued = submit(c, pipeline="one", command=["true"], cpu=0.1, mem="10M")
        cpu_run = submit(c, pipeline="cpuq", command=SLEEP, cpu=1, mem="10M")
        wait_job(c, cpu_run["id"], {"RUNNING"})
        cpu_wait = submit(c, pipeline="cpuq", command=["true"], cpu=0.5, mem="10M")
        mem_run = submit(c, pipeline="memq", command=SLEEP, cpu=0.1, mem="150M")
        wait_job(c, mem_run["id"], {"RUNNING"})
        mem_wait = submit(c, pipeline="memq", command=["true"], cpu=0.1, mem="100M")
        # Running requests now hold 1.2 of this host's 2 cores: one more core is not there.
        host_wait = submit(c, pipeline="free", command=["true"], cpu=1, mem="10M")
        held = submit(c, pipeline="free", command=["true"], cpu=0.1, mem="10M", hold=True)
        dep = submit(c, pipeline="free", command=["true"], cpu=0.1, mem="10M", depends_on=[first["id"]])
        small = submit(c, pipeline="free", command=["true"], cpu=0.1, mem="10M")
        expect = {
            queued["id"]: "QuotaJobs",
            cpu_wait["id"]: "QuotaCpu",
            mem_wait["id"]: "QuotaMemory",
            host_wait["id"]: "Resources",
            held["id"]: "Held",
            dep["id"]: "Dependency",
        }
        for jid, reason in expect.items():
            wait_reason(c, jid, reason)
        # Behind its pipeline's head (waiting for the host), a smaller job backfills and runs.
        assert wait_job(c, small["id"])["state"] == "COMPLETED"

        never = c.post("/api/v1/jobs", json={"pipeline": "tiny", "command": ["true"], "mem": "200M"})
        assert never.status_code == 409 and never.json()["field"] == "mem", never.text
        assert "never fits" in never.json()["detail"]

        listed = c.get("/api/v1/jobs", params={"state": "PENDING"}).json()
        assert {j["id"] for j in listed["jobs"]} >= set(expect)

        # Cancel the running head of "one" as another operator: it ends CANCELLED by that name, and the
        # queued job behind it starts (FIFO within the pipeline).
        alice = token(c, "alice", "operator")
        with a.client(token=alice) as ca:
            r = ca.post(f"/api/v1/jobs/{first['id']}/cancel", json={"reason": "wrong data"})
            assert r.status_code == 200, r.text
        done = wait_job(c, first["id"])
        assert done["state"] == "CANCELLED" and done["cancelled_by"] == "alice", done
        assert "cancelled by alice" in done["reason"]
        assert wait_job(c, queued["id"])["state"] == "COMPLETED"
        # A dependency that can no longer complete keeps its dependant waiting, with the reason said (Slurm's
        # word for it: issue 13's follow-up changed this from "Dependency").
        wait_reason(c, dep["id"], "DependencyNeverSatisfied")
        again = c.post(f"/api/v1/jobs/{first['id']}/cancel", json={})
        assert again.status_code == 409 and again.json()["field"] == "id"

        # Quota usage: allocated vs limit, per pipeline.
        q = c.get("/api/v1/quotas/cpuq").json()
        assert q["configured"] and q["limit"]["cpu"] == 1 and q["allocated"]["cpu"] == 1
        assert q["running_jobs"] == 1 and q["pending_jobs"] == 1 and "cpu" in q["near_limit"]
        for jid in (cpu_run["id"], mem_run["id"], held["id"], dep["id"]):
            c.post(f"/api/v1/jobs/{jid}/cancel", json={})
