"""`watchkeeper jobs …` and `watchkeeper quotas` against real agent processes running real jobs."""

from __future__ import annotations

import json
import threading
import time

from console.cli import main
from tests.agentproc import free_port
from tests.console.jobs.agents import fleet_file, submit, wait_job

COUNT_TO_3 = ["sh", "-c", "for i in 1 2 3; do echo line $i; sleep 0.3; done; echo oops >&2; exit 3"]


def run(capsys, *argv: str) -> tuple[int, str, str]:
    rc = main(list(argv))
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_submit_list_show_and_logs_of_a_failing_job(jobs_agent, tmp_path, capsys) -> None:
    fleet = fleet_file(tmp_path, jobs_agent)
    rc, out, err = run(
        capsys,
        "jobs",
        "submit",
        "--fleet",
        fleet,
        "--pipeline",
        "training",
        "--mem",
        "128M",
        "--time",
        "1m",
        "--env",
        "GREETING=hi",
        "--reason",
        "nightly",
        "--json",
        "--",
        *COUNT_TO_3,
    )
    assert rc == 0, err
    job = json.loads(out)
    assert job["agent"] == "jobs-a" and job["pipeline"] == "training" and job["command"] == COUNT_TO_3
    assert job["mem"] == 128 * 2**20 and job["time_limit"] == 60 and job["env"] == {"GREETING": "hi"}
    assert job["submit_reason"] == "nightly"

    # `logs -f` follows the running job until it is over and its output read.
    rc, out, err = run(capsys, "jobs", "logs", job["id"], "-f", "--fleet", fleet)
    assert rc == 0, err
    assert out == "line 1\nline 2\nline 3\n"
    wait_job(jobs_agent, job["id"])
    rc, out, _ = run(capsys, "jobs", "logs", job["id"], "--stderr", "--fleet", fleet)
    assert out == "oops\n"

    rc, out, err = run(capsys, "jobs", "list", "--fleet", fleet)
    assert rc == 0, err
    (line,) = [ln for ln in out.splitlines() if job["id"] in ln]
    assert "jobs-a" in line and "FAILED" in line and "exit code 3" in line

    rc, out, _ = run(capsys, "jobs", "show", job["id"], "--fleet", fleet)
    assert rc == 0 and "state FAILED: exit code 3" in out and "submitted by admin: nightly" in out

    rc, out, _ = run(capsys, "jobs", "list", "--state", "running", "--fleet", fleet, "--json")
    assert rc == 0 and json.loads(out)["jobs"] == []


def test_refusals_are_one_line_and_non_zero(jobs_agent, tmp_path, capsys) -> None:
    fleet = fleet_file(tmp_path, jobs_agent)
    # Refused before sending: the field is named, exit 2.
    rc, _, err = run(
        capsys, "jobs", "submit", "--fleet", fleet, "--pipeline", "training", "--mem", "lots", "--", "true"
    )
    assert rc == 2 and err.count("\n") == 1 and "--mem" in err and "not a size" in err
    rc, _, err = run(capsys, "jobs", "submit", "--fleet", fleet, "--pipeline", "training")
    assert rc == 2 and "no command" in err
    # Refused by the agent: more memory than the pipeline's quota can ever give.
    rc, _, err = run(capsys, "jobs", "submit", "--fleet", fleet, "--pipeline", "training", "--mem", "2G", "--", "true")
    assert rc == 1 and err.count("\n") == 1 and "409" in err and "never" in err and "(mem)" in err
    rc, _, err = run(capsys, "jobs", "show", "j-nope", "--fleet", fleet)
    assert rc == 1 and "no job 'j-nope' on 1 of 1 agents" in err
    # A job array runs in Slurm: this agent runs the pipeline's jobs itself.
    rc, _, err = run(capsys, "jobs", "submit", "--fleet", fleet, "--pipeline", "training", "--array", "3", "--", "true")
    assert rc == 1 and err.count("\n") == 1 and "422" in err and "(array)" in err, err
    # and a job that is not an array has no task's output to read
    job = submit(jobs_agent, pipeline="training", command=["true"])
    rc, _, err = run(capsys, "jobs", "logs", job["id"], "--task", "1", "--fleet", fleet)
    assert rc == 1 and err.count("\n") == 1 and "not an array" in err and "(task)" in err, err


def test_cancel_says_by_whom_then_requeue_makes_a_new_attempt(jobs_agent, tmp_path, capsys) -> None:
    fleet = fleet_file(tmp_path, jobs_agent)
    job = submit(jobs_agent, pipeline="batch", command=["sleep", "60"])
    wait_job(jobs_agent, job["id"], {"RUNNING"})
    rc, out, err = run(capsys, "jobs", "cancel", job["id"], "--reason", "wrong data", "--fleet", fleet)
    assert rc == 0, err
    done = wait_job(jobs_agent, job["id"])
    assert done["state"] == "CANCELLED" and done["cancelled_by"] == "admin"
    assert out.startswith(f"{job['id']} on jobs-a: cancelled; now ")
    # Already over: the agent's conflict, one line, exit 1.
    rc, _, err = run(capsys, "jobs", "cancel", job["id"], "--fleet", fleet)
    assert rc == 1 and "409" in err and "already CANCELLED" in err
    rc, out, err = run(capsys, "jobs", "requeue", job["id"], "--fleet", fleet, "--json")
    assert rc == 0, err
    again = json.loads(out)
    assert again["id"] == job["id"] and again["attempt"] == 2 and again["state"] in ("PENDING", "RUNNING")
    run(capsys, "jobs", "cancel", job["id"], "--fleet", fleet)


def test_list_and_quotas_fan_out_and_name_the_agent_that_did_not_answer(agent_factory, tmp_path, capsys) -> None:
    from tests.console.jobs.agents import QUOTAS

    a = agent_factory(name="jobs-a", config=QUOTAS)
    b = agent_factory(name="jobs-b", config=QUOTAS)
    fleet = fleet_file(tmp_path, a, b, dead=f"http://127.0.0.1:{free_port()}")
    ja = submit(a, pipeline="training", command=["sleep", "60"], cpu=0.75, mem="512M")
    jb = submit(b, pipeline="batch", command=["true"])
    wait_job(a, ja["id"], {"RUNNING"})
    wait_job(b, jb["id"])

    rc, out, err = run(capsys, "jobs", "list", "--fleet", fleet, "--json")
    assert rc == 1 and "1 of 3 agents not read: gone (connection refused)" in err
    doc = json.loads(out)
    assert {(j["agent"], j["id"], j["state"]) for j in doc["jobs"]} == {
        ("jobs-a", ja["id"], "RUNNING"),
        ("jobs-b", jb["id"], "COMPLETED"),
    }
    assert doc["jobs"][0]["id"] == ja["id"]  # running first
    assert [x["jobs"] for x in doc["agents"]] == ["ok", "ok", "error"]

    rc, out, err = run(capsys, "quotas", "--fleet", fleet)
    assert rc == 1 and "gone" in err
    (line,) = [ln for ln in out.splitlines() if ln.startswith("jobs-a") and "training" in ln]
    # cpu 0.75 of 1 core, 512 MiB of 1 GiB, 1 of 2 jobs; no GPU limit: said, not a 0 %.
    assert "0.75/1 (75%)" in line and "512M/1.0G (50%)" in line and "unlimited" in line and "1/2 (50%)" in line
    rc, out, _ = run(capsys, "quotas", "--fleet", fleet, "--json")
    doc = json.loads(out)
    (training,) = [q for q in doc["quotas"] if q["agent"] == "jobs-a" and q["pipeline"] == "training"]
    assert training["share"]["cpu"] == 0.75 and training["share"]["gpus"] is None
    run(capsys, "jobs", "cancel", ja["id"], "--agent", "jobs-a", "--fleet", fleet)


def test_submit_to_a_fleet_needs_agent_and_show_finds_the_job_on_its_agent(agent_factory, tmp_path, capsys) -> None:
    from tests.console.jobs.agents import QUOTAS

    a = agent_factory(name="jobs-a", config=QUOTAS)
    b = agent_factory(name="jobs-b", config=QUOTAS)
    fleet = fleet_file(tmp_path, a, b)
    rc, _, err = run(capsys, "jobs", "submit", "--fleet", fleet, "--pipeline", "batch", "--", "true")
    assert rc == 2 and "--agent" in err and "jobs-a, jobs-b" in err
    rc, out, err = run(
        capsys,
        "jobs",
        "submit",
        "--fleet",
        fleet,
        "--agent",
        "jobs-b",
        "--pipeline",
        "batch",
        "--json",
        "--",
        "echo",
        "hello",
    )
    assert rc == 0, err
    job = json.loads(out)
    assert job["agent"] == "jobs-b"
    wait_job(b, job["id"])
    rc, out, _ = run(capsys, "jobs", "show", job["id"], "--fleet", fleet, "--json")
    assert rc == 0 and json.loads(out)["agent"] == "jobs-b" and json.loads(out)["state"] == "COMPLETED"
    rc, out, _ = run(capsys, "jobs", "logs", job["id"], "--fleet", fleet)
    assert out == "hello\n"


def test_logs_follow_prints_output_as_it_comes(jobs_agent, tmp_path, capsys) -> None:
    fleet = fleet_file(tmp_path, jobs_agent)
    job = submit(jobs_agent, pipeline="batch", command=["sh", "-c", "echo first; sleep 2; echo second"])
    wait_job(jobs_agent, job["id"], {"RUNNING", *("COMPLETED",)})
    seen: list[tuple[float, str]] = []

    class Out:
        def write(self, text: str) -> None:
            if text:
                seen.append((time.monotonic(), text))

        def flush(self) -> None:
            pass

    import argparse

    from console.jobs.cli import configure  # the verb's own runner, with our stream

    parser = argparse.ArgumentParser()
    configure(parser)
    args = parser.parse_args(["logs", job["id"], "-f", "--fleet", fleet])
    result: list[int] = []
    t = threading.Thread(target=lambda: result.append(args.jobs_run(args, Out(), Out())))
    t.start()
    t.join(30)
    assert result == [0]
    texts = [text for _, text in seen]
    assert "".join(texts) == "first\nsecond\n"
    # "first" was printed before "second" was written: a follower, not a read at the end.
    first = next(ts for ts, text in seen if "first" in text)
    second = next(ts for ts, text in seen if "second" in text)
    assert second - first >= 1.0


def test_status_json_counts_jobs_and_says_none_for_an_agent_without_jobs(jobs_agent, agent_factory, tmp_path, capsys):
    bare = agent_factory(name="no-jobs", config="[jobs]\nenabled = false\n")
    job = submit(jobs_agent, pipeline="batch", command=["sleep", "60"])
    wait_job(jobs_agent, job["id"], {"RUNNING"})
    rc, out, err = run(capsys, "status", "--json", "--fleet", fleet_file(tmp_path, jobs_agent, bare))
    assert rc == 0, err
    agents = {a["name"]: a for a in json.loads(out)["agents"]}
    assert (agents["jobs-a"]["jobs_running"], agents["jobs-a"]["jobs_pending"]) == (1, 0)
    assert agents["no-jobs"]["jobs_running"] is None  # no jobs there: never 0
    rc, out, _ = run(capsys, "status", "--fleet", fleet_file(tmp_path, jobs_agent, bare))
    assert out.splitlines()[0].split()[-1] == "WHY"  # the text columns scripts read are as before
