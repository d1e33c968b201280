"""Helpers for the console's jobs tests against real agents: submit, wait, a fleet file."""

from __future__ import annotations

import time
from pathlib import Path

from tests.agentproc import AgentProc

FINAL = {"COMPLETED", "FAILED", "OUT_OF_MEMORY", "TIMEOUT", "CANCELLED", "LOST"}
# A `training` quota tests can fill on a 2-core machine; `batch` has none (unlimited within the host).
QUOTAS = """
[jobs]
default_mem = "256MiB"
usage_interval = 0.2

[[quotas]]
pipeline = "training"
cpu = 1
mem = "1GiB"
max_running_jobs = 2
"""


def submit(agent: AgentProc, **body) -> dict:
    """Submit a job over the API (as the agent's admin)."""
    with agent.client() as c:
        r = c.post("/api/v1/jobs", json=body)
    assert r.status_code == 201, r.text
    return r.json()


def wait_job(agent: AgentProc, job_id: str, states: set[str] | None = None, timeout: float = 30.0) -> dict:
    """Poll a job until it is in one of `states` (default: any final state)."""
    want = states or FINAL
    deadline = time.monotonic() + timeout
    job: dict = {}
    with agent.client() as c:
        while time.monotonic() < deadline:
            job = c.get(f"/api/v1/jobs/{job_id}").json()
            if job.get("state") in want:
                return job
            time.sleep(0.05)
    raise AssertionError(f"job {job_id} not in {want} after {timeout}s: {job}")


def fleet_file(tmp_path: Path, *agents: AgentProc, dead: str | None = None) -> str:
    """A fleet file naming `agents` (and a `dead` address nobody listens on)."""
    lines = [f'[[agent]]\nname = "{a.name}"\nurl = "{a.url}"\ntoken = "{a.token}"\n' for a in agents]
    if dead is not None:
        lines.append(f'[[agent]]\nname = "gone"\nurl = "{dead}"\ntoken = "x"\n')
    path = tmp_path / "fleet.toml"
    path.write_text("\n".join(lines))
    return str(path)
