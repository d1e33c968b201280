"""The jobs API's edges against a real agent: auth and roles, 422 naming the field, body caps, audit entries,
quotas at run time (persisted across a restart), the summary's jobs counts and ETag, /metrics."""

from __future__ import annotations

import httpx

from tests.jobs.conftest import submit, token, wait_job


def test_auth_roles_validation_and_audit(agent_factory) -> None:
    a = agent_factory()
    with a.client() as c:
        viewer = token(c, "vera", "viewer")
        operator = token(c, "otto", "operator")
        body = {"pipeline": "p", "command": ["true"]}
        assert httpx.post(f"{a.url}/api/v1/jobs", json=body).status_code == 401
        with a.client(token=viewer) as cv:
            r = cv.post("/api/v1/jobs", json=body)
            assert r.status_code == 403 and r.json()["error"] == "forbidden"
            assert cv.get("/api/v1/jobs").status_code == 200
        with a.client(token=operator) as co:
            job = submit(co, **body, reason="nightly")
            assert job["submitted_by"] == "otto"
            r = co.put("/api/v1/quotas/p", json={"cpu": 1})
            assert r.status_code == 403  # quotas are an admin's
        for bad, field in [
            ({"pipeline": "no spaces", "command": ["true"]}, "pipeline"),
            ({"pipeline": "p", "command": []}, "command"),
            ({"pipeline": "p", "command": ["true"], "mem": "lots"}, "mem"),
            ({"pipeline": "p", "command": ["true"], "cpu": "1"}, "cpu"),
            ({"pipeline": "p", "command": ["true"], "time_limit": "soon"}, "time_limit"),
            ({"pipeline": "p", "command": ["true"], "env": {"1BAD": "x"}}, "env"),
            ({"pipeline": "p", "command": ["true"], "colour": "red"}, "colour"),
            ({"pipeline": "p", "command": ["true"], "depends_on": ["j-nope"]}, "depends_on"),
        ]:
            r = c.post("/api/v1/jobs", json=bad)
            assert r.status_code == 422, (bad, r.text)
            assert r.json()["field"] == field, (bad, r.json())
        assert c.get("/api/v1/jobs/j-nope").status_code == 404
        assert c.get("/api/v1/jobs/j-nope/logs").json()["field"] == "id"
        big = {"reason": "x" * 100_000}
        r = c.post(f"/api/v1/jobs/{job['id']}/cancel", json=big)
        assert r.status_code == 413  # an action's body is capped well below the default
        wait_job(c, job["id"])
        r = c.post(f"/api/v1/jobs/{job['id']}/requeue", json={"reason": "again"})
        assert r.status_code == 200
        entries = c.get("/api/v1/audit", params={"limit": 1000}).json()
        actions = [(e["action"], e["principal"]) for e in entries]
        assert ("job.submit", "otto") in actions and ("job.requeue", "admin") in actions
        assert not any(e["action"] == "job.submit" and e["principal"] == "vera" for e in entries)


def test_quotas_at_run_time_summary_and_metrics(agent_factory, tmp_path) -> None:
    a = agent_factory(name="q")
    with a.client() as c:
        r = c.put("/api/v1/quotas/train", json={"cpu": 1, "mem": "512M", "max_running_jobs": 2, "priority": 5})
        assert r.status_code == 200, r.text
        q = r.json()
        assert q["configured"] and q["limit"]["cpu"] == 1 and q["limit"]["mem"] == 512 * 2**20
        r = c.put("/api/v1/quotas/train", json={"cpu": "1"})
        assert r.status_code == 422 and r.json()["field"] == "cpu"
        r1 = c.get("/api/v1/summary")
        assert r1.json()["jobs"] == {"running": 0, "pending": 0, "failed_recent": 0, "quotas_near_limit": 0}
        etag = r1.headers["etag"]
        job = submit(c, pipeline="train", command=["sleep", "30"], cpu=1, mem="100M")
        wait_job(c, job["id"], {"RUNNING"})
        r2 = c.get("/api/v1/summary", headers={"If-None-Match": etag})
        assert r2.status_code == 200 and r2.json()["jobs"]["running"] == 1
        assert r2.json()["jobs"]["quotas_near_limit"] == 1  # cpu 1 of 1
        metrics = httpx.get(f"{a.url}/metrics").text
        assert 'watchkeeper_jobs{pipeline="train",state="RUNNING"} 1.0' in metrics
        assert 'watchkeeper_quota_limit{pipeline="train",resource="cpu"} 1.0' in metrics
        assert 'watchkeeper_quota_usage{pipeline="train",resource="cpu"} 1.0' in metrics
        c.post(f"/api/v1/jobs/{job['id']}/cancel", json={})
        wait_job(c, job["id"])
        metrics = httpx.get(f"{a.url}/metrics").text
        assert 'watchkeeper_jobs_finished_total{pipeline="train",state="CANCELLED"} 1.0' in metrics
        assert c.delete("/api/v1/quotas/nope").status_code == 404
        c.put("/api/v1/quotas/keep", json={"gpus": 0})
    a.stop()
    a.start()
    with a.client() as c:
        # Quotas set over the API survive a restart; a deleted one is gone.
        assert c.get("/api/v1/quotas/train").json()["limit"]["cpu"] == 1
        assert c.delete("/api/v1/quotas/train").status_code == 204
        assert c.get("/api/v1/quotas/train").json()["configured"] is False
        listed = {q["pipeline"] for q in c.get("/api/v1/quotas").json()["quotas"]}
        assert "keep" in listed and "train" not in listed
        actions = [e["action"] for e in c.get("/api/v1/audit", params={"limit": 1000}).json()]
        assert actions.count("quota.put") == 2 and "quota.delete" in actions
