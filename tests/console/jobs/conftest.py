"""Real agents with jobs for the console's jobs tests, and no job left behind (jobs outlive their agent)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from tests.console.jobs.agents import QUOTAS


@pytest.fixture
def jobs_agent(agent_factory):
    """A real agent with jobs on and a `training` quota."""
    return agent_factory(name="jobs-a", config=QUOTAS)


@pytest.fixture(autouse=True)
def _no_job_left(tmp_path: Path) -> Iterator[None]:
    yield
    for handle in tmp_path.glob("**/jobs/*/handle.json"):
        try:
            h = json.loads(handle.read_text())
            w = psutil.Process(h["pid"])
            if abs(w.create_time() - h["create_time"]) >= 0.05:
                continue
            for p in [*w.children(recursive=True), w]:
                p.kill()
        except (psutil.Error, OSError, ValueError, KeyError):
            continue
