"""Dependencies against a real agent: a dependency that ended other than COMPLETED is never satisfied (Slurm's
`DependencyNeverSatisfied`), a job that asked for it (`kill_on_invalid_dep`, Slurm's --kill-on-invalid-dep) is
cancelled with the reason, and a requeued dependency makes the wait ordinary again."""

from __future__ import annotations

import time

from tests.jobs.conftest import submit, wait_job


def _reason_becomes(c, job_id: str, reason: str, timeout: float = 20.0) -> dict:
    deadline = time.monotonic() + timeout
    job: dict = {}
    while time.monotonic() < deadline:
        job = c.get(f"/api/v1/jobs/{job_id}").json()
        if job["reason"] == reason:
            return job
        time.sleep(0.05)
    raise AssertionError(f"job {job_id}: reason never became {reason}: {job}")


def test_a_failed_dependency_is_never_satisfied_and_kill_on_invalid_dep_cancels(agent_factory, tmp_path) -> None:
    a = agent_factory()
    marker = tmp_path / "second-time"
    # Fails the first time, succeeds when requeued.
    flaky = f"test -e {marker} || {{ touch {marker}; exit 3; }}"
    with a.client() as c:
        dep = submit(c, pipeline="p", command=[flaky], shell=True, cpu=0.1, mem="10M", hold=False)
        waits = submit(c, pipeline="p", command=["true"], cpu=0.1, mem="10M", depends_on=[dep["id"]])
        killed = submit(c, pipeline="p", command=["true"], cpu=0.1, mem="10M", depends_on=[dep["id"]],
                        kill_on_invalid_dep=True)  # fmt: skip
        assert killed["kill_on_invalid_dep"] is True and waits["kill_on_invalid_dep"] is False
        assert wait_job(c, dep["id"])["state"] == "FAILED"

        job = _reason_becomes(c, waits["id"], "DependencyNeverSatisfied")
        assert job["state"] == "PENDING"
        gone = wait_job(c, killed["id"])
        assert gone["state"] == "CANCELLED" and gone["cancelled_by"] == "watchkeeper-agent", gone
        assert gone["reason"] == f"DependencyNeverSatisfied: dependency {dep['id']} ended FAILED", gone
        assert gone["started_at"] is None and gone["ended_at"] is not None

        # Still waiting a while later: nothing cancels a job that did not ask for it.
        time.sleep(0.5)
        job = c.get(f"/api/v1/jobs/{waits['id']}").json()
        assert (job["state"], job["reason"]) == ("PENDING", "DependencyNeverSatisfied")

        # The dependency requeued: an ordinary wait again, and once it completes the dependant runs.
        r = c.post(f"/api/v1/jobs/{dep['id']}/requeue", json={})
        assert r.status_code == 200, r.text
        assert wait_job(c, dep["id"])["state"] == "COMPLETED"
        assert wait_job(c, waits["id"])["state"] == "COMPLETED"


def test_a_cancelled_dependency_cancels_a_dependant_that_asked_even_after_a_restart(agent_factory) -> None:
    a = agent_factory()
    with a.client() as c:
        dep = submit(c, pipeline="p", command=["true"], cpu=0.1, mem="10M", hold=True)
        killed = submit(c, pipeline="p", command=["true"], cpu=0.1, mem="10M", depends_on=[dep["id"]],
                        kill_on_invalid_dep=True)  # fmt: skip
        assert _reason_becomes(c, killed["id"], "Dependency")["state"] == "PENDING"
    a.stop()
    a.start()  # the flag is on record: the restarted agent still honours it
    with a.client() as c:
        assert c.get(f"/api/v1/jobs/{killed['id']}").json()["kill_on_invalid_dep"] is True
        r = c.post(f"/api/v1/jobs/{dep['id']}/cancel", json={})
        assert r.status_code == 200, r.text
        gone = wait_job(c, killed["id"])
        assert gone["state"] == "CANCELLED"
        assert gone["reason"] == f"DependencyNeverSatisfied: dependency {dep['id']} ended CANCELLED", gone


def test_kill_on_invalid_dep_must_be_a_boolean(agent_factory) -> None:
    a = agent_factory()
    with a.client() as c:
        r = c.post("/api/v1/jobs", json={"pipeline": "p", "command": ["true"], "kill_on_invalid_dep": "yes"})
        assert r.status_code == 422 and r.json()["field"] == "kill_on_invalid_dep", r.text
