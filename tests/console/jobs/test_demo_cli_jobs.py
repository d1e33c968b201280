"""`watchkeeper demo` with real agents: its jobs run, and leaving the demo leaves none of them behind
(jobs outlive their agent by design, so the demo cancels its own before it stops the agents)."""

from __future__ import annotations

import json
import os
import shlex
import sys
import time
from pathlib import Path

import httpx
import psutil

from tests.console.wk_terminal import Terminal


def job_processes(base: Path) -> list[psutil.Process]:
    """The demo jobs' processes still alive (from each job's handle.json: the wrapper and its tree)."""
    alive = []
    for handle in base.glob("*/jobs/*/handle.json"):
        try:
            h = json.loads(handle.read_text())
            w = psutil.Process(h["pid"])
            if abs(w.create_time() - h["create_time"]) < 0.05 and w.status() != psutil.STATUS_ZOMBIE:
                alive.extend([w, *w.children(recursive=True)])
        except (psutil.Error, OSError, ValueError, KeyError):
            continue
    return alive


def test_demo_runs_real_jobs_and_quitting_leaves_none_behind(tmp_path: Path) -> None:
    base = tmp_path / "demo"
    # This tree's agent (the installed `watchkeeper-agent` script may import another checkout's).
    agent = shlex.join([sys.executable, "-c", "import sys; from agent.cli import main; sys.exit(main())"])
    term = Terminal(["demo", "--data-dir", str(base), "--refresh", "1", "--agent-command", agent])
    try:
        term.wait_for(b"demo-sim-1gpu", timeout=120)
        fleet = (base / "fleet.toml").read_text()
        url = next(line.split('"')[1] for line in fleet.splitlines() if line.startswith("url") and "http://" in line)
        token = next(line.split('"')[1] for line in fleet.splitlines() if line.startswith("token"))
        # The first agent is reached over its socket in the fleet file; its HTTP port is in its command line.
        running: set[str] = set()
        deadline = time.monotonic() + 90
        with httpx.Client(base_url=_first_agent_url(base, url), headers={"Authorization": f"Bearer {token}"},
                          timeout=10) as c:  # fmt: skip
            while time.monotonic() < deadline and not {"train-flights", "greedy-hold"} <= running:
                jobs = c.get("/api/v1/jobs").json()["jobs"]
                running = {j["name"] for j in jobs if j["state"] == "RUNNING"}
                time.sleep(0.5)
        assert {"train-flights", "greedy-hold"} <= running
        assert job_processes(base)
        os.write(term.master, b"q")
        assert term.proc.wait(60) == 0
        deadline = time.monotonic() + 20
        while job_processes(base) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert job_processes(base) == []
    finally:
        term.close()
        for p in job_processes(base):
            p.kill()


def _first_agent_url(base: Path, fallback: str) -> str:
    """demo-local's HTTP address, from its command line (the fleet file names its Unix socket)."""
    for p in psutil.process_iter(["cmdline"]):
        cmd = p.info["cmdline"] or []
        if "--name" in cmd and cmd[cmd.index("--name") + 1] == "demo-local" and str(base) in " ".join(cmd):
            listens = [cmd[i + 1] for i, a in enumerate(cmd) if a == "--listen" and cmd[i + 1].startswith("127.")]
            if listens:
                return f"http://{listens[0]}"
    return fallback
