"""The console against real agent processes (the `agent_factory` fixture in tests/conftest.py)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from console.app import WatchkeeperApp
from console.core.config import AgentSpec
from console.core.errors import ErrorKind
from console.core.poller import AgentState, FleetPoller
from console.demo.fleet import alive_pids
from console.fleet.host_screen import HostScreen
from console.fleet.process_table import ProcessTable
from tests.console.wk_terminal import Terminal

REPO = Path(__file__).resolve().parents[2]
# The agent writes samples to its store in batches (5 s by default); tests want history sooner.
FAST_FLUSH = "flush_interval = 0.2\n"


async def test_poller_reads_real_agents_over_tcp_and_unix_socket(agent_factory) -> None:
    a = agent_factory(name="int-a", simulate_gpus=2, config=FAST_FLUSH)
    b = agent_factory(name="int-b", simulate_gpus=0, simulate_host=True)
    specs = [
        AgentSpec("a-http", a.url, token=a.token),
        AgentSpec("a-sock", f"unix://{a.socket_path}"),  # the peer uid authenticates us
        AgentSpec("b-http", b.url, token=b.token),
        AgentSpec("b-bad", b.url, token="not-the-token"),
    ]
    async with FleetPoller(specs) as poller:
        status = await poller.poll()
        s = {x.name: x for x in status.agents}
        assert s["a-http"].state is AgentState.UP, s["a-http"]
        assert s["a-sock"].state is AgentState.UP, s["a-sock"]
        assert s["a-http"].snapshot is not None and len(s["a-http"].snapshot.gpus) == 2
        assert s["a-http"].host is not None and s["a-http"].host.sample_interval_s == pytest.approx(0.2)
        assert s["b-http"].snapshot is not None and s["b-http"].snapshot.host_simulated
        assert s["b-bad"].state is AgentState.DOWN and s["b-bad"].reason == "401 bad token"

        await asyncio.sleep(1.0)
        now = poller.now()
        cpu = await poller.series("a-http", "cpu_percent", now - 60, now, 0.2)
        gpu = await poller.series("a-sock", "gpu_utilization_percent", now - 60, now, 0.2)
        assert len(cpu.series) == 1 and any(p.value is not None for p in cpu.series[0].points)
        assert sorted(x.labels["gpu"] for x in gpu.series) == ["0", "1"]

        a.kill()
        status = await poller.poll()
        s = {x.name: x for x in status.agents}
        assert s["a-http"].state is AgentState.DOWN and s["a-http"].error_kind is ErrorKind.REFUSED
        assert s["a-sock"].state is AgentState.DOWN
        assert s["a-http"].last_seen is not None and s["a-http"].snapshot is not None  # last known kept
        assert s["b-http"].state is AgentState.UP


def test_status_command_against_real_agents(agent_factory) -> None:
    a = agent_factory(name="st-a", simulate_gpus=1)
    env = {**os.environ, "WATCHKEEPER_TOKEN": a.token}
    cmd = [sys.executable, "-m", "console.cli", "status", "--json", "--agents", a.url]
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=env, timeout=60)
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["agents"][0]["label"] == "st-a" and doc["agents"][0]["gpu_count"] == 1
    a.stop()
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=env, timeout=60)
    assert r.returncode == 1
    assert json.loads(r.stdout)["agents"][0]["reason"] == "connection refused"


async def test_tui_drills_into_a_real_agent(agent_factory) -> None:
    a = agent_factory(name="tui-a", simulate_gpus=2, config=FAST_FLUSH)
    time.sleep(1.0)  # a few samples of history
    app = WatchkeeperApp(FleetPoller([AgentSpec("tui-a", a.url, token=a.token)]), refresh_s=0.5)
    async with app.run_test(size=(120, 40)) as pilot:
        for _ in range(200):
            if app.fleet_status is not None:
                break
            await pilot.pause(0.02)
        assert app.fleet_status is not None and app.fleet_status.all_up
        app.open_host("tui-a")
        for _ in range(300):
            if isinstance(app.screen, HostScreen) and app.screen.series:
                break
            await pilot.pause(0.02)
        host = app.screen
        assert isinstance(host, HostScreen) and host.series_errors == {}
        await pilot.pause(0.2)
        assert len(host.query("GpuPanel")) == 2
        assert len(host.query_one("#cpu").history) >= 2  # type: ignore[attr-defined]
        # The poll brings the summary's lean sample (no processes); the host screen's process tables
        # come from the agent's whole sample, asked beside the history.
        polled = app.fleet_status.get("tui-a")
        assert polled is not None and polled.summary is not None and polled.summary.snapshot_lean
        assert polled.snapshot is not None and polled.snapshot.top_rss == []
        assert host.detail is not None and host.detail.top_rss
        top_rss = host.query_one("#top-rss", ProcessTable)
        assert top_rss.row_keys == [str(p.pid) for p in host.detail.top_rss]


def test_real_demo_starts_three_agents_and_q_stops_them(tmp_path: Path) -> None:
    term = Terminal(["demo", "--data-dir", str(tmp_path / "demo"), "--refresh", "1"])
    children: list[int] = []
    try:
        term.wait_for(b"3 up", timeout=90)
        children = [p.pid for p in psutil.Process(term.proc.pid).children(recursive=True)]
        assert len(children) >= 3
        assert sorted(p.name() for p in map(psutil.Process, children))  # real processes
        for name in ("demo-local", "demo-sim-4gpu", "demo-sim-1gpu"):
            assert (tmp_path / "demo" / name / "admin.token").exists()
        os.write(term.master, b"q")
        assert term.proc.wait(30) == 0
        deadline = time.monotonic() + 15
        while alive_pids(children) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert alive_pids(children) == []
    finally:
        term.close()
        for pid in alive_pids(children):
            os.kill(pid, signal.SIGKILL)
