"""The real single-node Slurms (tests/slurmproc.py) of this directory's tests: `slurm`, one plain cluster for
the session; `cluster`, one per test module as tests/slurm/agents.py describes it, with `agent` (a real agent
whose jobs go to it) and `empty_queue` (cancels what a test left); `own_cluster`, one for a single test."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.agentproc import AgentProc
from tests.slurm.agents import new_cluster, start_agent
from tests.slurmproc import SlurmCluster, unavailable_reason


@pytest.fixture(scope="session")
def slurm() -> Iterator[SlurmCluster]:
    """A running cluster (about a second to start); skipped only where Slurm/munge are missing or we aren't root."""
    reason = unavailable_reason()
    if reason:
        pytest.skip(reason)
    cluster = SlurmCluster().start()
    try:
        yield cluster
    finally:
        cluster.stop()


def _started() -> Iterator[SlurmCluster]:
    reason = unavailable_reason()
    if reason:
        pytest.skip(reason)
    c = new_cluster().start()
    try:
        yield c
    finally:
        c.stop()


@pytest.fixture(scope="module")
def cluster() -> Iterator[SlurmCluster]:
    yield from _started()


@pytest.fixture
def empty_queue(cluster: SlurmCluster) -> Iterator[None]:
    """Jobs outlive the agent that submitted them (by design): cancel what a test left in the module's cluster,
    so the next test's jobs don't wait behind it."""
    yield
    cluster.run(["scancel", "--full", f"--partition={cluster.partition}"], check=False, timeout=10)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            states = cluster.job_states()
        except Exception:  # slurmctld restarting after the outage test: try again
            states = {0: "UNKNOWN"}
        if not any(st in ("PENDING", "RUNNING", "COMPLETING", "CONFIGURING", "SUSPENDED", "UNKNOWN")
                   for st in states.values()):  # fmt: skip
            return
        time.sleep(0.5)


@pytest.fixture
def own_cluster() -> Iterator[SlurmCluster]:
    """A cluster of the test's own: for a test that kills slurmctld, or must not share the node with what the
    module's other tests did to it (they passed alone and failed after the others on a shared cluster)."""
    yield from _started()


@pytest.fixture
def agent(tmp_path: Path, cluster: SlurmCluster) -> Iterator[AgentProc]:
    a = start_agent(tmp_path, cluster)
    try:
        yield a
    finally:
        a.stop()
