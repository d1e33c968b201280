"""agent/jobs/slurm/submit.py: the sbatch command line and script a job becomes, run on a real Slurm,
and Slurm's refusals (captured from Slurm 22.05: tests/slurm/data/errors-22.05.json) in our words."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from agent.jobs.slurm.squeue import SlurmParseError, parse_squeue
from agent.jobs.slurm.states import map_job
from agent.jobs.slurm.submit import (
    SbatchRequest,
    SlurmRefused,
    batch_script,
    parse_sbatch_output,
    refusal,
    sbatch_argv,
    slurm_minutes,
)
from tests.slurmproc import SlurmCluster

DATA = Path(__file__).parent / "data"


def test_the_command_line_for_a_full_request():
    req = SbatchRequest(
        command=["train", "--lr", "0.1"],
        job_dir="/data/jobs/j-1",
        name="wk-train",
        comment="wk:j-1",
        cpus=1.5,
        mem_bytes=3 * 2**30 + 1,
        gpus=2,
        time_limit_s=5400,
        partition="gpu",
        account="ml",
        qos="high",
        after_ok=[11, 12],
        hold=True,
    )
    assert sbatch_argv(req) == [
        "sbatch",
        "--parsable",
        "--output=/data/jobs/j-1/stdout",
        "--error=/data/jobs/j-1/stderr",
        "--kill-on-invalid-dep=yes",
        "--job-name=wk-train",
        "--comment=wk:j-1",
        "--cpus-per-task=2",  # whole CPUs, never fewer than asked
        "--mem=3073M",  # rounded up
        "--gres=gpu:2",
        "--time=0-01:30:00",
        "--partition=gpu",
        "--account=ml",
        "--qos=high",
        "--chdir=/data/jobs/j-1",
        "--dependency=afterok:11:12",
        "--hold",
    ]
    arr = sbatch_argv(SbatchRequest(command=["x"], job_dir="/d/100%", array="0-9%2"))
    assert "--output=/d/100%%/stdout.%a" in arr and "--array=0-9%2" in arr
    assert sbatch_argv(SbatchRequest(command=["x"], job_dir="/d", begin_s=20))[-1] == "--begin=now+20"  # a backoff
    assert not any(a.startswith("--begin") for a in sbatch_argv(SbatchRequest(command=["x"], job_dir="/d")))


def test_time_limits_round_up_to_whole_minutes():
    assert slurm_minutes(1) == "0-00:01:00"
    assert slurm_minutes(60) == "0-00:01:00"
    assert slurm_minutes(61) == "0-00:02:00"
    assert slurm_minutes(90061) == "1-01:02:00"


def test_sbatch_output_and_garbage():
    assert parse_sbatch_output("123\n") == 123
    assert parse_sbatch_output("124;cluster\n") == 124
    with pytest.raises(SlurmRefused) as e:
        parse_sbatch_output("Submitted batch job 5\n")  # not --parsable's shape
    assert e.value.status == 502


def test_real_refusals_become_clear_answers():
    calls = json.loads((DATA / "errors-22.05.json").read_text())
    got = {}
    for c in calls:
        if c["rc"] != 0:
            r = refusal(c["rc"], c["stderr"], c["argv"][0])
            got[" ".join(c["argv"][1:3]) + (" (ctld down)" if c["ctld"] == "down" else "")] = (r.status, r.field)
            assert r.message and f"{c['argv'][0]}: error:" not in r.message, c  # Slurm's words, not its prefix
    assert got == {
        "--parsable --partition=nope": (422, "partition"),
        "--parsable --time=bogus": (422, "time_limit"),
        "--parsable --mem=900G": (409, "mem"),
        "--parsable --gres=gpu:1": (422, "gpus"),
        "requeue 99999": (404, None),
        "show job": (404, None),
        "--parsable --wrap (ctld down)": (503, None),
    }
    # without slurmdbd Slurm takes any account or QOS, and scancel of an unknown job says nothing
    accepted = {" ".join(c["argv"][1:3]) for c in calls if c["rc"] == 0}
    assert accepted == {"--parsable --account=nope", "--parsable --qos=nope", "99999"}


def test_squeue_with_slurmctld_down_is_refused_not_read_as_an_empty_queue():
    # measured: squeue --json exits 0 after ~9 s with an error entry and no jobs
    with pytest.raises(SlurmParseError, match="Failed while looking for jobs"):
        parse_squeue((DATA / "squeue-22.05-ctld-down.json").read_text())


def submit(cluster: SlurmCluster, req: SbatchRequest) -> int:
    r = subprocess.run(
        sbatch_argv(req, shutil.which("sbatch") or "sbatch"),
        input=batch_script(req),
        capture_output=True,
        text=True,
        env=cluster.env,
        timeout=30,
    )
    if r.returncode != 0:
        raise refusal(r.returncode, r.stderr)
    return parse_sbatch_output(r.stdout)


def wait_file(p: Path, timeout: float = 30) -> str:
    deadline = time.monotonic() + timeout
    while not p.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    return p.read_text()


def test_a_job_runs_its_argv_word_by_word_with_its_env_and_keeps_its_exit_status(slurm: SlurmCluster, tmp_path):
    job_dir = slurm.base / "jobs" / f"j-argv-{time.monotonic_ns()}"
    job_dir.mkdir()
    workdir = job_dir / "work dir"
    workdir.mkdir()
    prog = (
        "import json, os, sys; json.dump({'argv': sys.argv[1:], 'env': os.environ['WK_X'], 'cwd': os.getcwd()}, "
        "open('seen.json', 'w')); print('to stdout'); sys.exit(3)"
    )
    argv = ["python3", "-c", prog, "a b", "$HOME", "it's", "*", "--x=;rm -rf /"]
    req = SbatchRequest(
        command=argv,
        job_dir=str(job_dir),
        name="wk-test",
        comment="wk:j-argv",
        cpus=0.5,
        mem_bytes=64 * 2**20,
        time_limit_s=90,
        workdir=str(workdir),
        env={"WK_X": "x,y z'q\"$HOME"},
    )
    job = submit(slurm, req)
    assert wait_file(job_dir / "rc").strip() == "3"
    seen = json.loads((workdir / "seen.json").read_text())
    assert seen == {"argv": argv[3:], "env": "x,y z'q\"$HOME", "cwd": str(workdir)}
    assert (job_dir / "stdout").read_text() == "to stdout\n"
    assert slurm.wait_state(job, "FAILED", "COMPLETED", timeout=30) == "FAILED"
    sj = next(j for j in parse_squeue(slurm.run(["squeue", "--json"]).stdout).jobs if j.job_id == job)
    assert (sj.name, sj.comment, sj.time_limit_s, sj.tres_req.get("mem"), sj.tres_req.get("cpu")) == (
        "wk-test",
        "wk:j-argv",
        120.0,
        "64M",
        "1",
    )
    m = map_job(sj)
    assert (m.state, m.exit_code, m.reason) == ("FAILED", 3, "exit code 3")


def test_an_array_keeps_one_rc_and_output_per_task(slurm: SlurmCluster):
    job_dir = slurm.base / "jobs" / f"j-array-{time.monotonic_ns()}"
    job_dir.mkdir()
    req = SbatchRequest(
        command=["sh", "-c", 'echo "task $SLURM_ARRAY_TASK_ID"; exit "$SLURM_ARRAY_TASK_ID"'],
        job_dir=str(job_dir),
        array="0-2%2",
        mem_bytes=16 * 2**20,
    )
    submit(slurm, req)
    assert [wait_file(job_dir / f"rc.{i}", timeout=60).strip() for i in range(3)] == ["0", "1", "2"]
    assert [(job_dir / f"stdout.{i}").read_text() for i in range(3)] == [f"task {i}\n" for i in range(3)]


def test_refused_by_the_real_slurm(slurm: SlurmCluster):
    with pytest.raises(SlurmRefused) as e:
        submit(slurm, SbatchRequest(command=["true"], job_dir=str(slurm.base / "jobs"), partition="nope"))
    assert (e.value.status, e.value.field) == (422, "partition")
    assert "Invalid partition name specified" in e.value.message
