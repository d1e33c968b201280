"""The Slurm backend (agent/jobs/slurm/backend.py) through a real agent's API against a real single-node Slurm:
one cluster for the module (tests/slurm/agents.py says how it is set up)."""

from __future__ import annotations

import time

import httpx
import pytest

from tests.jobs.conftest import FINAL, submit, wait_job
from tests.slurm.agents import forgotten, restart, slurm_state, start_agent
from tests.slurmproc import _which

pytestmark = pytest.mark.usefixtures("empty_queue")


def test_a_job_runs_in_slurm_through_the_same_api(agent, cluster):
    with agent.client() as c:
        j = submit(c, pipeline="train", command=["sh", "-c", "echo out; echo err >&2; exit 3"], cpu=0.5, mem="40M",
                   time_limit="5m", env={"WK_X": "a,b c"})  # fmt: skip
        assert (j["tier"], j["backend"], j["state"]) == ("slurm", "slurm", "PENDING")
        sid = j["slurm"]["job_id"]
        assert sid > 0 and j["slurm"]["partition"] == cluster.partition
        # Slurm really has it, with our tag, request and limits
        rec = cluster.run(["scontrol", "show", "job", "-o", str(sid)]).stdout
        assert f"Comment=wk:agent:{j['id']}" in rec and "TimeLimit=00:05:00" in rec and "MinMemoryNode=40M" in rec
        done = wait_job(c, j["id"], timeout=60)
        assert (done["state"], done["exit_code"], done["reason"]) == ("FAILED", 3, "exit code 3"), done
        assert done["started_at"] and done["ended_at"] >= done["started_at"]
        logs = c.get(f"/api/v1/jobs/{j['id']}/logs", params={"stream": "stdout"}).json()
        assert logs["text"] == "out\n"
        assert c.get(f"/api/v1/jobs/{j['id']}/logs", params={"stream": "stderr"}).json()["text"] == "err\n"
        ok = wait_job(c, submit(c, pipeline="train", command=["true"])["id"], timeout=60)
        assert (ok["state"], ok["exit_code"]) == ("COMPLETED", 0)
        # the same agent still runs a local pipeline's jobs itself
        loc = submit(c, pipeline="here", command=["true"], cpu=0.1, mem="10M")
        assert loc["backend"] == "local"
        assert wait_job(c, loc["id"])["tier"] not in (None, "slurm")


def test_pending_reasons_cancel_and_quota_usage_from_tres(agent, cluster):
    with agent.client() as c:
        held = submit(c, pipeline="train", command=["true"], hold=True)
        run = submit(c, pipeline="train", command=["sleep", "300"], cpu=1, mem="100M")
        dep = submit(c, pipeline="train", command=["true"], depends_on=[run["id"]])
        assert f"afterok:{run['slurm']['job_id']}" in cluster.run(
            ["scontrol", "show", "job", "-o", str(dep["slurm"]["job_id"])]).stdout  # fmt: skip
        wait_job(c, run["id"], {"RUNNING"}, timeout=60)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            h, d = (c.get(f"/api/v1/jobs/{x['id']}").json() for x in (held, dep))
            if h["reason"] == "Held" and d["reason"] == "Dependency":
                break
            time.sleep(0.2)
        assert (h["state"], h["reason"], h["slurm"]["reason"]) == ("PENDING", "Held", "JobHeldUser"), h
        assert (d["state"], d["reason"]) == ("PENDING", "Dependency"), d
        # usage = the running job's TRES on the cluster (1 core, 100 MiB), next to the configured share
        q = c.get("/api/v1/quotas/train").json()
        assert q["backend"] == "slurm" and q["running_jobs"] == 1
        assert q["allocated"]["cpu"] == 1.0 and q["allocated"]["mem"] == 100 * 2**20
        assert q["limit"]["cpu"] == 2.0 and "cpu" in q["near_limit"]  # 1 of 2 cores, near_limit 0.5
        r = c.post(f"/api/v1/jobs/{run['id']}/cancel", json={"reason": "enough"})
        assert r.status_code == 200, r.text
        done = wait_job(c, run["id"], timeout=30)
        assert (done["state"], done["cancelled_by"]) == ("CANCELLED", "admin"), done
        assert done["reason"] == "cancelled by admin: enough"
        assert slurm_state(cluster, run["slurm"]["job_id"]) in ("CANCELLED", "gone")
        # its dependant can never run: Slurm cancels it (--kill-on-invalid-dep), and so do we say
        assert wait_job(c, dep["id"], timeout=30)["state"] == "CANCELLED"
        assert c.post(f"/api/v1/jobs/{held['id']}/cancel").json()["state"] in ("CANCELLED", "PENDING")
        assert wait_job(c, held["id"], timeout=30)["state"] == "CANCELLED"


def test_requeue_runs_the_same_slurm_job_again(agent, cluster, tmp_path):
    marks = tmp_path / "marks"
    with agent.client() as c:
        j = submit(c, pipeline="train", command=["sh", "-c", f'echo "$SLURM_JOB_ID $SLURM_RESTART_COUNT" >> {marks}'])
        assert wait_job(c, j["id"], timeout=60)["state"] == "COMPLETED"
        r = c.post(f"/api/v1/jobs/{j['id']}/requeue", json={"reason": "again"})
        assert r.status_code == 200, r.text
        again = r.json()
        assert (again["attempt"], again["state"], again["slurm"]["job_id"]) == (2, "PENDING", j["slurm"]["job_id"])
        done = wait_job(c, j["id"], timeout=60)
        assert (done["state"], done["attempt"]) == ("COMPLETED", 2), done
        sid = j["slurm"]["job_id"]
        assert marks.read_text().split("\n")[:2] == [f"{sid} ", f"{sid} 1"]  # ran twice, as the same Slurm job
        attempts = c.get(f"/api/v1/jobs/{j['id']}/attempts").json()
        assert [a["state"] for a in attempts] == ["COMPLETED", "COMPLETED"]
        # once Slurm has forgotten the job (MinJobAge), a requeue submits it afresh
        deadline = time.monotonic() + 60
        while not forgotten(cluster, sid) and time.monotonic() < deadline:
            time.sleep(0.5)
        third = c.post(f"/api/v1/jobs/{j['id']}/requeue").json()
        assert third["attempt"] == 3 and third["slurm"]["job_id"] != sid
        assert wait_job(c, j["id"], timeout=60)["state"] == "COMPLETED"
        assert len(marks.read_text().splitlines()) == 3


def test_a_failed_slurm_job_is_retried_by_its_policy_as_a_new_slurm_job(agent, cluster, tmp_path):
    marks, seen = tmp_path / "marks", tmp_path / "seen"
    # fails with 3 the first time, succeeds the second
    flaky = f'echo "$SLURM_JOB_ID $WATCHKEEPER_JOB_ATTEMPT" >> {marks}; [ -e {seen} ] && exit 0; touch {seen}; exit 3'
    with agent.client() as c:
        j = submit(c, pipeline="train", command=["sh", "-c", flaky], retry={"max_retries": 2, "backoff_s": 1})
        # an exit code the policy doesn't retry on ends it at once
        other = submit(c, pipeline="train", command=["sh", "-c", "exit 5"],
                       retry={"max_retries": 2, "on_exit_codes": [3], "backoff_s": 0})  # fmt: skip
        done = wait_job(c, j["id"], timeout=90)
        assert (done["state"], done["attempt"]) == ("COMPLETED", 2), done
        attempts = c.get(f"/api/v1/jobs/{j['id']}/attempts").json()
        assert [(a["attempt"], a["state"], a["exit_code"]) for a in attempts] == [(1, "FAILED", 3), (2, "COMPLETED", 0)]
        first, second = (a["slurm"]["job_id"] for a in attempts)
        assert second != first and second == done["slurm"]["job_id"]
        assert marks.read_text().split() == [str(first), "1", str(second), "2"]  # each attempt ran once
        o = wait_job(c, other["id"], timeout=90)
        assert (o["state"], o["attempt"], o["exit_code"]) == ("FAILED", 1, 5), o


def test_a_requeue_by_slurm_itself_ends_the_attempt_requeued(agent, cluster):
    with agent.client() as c:
        j = submit(c, pipeline="train", command=["sleep", "300"])
        wait_job(c, j["id"], {"RUNNING"}, timeout=60)
        cluster.run(["scontrol", "requeue", str(j["slurm"]["job_id"])])  # by hand, outside the agent
        deadline = time.monotonic() + 30
        cur = {}
        while time.monotonic() < deadline:
            cur = c.get(f"/api/v1/jobs/{j['id']}").json()
            if cur["attempt"] == 2:
                break
            time.sleep(0.2)
        assert (cur["attempt"], cur["state"], cur["slurm"]["job_id"]) == (2, "PENDING", j["slurm"]["job_id"]), cur
        first = c.get(f"/api/v1/jobs/{j['id']}/attempts").json()[0]
        assert first["state"] == "REQUEUED" and first["reason"].startswith("requeued by Slurm"), first
        c.post(f"/api/v1/jobs/{j['id']}/cancel")
        assert wait_job(c, j["id"], timeout=30)["state"] == "CANCELLED"


def test_slurm_refusals_are_clear_answers(agent, cluster):
    with agent.client() as c:
        r = c.put("/api/v1/quotas/bad", json={"backend": "slurm", "partition": "nope"})
        assert r.status_code == 200, r.text
        r = c.post("/api/v1/jobs", json={"pipeline": "bad", "command": ["true"]})
        assert r.status_code == 422, r.text
        body = r.json()
        assert body["field"] == "partition" and "Invalid partition name specified" in body["detail"], body
        r = c.post("/api/v1/jobs", json={"pipeline": "train", "command": ["true"], "gpus": ["GPU-x"]})
        assert (r.status_code, r.json()["field"]) == (422, "gpus")
        r = c.post("/api/v1/jobs", json={"pipeline": "train", "command": ["true"], "gpus": 1})
        assert (r.status_code, r.json()["field"]) == (422, "gpus"), r.text  # this cluster has no GPU GRES
        # nothing refused was kept
        assert c.get("/api/v1/jobs", params={"pipeline": "bad"}).json()["total"] == 0


def test_over_memory_is_out_of_memory_only_on_slurms_word(agent, cluster):
    with agent.client() as c:
        hog = ["python3", "-c", "b = bytearray(300 * 2**20); import time; time.sleep(20)"]
        j = submit(c, pipeline="train", command=hog, mem="50M")
        done = wait_job(c, j["id"], timeout=60)
        assert done["state"] == "OUT_OF_MEMORY", done
        assert "exceeded memory limit" in done["reason"] and done["signal"] == 9, done
        assert done["slurm"]["state"] == "FAILED"  # what Slurm itself said (no task/cgroup)
        # a SIGKILL that is not Slurm's memory kill stays FAILED
        k = wait_job(c, submit(c, pipeline="train", command=["sh", "-c", "kill -9 $$"])["id"], timeout=60)
        assert k["state"] == "FAILED", k


def test_agent_restart_reattaches_to_its_slurm_jobs(tmp_path, cluster):
    a = start_agent(tmp_path, cluster)
    go = tmp_path / "go"  # the jobs end only once the agent is down
    wait_go = f"while [ ! -e {go} ]; do sleep 0.2; done; "
    with a.client() as c:
        long = submit(c, pipeline="train", command=["sh", "-c", wait_go + "sleep 20; exit 4"])
        short = submit(c, pipeline="train", command=["sh", "-c", wait_go + "exit 5"])
        # its batch script SIGKILLed once the agent is down (as a node's OOM killer would): no rc file can follow.
        # (A `scancel` raced: the script sometimes saw its command end before its own SIGTERM, and wrote 143.)
        killed = submit(c, pipeline="train", command=["sh", "-c", wait_go + "kill -9 $PPID; sleep 1"])
        for j in (long, short, killed):
            wait_job(c, j["id"], {"RUNNING"}, timeout=60)
    a.kill()  # kill -9 mid-run
    go.touch()
    # while it is down: `short` ends and Slurm forgets it (MinJobAge 5 s); `killed` ends with no rc file
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline and not all(forgotten(cluster, j["slurm"]["job_id"]) for j in (short, killed)):
        time.sleep(0.5)
    b = restart(a)
    try:
        with b.client() as c:
            got = {k: wait_job(c, j["id"], timeout=60) for k, j in (("short", short), ("killed", killed))}
            got["long"] = c.get(f"/api/v1/jobs/{long['id']}").json()
            assert got["long"]["state"] == "RUNNING"  # re-attached, still running
            got["long"] = wait_job(c, long["id"], timeout=60)
            assert (got["long"]["state"], got["long"]["exit_code"]) == ("FAILED", 4), got["long"]
            assert (got["short"]["state"], got["short"]["exit_code"]) == ("FAILED", 5), got["short"]
            assert "rc file" in got["short"]["reason"]
            # no rc file and gone from Slurm's memory: how it ended is read from slurmctld's jobcomp file (found
            # through `scontrol show config`), not called LOST
            assert (got["killed"]["state"], got["killed"]["signal"]) == ("FAILED", 9), got["killed"]
            assert "jobcomp record" in got["killed"]["reason"], got["killed"]
    finally:
        b.stop()


def test_a_job_that_left_no_trace_anywhere_is_lost(tmp_path, cluster):
    """No rc file, Slurm forgot it, and no jobcomp record to read (here: the agent is pointed at an empty file,
    as on a submit host that can't see the controller's): LOST, saying why, never a guessed state."""
    nothing = tmp_path / "jobcomp-elsewhere.txt"
    nothing.write_text("")
    a = start_agent(tmp_path, cluster, slurm_extra=f'jobcomp_file = "{nothing}"')
    go = tmp_path / "go"
    with a.client() as c:
        killed = submit(c, pipeline="train", command=["sh", "-c", f"while [ ! -e {go} ]; do sleep 0.2; done; "
                                                                   "kill -9 $PPID; sleep 1"])  # fmt: skip
        wait_job(c, killed["id"], {"RUNNING"}, timeout=60)
    a.kill()
    go.touch()
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline and not forgotten(cluster, killed["slurm"]["job_id"]):
        time.sleep(0.5)
    assert cluster.jobcomp()[killed["slurm"]["job_id"]]["JobState"] == "FAILED"  # Slurm did record it
    b = restart(a)
    try:
        with b.client() as c:
            got = wait_job(c, killed["id"], timeout=60)
            assert got["state"] == "LOST" and "no rc file" in got["reason"], got
    finally:
        b.stop()


def test_a_restarted_agent_cancels_the_slurm_jobs_it_never_recorded(tmp_path, cluster):
    """A crash between sbatch and the commit leaves a job tagged as ours that no caller got a 201 for: the next
    start cancels it. Its own jobs, and other agents' and people's jobs, are left alone."""
    a = start_agent(tmp_path, cluster)
    with a.client() as c:
        keep = wait_job(c, submit(c, pipeline="train", command=["sleep", "300"])["id"], {"RUNNING"}, timeout=60)
    a.kill()
    tag = f"wk:{keep['host']}:"
    orphan = cluster.sbatch(["sleep", "300"], f"--comment={tag}j-0neveranswrd")
    others = [
        cluster.sbatch(["sleep", "300"], "--comment=wk:another-agent:j-0neveranswrd"),
        cluster.sbatch(["sleep", "300"]),
    ]
    time.sleep(1.5)  # submitted before the next agent starts (Slurm's times are whole seconds)
    b = restart(a)
    try:
        assert cluster.wait_state(orphan, "CANCELLED", timeout=60) == "CANCELLED"
        with b.client() as c:
            assert c.get(f"/api/v1/jobs/{keep['id']}").json()["state"] == "RUNNING"
            assert "watchkeeper_slurm_orphans_cancelled_total 1.0" in c.get("/metrics").text
        assert slurm_state(cluster, keep["slurm"]["job_id"]) == "RUNNING"
        assert all(slurm_state(cluster, sid) in ("PENDING", "RUNNING") for sid in others)
    finally:
        b.stop()


@pytest.mark.timeout(300)
def test_slurm_down_refuses_submits_keeps_jobs_and_recovers(tmp_path, own_cluster):
    cluster = own_cluster
    a = start_agent(tmp_path, cluster)
    try:
        with a.client() as c:
            c.timeout = httpx.Timeout(90)  # sbatch with slurmctld down fails after ~9 s
            run = submit(c, pipeline="train", command=["sleep", "300"])
            wait_job(c, run["id"], {"RUNNING"}, timeout=60)
            ctld = cluster.procs["slurmctld"]
            ctld.kill()
            ctld.wait(10)
            r = c.post("/api/v1/jobs", json={"pipeline": "train", "command": ["true"]})
            assert r.status_code == 503, r.text
            assert "Unable to contact slurm controller" in r.json()["detail"]
            deadline = time.monotonic() + 60
            ready = {}
            while time.monotonic() < deadline:
                ready = c.get("/readyz").json()
                if "slurm" in ready["checks"].get("jobs", ""):
                    break
                time.sleep(0.5)
            assert "Slurm unreachable" in ready["checks"]["jobs"], ready
            # the agent keeps serving its local jobs and keeps the Slurm job as it was
            loc = wait_job(c, submit(c, pipeline="here", command=["true"], cpu=0.1, mem="10M")["id"])
            assert loc["state"] == "COMPLETED"
            assert c.get(f"/api/v1/jobs/{run['id']}").json()["state"] == "RUNNING"
            # slurmctld back (its state dir keeps the jobs): the agent picks up where it was
            cluster._spawn("slurmctld", [_which("slurmctld") or "slurmctld", "-D", "-f", str(cluster.conf)])
            ok = None
            deadline = time.monotonic() + 90
            while time.monotonic() < deadline:
                r = c.post("/api/v1/jobs", json={"pipeline": "train", "command": ["true"]})
                if r.status_code == 201:
                    ok = r.json()
                    break
                time.sleep(1)
            assert ok is not None, r.text
            assert wait_job(c, ok["id"], timeout=60)["state"] == "COMPLETED"
            assert c.get(f"/api/v1/jobs/{run['id']}").json()["state"] == "RUNNING"
            assert "slurm" not in c.get("/readyz").json()["checks"]["jobs"]
            c.post(f"/api/v1/jobs/{run['id']}/cancel")
            assert wait_job(c, run["id"], timeout=60)["state"] == "CANCELLED"
    finally:
        a.stop()


@pytest.mark.timeout(300)
def test_a_time_limit_ends_timeout(tmp_path, own_cluster):
    # Slurm's smallest limit is a minute and it checks limits every ~30 s: this takes 60-100 s.
    agent = start_agent(tmp_path, own_cluster)
    try:
        with agent.client() as c:
            j = submit(c, pipeline="train", command=["sleep", "600"], time_limit="30s")
            done = wait_job(c, j["id"], FINAL, timeout=180)
            assert done["state"] == "TIMEOUT", done
            assert done["reason"] == "time limit 60 s reached" and done["signal"] == 15, done
    finally:
        agent.stop()
