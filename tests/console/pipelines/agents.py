"""Pipeline files for the console's pipeline tests, registered on real agents."""

from __future__ import annotations

import time
from pathlib import Path

from tests.agentproc import AgentProc

REPO = Path(__file__).resolve().parents[3]
WAIT = 60.0  # generous: the machine is shared

# prep -> train, both in-process (cheap; cached on a re-run). `after` rather than inputs: see the report
# (h-pipeline's first cut fails a step that reads another step's output).
TRAIN = f"""
name = "train-demo"
description = "prep then train"
workdir = "{REPO}"

[params]
lr = 0.1

[steps.prep]
call = "tests.console.pipelines.steps:prep"
isolation = "none"
outputs = ["data"]

[steps.train]
call = "tests.console.pipelines.steps:train"
isolation = "none"
params = ["lr"]
outputs = ["model"]
after = ["prep"]
"""

# One step that is a job and takes a minute: to cancel.
SLOW = """
name = "slow"
description = "a long job step"

[steps.wait]
command = ["sh", "-c", "echo waiting; exec sleep 60"]
outputs = []

[steps.wait.resources]
cpu = 0.1
"""


def write(tmp_path: Path, name: str, text: str) -> str:
    path = tmp_path / f"{name}.toml"
    path.write_text(text)
    return str(path)


def register(agent: AgentProc, text: str) -> dict:
    with agent.client() as c:
        r = c.post("/api/v1/pipelines", json={"content": text})
        assert r.status_code == 201, r.text
        return r.json()


def start(agent: AgentProc, name: str, **body) -> dict:
    with agent.client() as c:
        r = c.post(f"/api/v1/pipelines/{name}/runs", json=body)
        assert r.status_code == 202, r.text
        return r.json()


def wait_run(agent: AgentProc, run_id: str, states=("COMPLETED", "FAILED", "CANCELLED")) -> dict:
    end = time.monotonic() + WAIT
    with agent.client() as c:
        while True:
            run = c.get(f"/api/v1/pipelines/runs/{run_id}").json()
            if run["state"] in states:
                return run
            assert time.monotonic() < end, f"run {run_id} still {run['state']}"
            time.sleep(0.1)


def wait_step(agent: AgentProc, run_id: str, step: str, state: str) -> dict:
    end = time.monotonic() + WAIT
    with agent.client() as c:
        while True:
            run = c.get(f"/api/v1/pipelines/runs/{run_id}").json()
            s = next(s for s in run["steps"] if s["step"] == step)
            if s["state"] == state:
                return run
            assert time.monotonic() < end, f"step {step} of {run_id} still {s['state']}"
            time.sleep(0.1)
