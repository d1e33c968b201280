"""Fixtures for the tier tests: real jobs under real limits, each test under its own cgroup root."""

from __future__ import annotations

import itertools
import os
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from agent.jobs.tiers import cgroupfs
from agent.jobs.tiers.base import LaunchSpec, Limits, Outcome
from agent.jobs.tiers.cgroup_v1 import CgroupV1Tier, v1_mounts
from agent.telemetry.enforcement import detect_enforcement

_counter = itertools.count()
PY = sys.executable


def v1_available() -> bool:
    return detect_enforcement().tier == "cgroup-v1"


needs_v1 = pytest.mark.skipif(not v1_available(), reason="this host offers no writable cgroup v1")


@pytest.fixture
def jobs_root() -> Iterator[str]:
    """A jobs root no other test (or parallel run) uses; every cgroup under it is removed afterwards,
    its tasks killed if any are left, even when the test failed."""
    name = f"watchkeeper.test-{os.getpid()}-{next(_counter)}"
    yield name
    for mp in set(v1_mounts().values()):
        path = os.path.join(mp, name)
        if os.path.isdir(path):
            for d, _, _ in os.walk(path):  # a failed test may have left a job running
                cgroupfs.signal_all(d, 9)
            assert cgroupfs.rmdir_tree(path, timeout_s=3.0), f"could not remove {path}"


@pytest.fixture
def v1(jobs_root: str) -> CgroupV1Tier:
    if not v1_available():
        pytest.skip("this host offers no writable cgroup v1")
    return CgroupV1Tier(jobs_root=jobs_root)


@pytest.fixture
def spec(tmp_path: Path) -> Callable[..., LaunchSpec]:
    def make(argv: list[str], pipeline: str = "p", limits: Limits = Limits(), job_id: str | None = None, **kw):
        jid = job_id or f"j-{next(_counter)}"
        d = tmp_path / jid
        d.mkdir(parents=True, exist_ok=True)
        return LaunchSpec(
            job_id=jid,
            pipeline=pipeline,
            argv=argv,
            env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(tmp_path)},
            workdir=str(d),
            stdout_path=d / "stdout",
            stderr_path=d / "stderr",
            rc_path=d / "rc",
            limits=limits,
            **kw,
        )

    return make


def wait_outcome(tier, h, timeout: float = 30.0, tick: Callable[[], None] | None = None) -> Outcome:
    """Poll until the job ends (generous: the box is shared), calling `tick` each round."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if tick:
            tick()
        out = tier.poll(h)
        if out is not None:
            return out
        time.sleep(0.05)
    raise AssertionError(f"job {h.job_id} still running after {timeout} s")


def wait_for(cond: Callable[[], bool], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.02)


def pid_alive(pid: int) -> bool:
    """Alive and not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


# Allocates MiB, touching every page (bytes * n memsets), then waits for a file; prints as it goes.
HOG = (
    "import os,sys,time\n"
    "n=int(sys.argv[1]); hold=[]\n"
    "for i in range(n):\n"
    "    hold.append(b'x' * (1 << 20))\n"
    "print('allocated', n, flush=True)\n"
    "while not os.path.exists('go'): time.sleep(0.05)\n"
)
