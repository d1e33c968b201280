"""Regenerate the real Slurm captures used by tests/slurm/test_squeue_parse.py.

Starts a single-node Slurm (tests/slurmproc.py), makes jobs end up in each state we map, and saves,
verbatim: `squeue-<release>.json` (`squeue --json`), `scontrol-<release>.txt` (`scontrol show job -o`,
22.05 has no `--json` for it) and `jobcomp-<release>.txt` (the jobcomp/filetxt records); and
`roles-<release>.json` (job id -> what the job was made to be: "completed", "failed_exit3", ...);
and what Slurm says when it refuses or is down: `errors-<release>.json` (argv, exit code, stdout,
stderr of refused sbatch/scontrol calls, and of sbatch with slurmctld killed) and
`squeue-<release>-ctld-down.json` (`squeue --json` with slurmctld killed). `--errors-only`: just those.
Run as root where slurm-wlm and munge are installed; takes about two minutes (a TIMEOUT needs a
one-minute time limit to pass):

    .venv/bin/python tests/slurm/data/capture_squeue.py
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[2]))

from tests.slurmproc import SlurmCluster  # noqa: E402


def capture_errors() -> str:
    refused = [
        ["sbatch", "--parsable", "--partition=nope", "--wrap", "true"],
        ["sbatch", "--parsable", "--time=bogus", "--wrap", "true"],
        ["sbatch", "--parsable", "--mem=900G", "--wrap", "true"],
        ["sbatch", "--parsable", "--gres=gpu:1", "--wrap", "true"],
        # accepted without slurmdbd / accepted and left pending: kept to show they are not errors
        ["sbatch", "--parsable", "--account=nope", "--wrap", "true"],
        ["sbatch", "--parsable", "--qos=nope", "--wrap", "true"],
        ["scancel", "99999"],
        ["scontrol", "requeue", "99999"],
        ["scontrol", "show", "job", "-o", "99999"],
    ]
    calls = []
    with SlurmCluster() as c:
        for argv in refused:
            r = c.run(argv, check=False)
            calls.append({"argv": argv, "rc": r.returncode, "stdout": r.stdout, "stderr": r.stderr, "ctld": "up"})
        c.procs["slurmctld"].kill()
        c.procs["slurmctld"].wait(10)
        down = c.run(["squeue", "--json"], check=False, timeout=120)
        argv = ["sbatch", "--parsable", "--wrap", "true"]
        r = c.run(argv, check=False, timeout=120)
        calls.append({"argv": argv, "rc": r.returncode, "stdout": r.stdout, "stderr": r.stderr, "ctld": "down"})
    meta = json.loads(down.stdout)["meta"]
    version = meta.get("Slurm", meta.get("slurm", {})).get("version", {})
    release = f"{version.get('major')}.{int(version.get('minor', 0)):02d}"
    (HERE / f"squeue-{release}-ctld-down.json").write_text(down.stdout)
    (HERE / f"errors-{release}.json").write_text(json.dumps(calls, indent=1) + "\n")
    print(f"saved errors-{release}.json and squeue-{release}-ctld-down.json (squeue exited {down.returncode})")
    return release


def main() -> int:
    capture_errors()
    if "--errors-only" in sys.argv:
        return 0
    # jobacct_gather/linux + OverMemoryKill: Slurm's own memory enforcement without cgroups (polled; a job over
    # --mem is killed). Measured: it ends FAILED / JobLaunchFailure / SIGKILL, not OUT_OF_MEMORY, which only
    # task/cgroup reports. No oversubscription: a third 1-CPU job waits for Resources.
    conf = {
        "JobAcctGatherType": "jobacct_gather/linux",
        "JobAcctGatherFrequency": "1",
        "JobAcctGatherParams": "OverMemoryKill",
    }
    with SlurmCluster(extra_conf=conf) as c:
        roles: dict[int, str] = {}

        def sub(role: str, cmd: list[str], *opts: str) -> int:
            job = c.sbatch(cmd, "--mem=50M", *opts)
            roles[job] = role
            return job

        sub("completed", ["true"])
        sub("failed_exit3", ["sh", "-c", "exit 3"])
        sub("failed_signal9", ["sh", "-c", "kill -9 $$"])
        sub("over_memory_killed", ["python3", "-c", "b = bytearray(400 * 2**20); import time; time.sleep(5)"])
        sub("timeout", ["sleep", "300"], "--time=1")
        cancel = sub("cancelled_running", ["sleep", "300"])
        c.wait_state(cancel, "RUNNING")
        c.run(["scancel", str(cancel)])
        for job, _ in list(roles.items()):
            c.wait_state(job, "COMPLETED", "FAILED", "OUT_OF_MEMORY", "CANCELLED", "TIMEOUT", timeout=200)
        # A running job requeued goes back to PENDING (BeginTime) with restart_cnt 1.
        requeue = sub("requeued", ["sleep", "600"], "--requeue")
        c.wait_state(requeue, "RUNNING", timeout=60)
        c.run(["scontrol", "requeue", str(requeue)])
        c.wait_state(requeue, "PENDING", timeout=30)
        # Now the live ones: two CPUs, so two 1-CPU sleepers run and the rest wait.
        run1 = sub("running", ["sleep", "600"], "--comment=wk:j-0001", "--job-name=wk-train")
        sub("running_array_task", ["sleep", "600"], "--array=0-3%1")
        c.wait_state(run1, "RUNNING")
        sub("pending_resources", ["sleep", "600"])
        sub("pending_dependency", ["true"], f"--dependency=afterok:{run1}")
        failed = next(j for j, r in roles.items() if r == "failed_exit3")
        sub("pending_dependency_never", ["true"], f"--dependency=afterok:{failed}")
        sub("pending_held", ["true"], "--hold")
        sub("cancelled_pending", ["true"], "--hold")
        c.run(["scancel", str(max(roles))])
        time.sleep(4)  # one scheduling pass sets the pending reasons
        raw = c.run(["squeue", "--json"]).stdout
        scontrol = c.run(["scontrol", "show", "job", "-o"]).stdout
        jobcomp = c.jobcomp_path.read_text()
        meta = json.loads(raw)["meta"]
        version = meta.get("Slurm", meta.get("slurm", {})).get("version", {})
        release = f"{version.get('major')}.{int(version.get('minor', 0)):02d}"
    (HERE / f"squeue-{release}.json").write_text(raw)
    (HERE / f"scontrol-{release}.txt").write_text(scontrol)
    (HERE / f"jobcomp-{release}.txt").write_text(jobcomp)
    (HERE / f"roles-{release}.json").write_text(json.dumps({str(k): v for k, v in sorted(roles.items())}, indent=1))
    print(f"saved squeue-{release}.json ({len(raw)} bytes) and roles-{release}.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
