"""Restart safety against real agents: kill -9 with jobs running, a new agent on the same data dir."""

from __future__ import annotations

import os
import signal
import time

import psutil

from tests.agentproc import make_agent
from tests.jobs.conftest import submit, wait_job


def test_kill9_readopts_running_jobs_with_their_exit_codes(tmp_path) -> None:
    marks = tmp_path / "marks"
    marks.mkdir()
    a = make_agent(tmp_path, name="agent").start()
    jobs = {}
    try:
        with a.client() as c:
            for i in range(10):
                # Each run leaves one line in its marks file: a job started twice would leave two.
                cmd = f"echo started >> {marks}/{i}; sleep {1.5 + 0.3 * i}; exit {i}"
                jobs[i] = submit(c, pipeline=f"p{i % 3}", command=["sh", "-c", cmd], cpu=0.1, mem="10M")["id"]
            for jid in jobs.values():
                wait_job(c, jid, {"RUNNING"})
        a.kill()  # kill -9: the jobs live on in their own sessions
    finally:
        a.kill()
    time.sleep(0.5)
    b = _again(tmp_path, a)
    try:
        with b.client() as c:
            for i, jid in jobs.items():
                j = wait_job(c, jid, timeout=40)
                want = "COMPLETED" if i == 0 else "FAILED"
                assert j["state"] == want and j["exit_code"] == i, j
                assert j["attempt"] == 1
        for i in range(10):
            assert (marks / str(i)).read_text() == "started\n", f"job {i} started more than once"
    finally:
        b.stop()


def test_a_201_survives_kill9_and_a_vanished_job_is_lost(tmp_path) -> None:
    a = make_agent(tmp_path, name="agent").start()
    try:
        with a.client() as c:
            held = submit(c, pipeline="p", command=["true"], hold=True)
            gone = submit(c, pipeline="p", command=["sleep", "30"], cpu=0.1, mem="10M")
            wait_job(c, gone["id"], {"RUNNING"})
            pid = c.get(f"/api/v1/jobs/{gone['id']}").json()["pid"]
        a.kill()
    finally:
        a.kill()
    # The job's wrapper dies with the agent down and leaves no exit status (SIGKILL): LOST, said why.
    w = psutil.Process(pid)
    kids = w.children(recursive=True)
    os.kill(pid, signal.SIGKILL)
    for k in kids:
        k.kill()
    b = _again(tmp_path, a)
    try:
        with b.client() as c:
            h = c.get(f"/api/v1/jobs/{held['id']}").json()
            assert h["state"] == "PENDING" and h["reason"] == "Held"
            # Lost at re-adoption, or (a zombie still there at start) at the first poll: either way said why.
            g = wait_job(c, gone["id"])
            assert g["state"] == "LOST" and ("re-adopt" in g["reason"] or "exit status" in g["reason"]), g
    finally:
        b.stop()


def test_every_submit_answered_before_kill9_is_kept_with_its_audit_entry(tmp_path) -> None:
    """Submits are answered from the jobs journal, before their DuckDB commit: kill -9 right after a burst must
    lose none of them, nor their audit entries, and the audit chain must check at the restart."""
    answered: list[dict] = []
    replayed = False
    a = make_agent(tmp_path, name="agent").start()
    for round_ in range(3):  # until a kill finds answered rows still only in the journal
        try:
            with a.client() as c:
                answered += [
                    submit(c, pipeline="p", command=["true"], hold=i % 2 == 0, reason=f"r{round_}-{i}")
                    for i in range(60)
                ]
                os.kill(a.proc.pid, signal.SIGKILL)  # at once: the last commits are still to come
                a.proc.wait()
        finally:
            a.kill()
        a = _again(tmp_path, a)
        replayed = "a crash left uncommitted are now stored" in a.log()  # said by replay_jobs_journal
        if replayed:
            break
    b = a
    try:
        with b.client() as c:
            for job in answered:
                j = c.get(f"/api/v1/jobs/{job['id']}").json()
                assert j.get("id") == job["id"], f"answered job {job['id']} lost across kill -9: {j}"
                if job["reason"] == "Held":
                    assert j["state"] == "PENDING" and j["reason"] == "Held", j
            reasons = [e["detail"]["reason"] for e in c.get("/api/v1/audit", params={"limit": 10_000}).json()
                       if e["action"] == "job.submit"]  # fmt: skip
            assert sorted(reasons) == sorted(j["submit_reason"] for j in answered)
            v = c.get("/api/v1/audit/verify").json()
            assert v["ok"], v
            assert "BROKEN" not in c.get("/readyz").json()["checks"]["audit"]
            before = _metric(c, "watchkeeper_jobs_store_journaled_total")
            submit(c, pipeline="p", command=["true"], hold=True)
            assert _metric(c, "watchkeeper_jobs_store_journaled_total") > before  # answered from the journal
            assert _metric(c, "watchkeeper_jobs_journal_pending_bytes") >= 0
    finally:
        b.stop()
    assert replayed, "every kill came after the commits: the replay went untested"


def _metric(c, name: str) -> float:
    line = next(ln for ln in c.get("/metrics").text.splitlines() if ln.startswith(name + " "))
    return float(line.split()[-1])


def _again(tmp_path, a):
    """A new agent on `a`'s data dir (same name), listening where it did: started."""
    b = make_agent(tmp_path, name="agent")
    b.port, b.socket_path, b.args = a.port, a.socket_path, a.args
    return b.start()
