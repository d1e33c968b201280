"""CPU placement (agent/jobs/placement.py): each job pinned to ceil(cpu) of the host's CPUs, the least taken
first, so two pipelines' jobs don't share a CPU while another one is free; on a real agent, the job's
processes carry the affinity it reports."""

from __future__ import annotations

import os
import sys
import time

import psutil
import pytest

from agent.jobs.placement import place
from agent.schemas.jobs import cpu_list
from tests.jobs.conftest import submit, wait_job

CPUS = [0, 1, 2, 3]


def test_a_job_gets_ceil_cpu_of_the_least_taken_highest_first() -> None:
    assert place(1, CPUS, []) == [3]  # CPU 0 (interrupts, daemons) last among equals
    assert place(1.5, CPUS, []) == [2, 3]
    assert place(1, CPUS, [([3], 1.0)]) == [2]
    assert place(2, CPUS, [([3], 1.0), ([2], 0.5)]) == [0, 1]
    # a job spread over two CPUs loads each with half of what it asked
    assert place(1, CPUS, [([2, 3], 1.0), ([1], 0.8)]) == [0]
    assert place(1, CPUS, [([0, 1, 2, 3], 4.0)]) == [3]  # all equally taken: still one CPU, not all


def test_no_pinning_when_it_would_not_narrow_anything() -> None:
    assert place(None, CPUS, []) is None
    assert place(4, CPUS, []) is None
    assert place(6, CPUS, []) is None
    assert place(1, [], []) is None  # the host's CPUs unknown
    assert place(0.1, [5], []) is None  # one CPU: nothing to choose


def test_cpus_the_host_does_not_offer_are_ignored() -> None:
    assert place(1, [0, 1], [([7], 1.0), ([1], 1.0)]) == [0]


def test_cpu_list_reads_like_linux() -> None:
    assert cpu_list([0, 1, 2, 3, 6, 8, 9]) == "0-3,6,8-9"
    assert cpu_list([5]) == "5"
    assert cpu_list(None) == "any" and cpu_list([]) == "any"


def _affinity_of_job(pid: int) -> list[list[int]]:
    """The CPU affinity of each process of a job (its wrapper's descendants), once its command has started."""
    deadline = time.monotonic() + 10
    while not (procs := psutil.Process(pid).children(recursive=True)) and time.monotonic() < deadline:
        time.sleep(0.02)
    return [p.cpu_affinity() for p in procs]


def test_jobs_of_two_pipelines_get_cpus_of_their_own(agent_factory) -> None:
    host = sorted(os.sched_getaffinity(0))
    if len(host) < 2:
        pytest.skip("one CPU: nothing to place")
    a = agent_factory("place", config="[jobs]\nserving_reserve_cpu = 0\n")
    sleeper = [sys.executable, "-c", "import time; time.sleep(60)"]
    with a.client() as c:
        ja = submit(c, pipeline="a", command=sleeper, cpu=1, mem="64M")
        jb = submit(c, pipeline="b", command=sleeper, cpu=1, mem="64M")
        try:
            ra, rb = (wait_job(c, j["id"], {"RUNNING"}) for j in (ja, jb))
            assert len(ra["cpus"]) == 1 and len(rb["cpus"]) == 1 and ra["cpus"] != rb["cpus"], (ra["cpus"], rb["cpus"])
            assert set(ra["cpus"]) | set(rb["cpus"]) <= set(host)
            for job in (ra, rb):
                procs = _affinity_of_job(job["pid"])
                assert procs and all(aff == job["cpus"] for aff in procs), (procs, job["cpus"])
            # and it is kept: the store's copy carries it (what a restarted agent re-adopts)
            assert c.get(f"/api/v1/jobs/{ja['id']}").json()["cpus"] == ra["cpus"]
        finally:
            for j in (ja, jb):
                c.post(f"/api/v1/jobs/{j['id']}/cancel", json={})
        for j in (ja, jb):
            wait_job(c, j["id"])
        # as many CPUs as the host has: left to the scheduler
        everywhere = submit(c, pipeline="c", command=sleeper, cpu=len(host), mem="64M")
        try:
            rall = wait_job(c, everywhere["id"], {"RUNNING"})
            assert rall["cpus"] is None
            assert all(sorted(aff) == host for aff in _affinity_of_job(rall["pid"]))
        finally:
            c.post(f"/api/v1/jobs/{everywhere['id']}/cancel", json={})
        wait_job(c, everywhere["id"])


def test_a_restarted_agent_places_new_jobs_beside_the_cpus_of_those_it_readopted(agent_factory) -> None:
    """After kill -9, the re-adopted job still holds its CPU: a new job of another pipeline is placed on
    another one (without the stored `cpus`, both would land on the highest-numbered CPU)."""
    if len(os.sched_getaffinity(0)) < 2:
        pytest.skip("one CPU: nothing to place")
    a = agent_factory("replace", config="[jobs]\nserving_reserve_cpu = 0\n")
    sleeper = [sys.executable, "-c", "import time; time.sleep(60)"]
    with a.client() as c:
        old = wait_job(c, submit(c, pipeline="a", command=sleeper, cpu=1, mem="64M")["id"], {"RUNNING"})
    a.kill()
    a.start()
    with a.client() as c:
        try:
            again = wait_job(c, old["id"], {"RUNNING"})
            assert again["pid"] == old["pid"] and again["cpus"] == old["cpus"] and len(old["cpus"]) == 1
            new = wait_job(c, submit(c, pipeline="b", command=sleeper, cpu=1, mem="64M")["id"], {"RUNNING"})
            assert new["cpus"] and new["cpus"] != old["cpus"], (new["cpus"], old["cpus"])
            assert all(aff == new["cpus"] for aff in _affinity_of_job(new["pid"]))
        finally:
            for j in c.get("/api/v1/jobs", params={"state": "RUNNING"}).json()["jobs"]:
                c.post(f"/api/v1/jobs/{j['id']}/cancel", json={})
