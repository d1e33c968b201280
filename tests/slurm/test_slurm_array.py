"""Job arrays in Slurm through the job API: one job, N tasks, each task's state, and a requeue that runs only
the tasks that did not complete (a new `--array` of their indices). Against the real single-node Slurm of
test_slurm_backend.py's module setup."""

from __future__ import annotations

import re
import time

import pytest

from agent.jobs.slurm.backend import array_spec, expand_tasks
from tests.jobs.conftest import submit, wait_job

pytestmark = pytest.mark.usefixtures("empty_queue")


def test_array_spec_and_slurms_task_strings():
    assert array_spec([0, 1, 2, 3], 2) == "0-3%2"
    assert array_spec([3, 1, 4, 5, 6], None) == "1,3-6"
    assert array_spec([7], 1) == "7%1"
    assert expand_tasks("1-3%1") == [1, 2, 3]
    assert expand_tasks("2,5-7") == [2, 5, 6, 7]
    assert expand_tasks("0-9:4") == [0, 4, 8]
    assert expand_tasks("") == []


def test_local_pipelines_refuse_arrays(agent):
    with agent.client() as c:
        r = c.post("/api/v1/jobs", json={"pipeline": "here", "command": ["true"], "array": 3})
        assert r.status_code == 422 and r.json()["field"] == "array", r.text
        r = c.post("/api/v1/jobs", json={"pipeline": "train", "command": ["true"], "array_parallel": 2})
        assert r.status_code == 422 and r.json()["field"] == "array_parallel", r.text


def test_an_array_runs_its_tasks_and_a_requeue_runs_only_those_that_failed(agent, cluster, tmp_path):
    ran = tmp_path / "ran"
    marker = tmp_path / "second-time"
    # task 2 fails the first time; every task notes that it ran
    script = (f'echo "$SLURM_ARRAY_TASK_ID" >> {ran}; echo "task $SLURM_ARRAY_TASK_ID"; sleep 1; '
              f'if [ "$SLURM_ARRAY_TASK_ID" = 2 ] && [ ! -e {marker} ]; then touch {marker}; exit 7; fi')  # fmt: skip
    with agent.client() as c:
        j = submit(c, pipeline="train", command=["sh", "-c", script], cpu=0.5, mem="40M", array=4, array_parallel=2)
        sid = j["slurm"]["job_id"]
        assert j["array"] == 4 and j["slurm"]["tasks"] == {str(i): "PENDING" for i in range(4)}
        rec = cluster.run(["scontrol", "show", "job", "-o", str(sid)]).stdout
        assert "ArrayTaskThrottle=2" in rec, rec
        # while it runs: never more than two tasks at once, RUNNING as a whole
        seen_running = 0
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            cur = c.get(f"/api/v1/jobs/{j['id']}").json()
            running = [i for i, st in cur["slurm"]["tasks"].items() if st == "RUNNING"]
            assert len(running) <= 2, cur["slurm"]["tasks"]
            if running:
                seen_running += 1
                assert cur["state"] == "RUNNING" and "running" in cur["reason"], cur
            if cur["state"] in ("COMPLETED", "FAILED"):
                break
            time.sleep(0.1)
        done = wait_job(c, j["id"], timeout=60)
        assert seen_running
        assert done["state"] == "FAILED" and done["exit_code"] == 7, done
        assert done["slurm"]["tasks"] == {"0": "COMPLETED", "1": "COMPLETED", "2": "FAILED", "3": "COMPLETED"}
        assert done["reason"] == "1 of 4 tasks did not complete: task 2 FAILED (exit code 7)"
        assert sorted(ran.read_text().split()) == ["0", "1", "2", "3"]
        # each task wrote its own log, read by its index
        d = agent.data_dir / "jobs"
        assert len(list(d.rglob("stdout.*"))) == 4, list(d.rglob("*"))
        r = c.get(f"/api/v1/jobs/{j['id']}/logs", params={"stream": "stdout", "task": 2})
        assert r.status_code == 200 and r.json()["task"] == 2 and r.json()["text"] == "task 2\n", r.text
        for params in ({"stream": "stdout"}, {"task": 4}):  # an array's output is per task; there is no task 4
            r = c.get(f"/api/v1/jobs/{j['id']}/logs", params=params)
            assert r.status_code == 422 and r.json()["field"] == "task", r.text
        # requeue: only task 2 runs again, as a new array
        r = c.post(f"/api/v1/jobs/{j['id']}/requeue", json={"reason": "flaky shard"})
        assert r.status_code == 200, r.text
        again = r.json()
        assert again["attempt"] == 2 and again["slurm"]["job_id"] != sid
        assert again["slurm"]["tasks"] == {"0": "COMPLETED", "1": "COMPLETED", "2": "PENDING", "3": "COMPLETED"}
        rec = cluster.run(["scontrol", "show", "job", "-o", str(again["slurm"]["job_id"])]).stdout
        assert re.search(r"ArrayTaskId=2(%2)? ", rec), rec  # that task alone, still at most two at once
        ok = wait_job(c, j["id"], timeout=60)
        assert (ok["state"], ok["exit_code"], ok["reason"]) == ("COMPLETED", 0, ""), ok
        assert sorted(ran.read_text().split()) == ["0", "1", "2", "2", "3"]


def test_cancelling_an_array_cancels_every_task(agent, cluster):
    with agent.client() as c:
        j = submit(c, pipeline="train", command=["sleep", "60"], cpu=0.5, mem="40M", array=3, array_parallel=1)
        wait_job(c, j["id"], {"RUNNING"}, timeout=60)
        r = c.post(f"/api/v1/jobs/{j['id']}/cancel", json={"reason": "wrong data"})
        assert r.status_code == 200, r.text
        done = wait_job(c, j["id"], timeout=60)
        assert done["state"] == "CANCELLED" and done["reason"].startswith("cancelled by"), done
        assert all(st in ("CANCELLED", "LOST") for st in done["slurm"]["tasks"].values()), done["slurm"]
        sid = j["slurm"]["job_id"]
        states = cluster.job_states()
        assert not [s for s, st in states.items() if s >= sid and st in ("PENDING", "RUNNING")], states


if __name__ == "__main__":
    pytest.main([__file__, "-q"])
