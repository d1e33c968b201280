"""A job's end is seen when its wrapper exits (a pidfd per wrapper), not at the runner's next tick."""

from __future__ import annotations

import subprocess
import threading
import time
from collections import Counter

import pytest

from agent.jobs.exits import ExitWatcher
from agent.jobs.tiers.psutil_tier import PsutilTier
from agent.schemas.jobs import JobSubmit
from tests.jobs.conftest import submit, wait_job


def test_the_watcher_calls_back_when_a_process_exits_and_not_before() -> None:
    fired: list[float] = []
    event = threading.Event()

    def on_exit() -> None:
        fired.append(time.monotonic())
        event.set()

    w = ExitWatcher(on_exit)
    if not w.available:
        pytest.skip("no pidfd_open/epoll here")
    w.start()
    try:
        p = subprocess.Popen(["sleep", "0.4"])
        t0 = time.monotonic()
        w.watch(p.pid)
        assert w.watched == 1
        time.sleep(0.2)
        assert not fired  # still running
        assert event.wait(5.0)
        assert fired[0] - t0 >= 0.35 and w.watched == 0
        p.wait()
        # A pid that is gone already: called at once.
        q = subprocess.Popen(["true"])
        q.wait()
        event.clear()
        w.watch(q.pid)
        assert event.wait(1.0)
    finally:
        w.close()


def test_a_job_end_is_seen_at_once_with_a_long_tick(agent_factory) -> None:
    # With a 20 s tick, only the exit watch can see these ends within a few seconds.
    a = agent_factory(config='[jobs]\ntick = "20s"\n')
    with a.client() as c:
        for _ in range(3):
            job = submit(c, pipeline="p", command=["sh", "-c", "exit 0"])
            t0 = time.monotonic()
            done = wait_job(c, job["id"], timeout=10)
            assert done["state"] == "COMPLETED", done
            assert time.monotonic() - t0 < 5.0


def test_the_watcher_says_which_pids_exited_once_each() -> None:
    w = ExitWatcher(lambda: None)
    if not w.available:
        pytest.skip("no pidfd_open/epoll here")
    w.start()
    try:
        short, long_ = subprocess.Popen(["true"]), subprocess.Popen(["sleep", "30"])
        w.watch(short.pid)
        w.watch(long_.pid)
        short.wait()
        deadline = time.monotonic() + 5
        while w.watching(short.pid) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert not w.watching(short.pid) and w.watching(long_.pid)
        assert w.take_exited() == {short.pid}
        assert w.take_exited() == set()  # reported once
        long_.kill()
        long_.wait()
    finally:
        w.close()


class CountingTier(PsutilTier):
    def __init__(self) -> None:
        super().__init__()
        self.polls: Counter[int] = Counter()

    def poll(self, h):
        self.polls[h.pid] += 1
        return super().poll(h)


def test_running_jobs_are_not_polled_every_tick_while_their_exit_is_watched(in_process_jobs) -> None:
    tier = CountingTier()
    svc = in_process_jobs(tier)
    if not svc.runner.exits.available:
        pytest.skip("no pidfd_open/epoll here: every tick polls")
    svc.start()
    try:
        body = JobSubmit(pipeline="p", command=["sleep", "2"], cpu=0.01, mem="16M")
        ids = [svc.submit(body, "t").id for _ in range(3)]
        deadline = time.monotonic() + 20
        while any(svc.get(i).state != "RUNNING" for i in ids) and time.monotonic() < deadline:
            time.sleep(0.02)
        pids = [svc.get(i).pid for i in ids]
        before = {p: tier.polls[p] for p in pids}
        ticks = svc.runner.ticks
        time.sleep(1.05)
        assert svc.runner.ticks - ticks >= 4  # the runner kept ticking (every 100 ms plus its own work)
        assert all(tier.polls[p] - before[p] <= 2 for p in pids), (tier.polls, before)  # the backstop: ~1/s
        while any(svc.get(i).state == "RUNNING" for i in ids) and time.monotonic() < deadline:
            time.sleep(0.02)
        for i in ids:  # each end seen when its wrapper exited
            j = svc.get(i)
            assert j.state == "COMPLETED" and j.elapsed_s is not None and j.elapsed_s < 4.0, j  # sleep 2, not 3 s
    finally:
        svc.stop()
