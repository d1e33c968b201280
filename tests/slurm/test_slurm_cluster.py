"""The single-node Slurm that tests and bench/jobs.py start (tests/slurmproc.py) really schedules jobs."""

from __future__ import annotations

import os
import time

from tests.slurmproc import SlurmCluster


def test_a_job_is_seen_running_then_completed_in_squeue_json_and_the_jobcomp_file(slurm: SlurmCluster):
    marker = slurm.base / "jobs" / "ran-once"
    job = slurm.sbatch(["sh", "-c", f"echo $SLURM_JOB_ID >> {marker}; sleep 5"])
    assert slurm.wait_state(job, "RUNNING", timeout=60) == "RUNNING"
    raw = slurm.squeue_json()
    mine = [j for j in raw["jobs"] if j["job_id"] == job]
    assert len(mine) == 1 and mine[0]["partition"] == slurm.partition, mine

    assert slurm.wait_state(job, "COMPLETED", timeout=60) == "COMPLETED"
    # Slurm recorded the end itself (the backstop once the job leaves squeue after MinJobAge).
    deadline = time.monotonic() + 20
    while job not in slurm.jobcomp() and time.monotonic() < deadline:
        time.sleep(0.1)
    rec = slurm.jobcomp()[job]
    assert rec["JobState"] == "COMPLETED" and rec["ExitCode"].strip() == "0:0", rec
    assert marker.read_text().split() == [str(job)]  # ran, and ran once


def test_a_failing_job_ends_failed_with_its_exit_code(slurm: SlurmCluster):
    job = slurm.sbatch(["sh", "-c", "exit 3"])
    assert slurm.wait_state(job, "FAILED", "COMPLETED", timeout=60) == "FAILED"
    deadline = time.monotonic() + 20
    while job not in slurm.jobcomp() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert slurm.jobcomp()[job]["ExitCode"].strip() == "3:0"


def test_an_afterok_chain_runs_in_order_and_waits_on_dependency(slurm: SlurmCluster):
    log = slurm.base / "jobs" / f"chain-{os.getpid()}-{time.monotonic_ns()}"
    a = slurm.sbatch(["sh", "-c", f"sleep 3; echo a >> {log}"])
    b = slurm.sbatch(["sh", "-c", f"echo b >> {log}"], f"--dependency=afterok:{a}")
    c = slurm.sbatch(["sh", "-c", f"echo c >> {log}"], f"--dependency=afterok:{b}", "--kill-on-invalid-dep=yes")
    jobs = {j["job_id"]: j for j in slurm.squeue_json()["jobs"]}
    assert jobs[c]["job_state"] == "PENDING" and jobs[c]["state_reason"] == "Dependency", jobs[c]
    assert slurm.wait_state(c, "COMPLETED", timeout=90) == "COMPLETED"
    assert log.read_text().split() == ["a", "b", "c"]


def test_a_failed_dependency_cancels_the_dependent_with_kill_on_invalid_dep(slurm: SlurmCluster):
    a = slurm.sbatch(["false"])
    b = slurm.sbatch(["true"], f"--dependency=afterok:{a}", "--kill-on-invalid-dep=yes")
    assert slurm.wait_state(b, "CANCELLED", "COMPLETED", timeout=60) == "CANCELLED"


def _start_sleeper(cluster: SlurmCluster) -> int:
    pidfile = cluster.base / "jobs" / f"sleeper-{time.monotonic_ns()}.pid"
    job = cluster.sbatch(["sh", "-c", f"echo $$ > {pidfile}; exec sleep 300"])
    cluster.wait_state(job, "RUNNING", timeout=60)
    deadline = time.monotonic() + 20
    while not pidfile.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    sleeper = int(pidfile.read_text())
    assert _cmdline(sleeper) == ["sleep", "300"]
    return sleeper


def test_stop_leaves_no_daemon_or_job_behind():
    cluster = SlurmCluster().start()
    base = cluster.base
    sleeper = _start_sleeper(cluster)
    pids = [p.pid for p in cluster.procs.values()]
    cluster.stop()
    for pid in [*pids, sleeper]:
        assert not os.path.exists(f"/proc/{pid}") or _zombie(pid), pid
    assert cluster.leftovers() == []
    assert not base.exists()


def test_stop_kills_the_jobs_even_when_slurmctld_died_first():
    # Jobs outlive slurmd and slurmctld by design (slurmstepd is its own session): without the
    # controller scancel can't reach them, and stop() must still leave nothing behind.
    cluster = SlurmCluster().start()
    try:
        sleeper = _start_sleeper(cluster)
        cluster.procs["slurmctld"].kill()
        cluster.procs["slurmctld"].wait(10)
    finally:
        cluster.stop()
    assert not os.path.exists(f"/proc/{sleeper}") or _zombie(sleeper)
    assert cluster.leftovers() == []


def _cmdline(pid: int) -> list[str]:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().decode(errors="replace").split("\0")[:-1]
    except OSError:
        return []


def _zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True
