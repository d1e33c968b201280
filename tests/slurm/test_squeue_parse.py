"""agent/jobs/slurm: Slurm's answers parsed and mapped to our states, tested against real captures.

tests/slurm/data/*-22.05.* were captured from the single-node Slurm 22.05.8 of tests/slurmproc.py by
tests/slurm/data/capture_squeue.py (each job made to end up in a known state: roles-22.05.json).
Later releases' shapes (23.02+: state lists and {set, infinite, number} numbers; 23.11+: exit_code
objects) are the same real records rewritten field by field into that shape, as documented by Slurm.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from agent.jobs.slurm.squeue import (
    SlurmJob,
    SlurmParseError,
    decode_exit,
    exit_pair,
    job_from_record,
    parse_job,
    parse_kv_record,
    parse_kv_records,
    parse_squeue,
    split_state,
)
from agent.jobs.slurm.states import map_job

DATA = Path(__file__).parent / "data"
RAW = (DATA / "squeue-22.05.json").read_text()
ROLES = {v: int(k) for k, v in json.loads((DATA / "roles-22.05.json").read_text()).items()}


def by_id(jobs: list[SlurmJob]) -> dict[int, SlurmJob]:
    return {j.job_id: j for j in jobs}


@pytest.fixture(scope="module")
def snap():
    return parse_squeue(RAW)


def test_the_22_05_capture_parses_whole(snap):
    assert snap.release == "22.05.8"
    assert snap.warnings == []
    assert len(snap.jobs) == len(json.loads(RAW)["jobs"])
    assert set(ROLES.values()) <= {j.job_id for j in snap.jobs}


# role -> (our state, reason, exit code, signal)
EXPECTED = {
    "completed": ("COMPLETED", "", 0, None),
    "failed_exit3": ("FAILED", "exit code 3", 3, None),
    # the script's shell was SIGKILLed: the batch script itself exits 128+9
    "failed_signal9": ("FAILED", "exit code 137", 137, None),
    # over --mem with jobacct_gather OverMemoryKill (no task/cgroup): Slurm kills it and says
    # JobLaunchFailure, not OUT_OF_MEMORY; we say what Slurm said, and guess nothing
    "over_memory_killed": ("FAILED", "killed by signal 9 (Slurm: JobLaunchFailure)", None, 9),
    "timeout": ("TIMEOUT", "time limit 60 s reached", None, 15),
    "cancelled_running": ("CANCELLED", "cancelled in Slurm", None, 15),
    "cancelled_pending": ("CANCELLED", "cancelled in Slurm", 0, None),
    "requeued": ("PENDING", "BeginTime", None, None),
    "running": ("RUNNING", "", None, None),
    "pending_resources": ("PENDING", "Resources", None, None),
    "pending_dependency": ("PENDING", "Dependency", None, None),
    "pending_dependency_never": ("PENDING", "DependencyNeverSatisfied", None, None),
    "pending_held": ("PENDING", "Held", None, None),
}


@pytest.mark.parametrize("role", sorted(EXPECTED))
def test_each_real_job_maps_to_our_state(snap, role):
    job = by_id(snap.jobs)[ROLES[role]]
    m = map_job(job)
    assert (m.state, m.reason, m.exit_code, m.signal) == EXPECTED[role], job


def test_real_details_read_right(snap):
    jobs = by_id(snap.jobs)
    running = jobs[ROLES["running"]]
    assert running.comment == "wk:j-0001" and running.name == "wk-train"
    assert running.start_time and running.end_time is None  # 22.05's end_time of a running job is its limit
    assert running.tres_alloc == {"cpu": "1", "mem": "50M", "node": "1", "billing": "1"}
    # squeue says --output as given (%j unexpanded; scontrol expands it): the backend passes plain paths
    assert running.stdout_path.endswith("/jobs/%j.out")
    assert jobs[ROLES["requeued"]].restart_count == 1
    assert jobs[ROLES["requeued"]].start_time is None  # a pending job's start_time is Slurm's estimate
    assert jobs[ROLES["pending_dependency"]].dependency == f"afterok:{ROLES['running']}(unfulfilled)"
    assert jobs[ROLES["timeout"]].time_limit_s == 60.0
    assert jobs[ROLES["completed"]].time_limit_s is None  # unlimited
    ended = jobs[ROLES["completed"]]
    assert ended.submit_time and ended.start_time and ended.end_time and ended.end_time >= ended.start_time


def test_a_real_array_reads_as_its_running_task_and_its_pending_rest(snap):
    head = ROLES["running_array_task"]
    tasks = [j for j in snap.jobs if j.array_job_id == head]
    running = [j for j in tasks if j.state == "RUNNING"]
    assert [(j.array_task_id, j.job_id != head) for j in running] == [(0, True)]
    rest = by_id(snap.jobs)[head]
    assert rest.state == "PENDING" and rest.array_tasks_pending == "1-3%1" and rest.array_task_id is None
    assert map_job(rest).reason == "JobArrayTaskLimit"  # Slurm's word, as it is
    plain = by_id(snap.jobs)[ROLES["completed"]]
    assert plain.array_job_id is None and plain.array_task_id is None


def test_scontrol_and_jobcomp_captures_agree_with_squeue(snap):
    squeue = by_id(snap.jobs)
    scontrol = by_id([job_from_record(r) for r in parse_kv_records((DATA / "scontrol-22.05.txt").read_text())])
    jobcomp = by_id([job_from_record(r) for r in parse_kv_records((DATA / "jobcomp-22.05.txt").read_text())])
    assert set(scontrol) == set(squeue)
    for jid, job in squeue.items():
        s = scontrol[jid]
        assert (s.state, s.flags, s.reason) == (job.state, job.flags, job.reason), jid
        assert (s.exit_code, s.signal) == (job.exit_code, job.signal), jid
        assert s.dependency == job.dependency and s.restart_count == job.restart_count, jid
    for jid, rec in jobcomp.items():  # only the ended ones are there
        if jid not in squeue:
            continue
        assert rec.state == squeue[jid].state, jid
        # jobcomp writes the record at the state change: a CANCELLED / TIMEOUT job's signal isn't in yet
        # (measured: 0:0 there, 0:15 in squeue and scontrol), so only COMPLETED / FAILED exit codes agree
        if rec.state in ("COMPLETED", "FAILED"):
            assert (rec.exit_code, rec.signal) == (squeue[jid].exit_code, squeue[jid].signal), jid
        elif rec.state == "PENDING":  # a requeue writes a record too, with the job's new state
            assert jid == ROLES["requeued"], jid
        else:
            assert (rec.exit_code, rec.signal) == (0, None), jid
    assert {ROLES[r] for r in ("completed", "failed_exit3", "timeout", "cancelled_running")} <= set(jobcomp)


# --------------------------------------------------------------------------- later releases' shapes


def _noval(n: Any) -> dict:
    return {"set": n is not None, "infinite": False, "number": n or 0}


def as_23_11(raw: dict) -> dict:
    """A 22.05 record rewritten into the 23.11+ shape (data_parser v0.0.40)."""
    r = copy.deepcopy(raw)
    r["job_state"] = [r["job_state"]]
    for k in ("submit_time", "start_time", "end_time", "array_task_id", "restart_cnt"):
        r[k] = _noval(r.get(k))
    unlimited = {"set": True, "infinite": True, "number": 0}
    r["time_limit"] = unlimited if r["time_limit"] is None else _noval(r["time_limit"])
    status = r["exit_code"]
    if status & 0x7F:
        r["exit_code"] = {
            "status": ["SIGNALED"],
            "return_code": _noval(None),
            "signal": {"id": _noval(status & 0x7F), "name": "KILL"},
        }
    else:
        r["exit_code"] = {
            "status": ["SUCCESS" if status == 0 else "EXITED"],
            "return_code": _noval(status >> 8),
            "signal": {"id": _noval(None), "name": ""},
        }
    return r


def test_the_23_11_shape_of_every_real_record_reads_the_same(snap):
    doc = json.loads(RAW)
    new = {
        "meta": {"slurm": {"version": {"major": "23", "micro": "4", "minor": "11"}, "release": "23.11.4"}},
        "errors": [],
        "warnings": [],
        "jobs": [as_23_11(j) for j in doc["jobs"]],
    }
    snap2 = parse_squeue(json.dumps(new))
    assert snap2.release == "23.11.4" and snap2.warnings == []
    assert snap2.jobs == snap.jobs


@pytest.mark.parametrize(
    ("states", "expected"),
    [
        (["COMPLETED", "COMPLETING"], ("RUNNING", "completing")),
        ("COMPLETING", ("RUNNING", "completing")),  # 22.05: the flag alone
        (["PENDING", "REQUEUED"], ("REQUEUED", "requeued by Slurm")),
        ("REQUEUED", ("REQUEUED", "requeued by Slurm")),
        (["PENDING", "REQUEUE_HOLD"], ("PENDING", "Held")),
        (["RUNNING", "CONFIGURING"], ("PENDING", "Configuring")),
        ("CONFIGURING", ("PENDING", "Configuring")),
        ("SUSPENDED", ("RUNNING", "suspended")),
        ("OUT_OF_MEMORY", ("OUT_OF_MEMORY", "memory limit 50M reached (Slurm)")),
        ("PREEMPTED", ("CANCELLED", "preempted by Slurm")),
        ("DEADLINE", ("TIMEOUT", "deadline reached (Slurm DEADLINE)")),
        ("BOOT_FAIL", ("FAILED", "node n1 failed to boot (Slurm BOOT_FAIL)")),
        ("NODE_FAIL", ("LOST", "node n1 failed under the job (Slurm NODE_FAIL): how it ended is not known")),
        (["PENDING", "SPECIAL_EXIT"], ("PENDING", "Held (Slurm: SPECIAL_EXIT)")),
        ("SPECIAL_EXIT", ("PENDING", "Held (Slurm: SPECIAL_EXIT)")),
        ("STRANGE_NEW_STATE", (None, "unknown Slurm state STRANGE_NEW_STATE")),
        ([], (None, "unknown Slurm state none")),
    ],
)
def test_states_we_cannot_make_on_one_node_map_too(states, expected):
    raw = {
        "job_id": 7,
        "job_state": states,
        "state_reason": "None",
        "exit_code": 2 << 8,
        "nodes": "n1",
        "tres_alloc_str": "cpu=1,mem=50M,node=1",
    }
    m = map_job(parse_job(raw))
    assert (m.state, m.reason) == expected
    assert m.final == (expected[0] in {"COMPLETED", "FAILED", "OUT_OF_MEMORY", "TIMEOUT", "CANCELLED", "LOST"})


# --------------------------------------------------------------------------- bad and odd answers


def test_slurm_errors_and_garbage_are_refused_with_slurms_words():
    down = {"meta": {}, "errors": [{"error": "Unable to contact slurm controller", "error_number": 1}], "jobs": []}
    with pytest.raises(SlurmParseError, match="Unable to contact slurm controller"):
        parse_squeue(json.dumps(down))
    with pytest.raises(SlurmParseError, match="did not answer JSON"):
        parse_squeue("squeue: error: slurm_load_jobs error: Socket timed out")
    with pytest.raises(SlurmParseError, match="no `jobs` list"):
        parse_squeue("{}")
    with pytest.raises(SlurmParseError):
        parse_squeue("[]")


def test_one_odd_record_is_a_warning_not_a_lost_poll():
    doc = {"jobs": [{"job_id": 1, "job_state": "RUNNING"}, {"name": "no id"}, "junk"]}
    snap = parse_squeue(json.dumps(doc))
    assert [j.job_id for j in snap.jobs] == [1]
    assert len(snap.warnings) == 2


def test_missing_or_mistyped_fields_read_as_unknown_never_as_a_value():
    j = parse_job({"job_id": 5, "job_state": "FAILED", "exit_code": "x", "start_time": None, "time_limit": "?"})
    assert (j.exit_code, j.signal, j.start_time, j.time_limit_s, j.tres_alloc) == (None, None, None, None, {})
    assert map_job(j).reason == "failed"
    unset = parse_job({"job_id": 5, "job_state": ["COMPLETED"], "exit_code": {"set": False, "number": 0}})
    assert unset.exit_code is None


def test_exit_codes_in_each_spelling():
    assert decode_exit(768) == (3, None)
    assert decode_exit(9) == (None, 9)
    assert decode_exit(0) == (0, None)
    assert decode_exit(None) == (None, None)
    assert decode_exit({"set": True, "number": 768}) == (3, None)
    assert decode_exit({"status": ["SIGNALED"], "return_code": 0, "signal": {"id": 9, "name": "KILL"}}) == (None, 9)
    assert decode_exit({"status": ["EXITED"], "return_code": {"set": True, "number": 4}}) == (4, None)
    assert decode_exit({"status": ["PENDING"], "return_code": {"set": False, "number": 0}}) == (None, None)
    assert exit_pair("3:0") == (3, None) and exit_pair("0:15") == (None, 15) and exit_pair("") == (None, None)


def test_split_state_and_kv_records():
    assert split_state("RUNNING") == ("RUNNING", ())
    assert split_state(["completed", "COMPLETING"]) == ("COMPLETED", ("COMPLETING",))
    assert split_state(None) == ("", ())
    rec = parse_kv_record("JobId=7 JobName=my job WorkDir=/a b/c CPUs/Task=1 TRES=cpu=1,mem=50M ExitCode=0:15")
    assert rec == {
        "JobId": "7",
        "JobName": "my job",
        "WorkDir": "/a b/c",
        "CPUs/Task": "1",
        "TRES": "cpu=1,mem=50M",
        "ExitCode": "0:15",
    }


def test_the_last_ending_of_a_job_is_read_from_a_real_jobcomp_file():
    from agent.jobs.slurm.squeue import last_ending

    text = (DATA / "jobcomp-22.05.txt").read_text()
    failed = last_ending(text, ROLES["failed_exit3"], "wrap")
    assert failed is not None and (failed.state, failed.exit_code) == ("FAILED", 3)
    assert map_job(failed).state == "FAILED"
    assert last_ending(text, ROLES["timeout"], "wrap").state == "TIMEOUT"  # type: ignore[union-attr]
    assert last_ending(text, ROLES["failed_exit3"], "wk-train") is None  # another job's name: not ours
    assert last_ending(text, 999_999, "wrap") is None
    # a requeue's PENDING record is no ending: the ending before it (or none) is what counts
    requeued = "JobId=42 Name=wrap JobState=FAILED ExitCode=2:0 \nJobId=42 Name=wrap JobState=PENDING ExitCode=0:0 \n"
    assert last_ending(requeued, 42, "wrap").exit_code == 2  # type: ignore[union-attr]
    assert last_ending(requeued.splitlines()[1], 42, "wrap") is None
    # ids are matched whole: job 4 is not job 42
    assert last_ending(requeued, 4, "wrap") is None


def test_config_values_are_read_from_scontrol_show_config():
    from agent.jobs.slurm.squeue import config_value

    text = "JobCompHost             = localhost\nJobCompLoc              = /var/log/slurm/jobcomp.txt\n" \
           "JobCompType             = jobcomp/filetxt\nJobCompUser             = (null)\n"  # fmt: skip
    assert config_value(text, "JobCompLoc") == "/var/log/slurm/jobcomp.txt"
    assert config_value(text, "JobCompType") == "jobcomp/filetxt"
    assert config_value(text, "JobCompUser") is None and config_value(text, "JobComp") is None
