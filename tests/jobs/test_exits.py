"""A job's end is seen when its wrapper exits (a pidfd per wrapper), not at the runner's next tick."""

from __future__ import annotations

import subprocess
import threading
import time

import pytest

from agent.jobs.exits import ExitWatcher
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
