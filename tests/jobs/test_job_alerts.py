"""The jobs' alert kinds: the pure signal builders, and a real agent firing job_failed and quota_near_limit."""

from __future__ import annotations

import time

from agent.alerting.job_signals import job_signals, quota_signals
from agent.schemas.jobs import Job, QuotaSpec, QuotaUsage
from tests.jobs.conftest import submit, wait_job


def _job(**kw) -> Job:
    base = dict(id="j-1", pipeline="train", state="RUNNING", command=["x"], cpu=1, mem=1, submitted_by="a",
                submitted_at=0.0)  # fmt: skip
    return Job(**{**base, **kw})


def test_job_signals_judge_each_kind() -> None:
    now = 10_000.0
    sigs = job_signals(
        [
            _job(id="j-fail", state="FAILED", exit_code=3, reason="exit code 3", ended_at=now - 10),
            _job(id="j-old", state="FAILED", exit_code=3, ended_at=now - 7200),  # an hour ago: no longer said
            _job(id="j-long", state="RUNNING", started_at=now - 500),
            _job(id="j-ok", state="RUNNING", started_at=now - 100),
            _job(id="j-new", pipeline="fresh", state="RUNNING", started_at=now - 100),
            _job(id="j-wait", state="PENDING", reason="QuotaCpu", submitted_at=now - 4000),
            _job(id="j-held", state="PENDING", reason="Held", submitted_at=now - 4000),
        ],
        {"train": 200.0, "fresh": None},
        now,
    )
    by = {(s.kind, s.subject): s for s in sigs}
    assert by[("job_failed", "j-fail")].breached and by[("job_failed", "j-fail")].labels["exit_code"] == "3"
    assert ("job_failed", "j-old") not in by
    assert by[("job_duration", "j-long")].breached and by[("job_duration", "j-long")].value == 2.5
    assert not by[("job_duration", "j-ok")].breached
    assert by[("job_duration", "j-new")].value is None and not by[("job_duration", "j-new")].breached
    assert by[("job_pending", "j-wait")].breached and ("job_pending", "j-held") not in by


def test_quota_signals_use_the_higher_of_allocated_and_used() -> None:
    q = QuotaUsage(pipeline="train", quota=QuotaSpec(cpu=2, mem=100, near_limit=0.8), configured=True,
                   running_jobs=1, pending_jobs=0, allocated={"cpu": 1.0, "mem": 50.0},
                   used={"cpu": 1.9, "mem": None}, limit={"cpu": 2.0, "mem": 100.0, "gpus": None},
                   near_limit=["cpu"])  # fmt: skip
    by = {s.subject: s for s in quota_signals([q])}
    assert by["train/cpu"].breached and abs(by["train/cpu"].value - 0.95) < 1e-9
    assert not by["train/mem"].breached and "train/gpus" not in by


CONFIG = """
[alerting]
interval = "0.5s"

[[alerting.rules]]
name = "job_failed"
kind = "job_failed"

[[alerting.rules]]
name = "quota_near_limit"
kind = "quota_near_limit"

[[quotas]]
pipeline = "train"
cpu = 1
"""


def test_agent_fires_job_failed_and_quota_near_limit(agent_factory) -> None:
    a = agent_factory(config=CONFIG)
    with a.client() as c:
        bad = submit(c, pipeline="etl", command=["sh", "-c", "exit 4"])
        wait_job(c, bad["id"])
        hog = submit(c, pipeline="train", command=["sleep", "30"], cpu=1, mem="10M")
        wait_job(c, hog["id"], {"RUNNING"})
        deadline = time.monotonic() + 20
        firing: dict = {}
        while time.monotonic() < deadline:
            alerts = c.get("/api/v1/alerting", params={"state": "firing"}).json()["alerts"]
            firing = {(x["kind"], x["subject"]): x for x in alerts}
            if ("job_failed", bad["id"]) in firing and ("quota_near_limit", "train/cpu") in firing:
                break
            time.sleep(0.2)
        assert ("job_failed", bad["id"]) in firing, firing
        assert "exit code 4" in firing[("job_failed", bad["id"])]["summary"]
        assert firing[("quota_near_limit", "train/cpu")]["labels"]["pipeline"] == "train"
        c.post(f"/api/v1/jobs/{hog['id']}/cancel", json={})
