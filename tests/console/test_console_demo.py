"""`watchkeeper demo`: agents start, the console reaches them, and nothing is left behind."""

from __future__ import annotations

import asyncio
import json
import os
import shlex
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from console.core.config import load_fleet_file
from console.core.poller import AgentState
from console.demo.fleet import DemoError, DemoFleet, alive_pids, default_agent_command
from console.fleet.status_cli import poll_once
from tests.console.wk_terminal import Terminal

REPO = Path(__file__).resolve().parents[2]
FAKE = [sys.executable, str(Path(__file__).with_name("fake_agent.py"))]
NAMES = ["demo-local", "demo-sim-4gpu", "demo-sim-1gpu"]


def group_pids(base: Path) -> list[int]:
    """Leader and grandchild pids the fake agents wrote."""
    pids: list[int] = []
    for name in NAMES:
        f = base / name / "pids"
        if f.exists():
            pids.extend(json.loads(f.read_text()))
    return pids


def wait_gone(pids: list[int], timeout: float = 10.0) -> list[int]:
    end = time.monotonic() + timeout
    while alive_pids(pids) and time.monotonic() < end:
        time.sleep(0.05)
    return alive_pids(pids)


@pytest.fixture(autouse=True)
def reap(tmp_path: Path):
    """Whatever a failing test leaves behind is killed by pid (never by name)."""
    yield
    for pid_file in tmp_path.rglob("pids"):
        for pid in alive_pids(json.loads(pid_file.read_text())):
            os.kill(pid, signal.SIGKILL)


def test_demo_fleet_starts_agents_the_console_can_poll_and_stops_all(tmp_path: Path) -> None:
    base = tmp_path / "demo"
    with DemoFleet(base, agent_command=FAKE) as fleet:
        specs = fleet.start()
        assert [s.name for s in specs] == NAMES
        assert specs[0].url == f"unix://{(base / 'demo-local' / 'agent.sock').resolve()}"
        assert all(s.url.startswith("http://127.0.0.1:") for s in specs[1:])
        assert [s.token for s in specs] == [f"token-{n}" for n in NAMES]  # read from admin.token
        pids = group_pids(base)
        assert len(pids) == 6 and alive_pids(pids) == pids
        status = asyncio.run(poll_once(specs))
        assert [a.state for a in status.agents] == [AgentState.UP] * 3
        assert [len(a.snapshot.gpus) for a in status.agents] == [2, 4, 1]  # type: ignore[union-attr]
        # Every agent leads its own process group (so killpg reaches its children).
        assert all(os.getpgid(p) == p for p in fleet.pids)
        # A second console or the CLI attaches through the fleet file (private: it holds the tokens).
        assert fleet.fleet_file == (base / "fleet.toml").resolve()
        assert stat.S_IMODE(fleet.fleet_file.stat().st_mode) == 0o600
        attached = load_fleet_file(fleet.fleet_file, env={})
        assert [(s.name, s.url, s.token) for s in attached] == [(s.name, s.url, s.token) for s in specs]
    # The fakes leave their `sleep` grandchildren behind on SIGTERM: the group sweep must get them.
    assert wait_gone(pids) == []
    assert not (base / "fleet.toml").exists()  # its addresses and tokens end with the demo


def test_an_agent_killed_while_the_demo_runs_is_reaped_not_left_defunct(tmp_path: Path) -> None:
    with DemoFleet(tmp_path / "demo", agent_command=FAKE) as fleet:
        fleet.start()
        victim = fleet.agents[1].proc.pid
        os.kill(victim, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while Path(f"/proc/{victim}").exists() and time.monotonic() < deadline:
            time.sleep(0.1)  # a zombie keeps its /proc entry (state Z) until someone waits on it
        assert not Path(f"/proc/{victim}").exists()


def test_demo_agents_run_as_watchkeeper_agent() -> None:
    # The installed entry point, so `ps` shows `watchkeeper-agent run ...`, not `python -c ...`.
    command = default_agent_command()
    assert Path(command[0]).name == "watchkeeper-agent" and len(command) == 1


def test_exception_inside_the_demo_still_stops_everything(tmp_path: Path) -> None:
    base = tmp_path / "demo"
    with pytest.raises(RuntimeError, match="boom"), DemoFleet(base, agent_command=FAKE) as fleet:
        fleet.start()
        pids = group_pids(base)
        raise RuntimeError("boom")
    assert wait_gone(pids) == []


def test_agent_that_fails_to_start_is_reported_and_others_stopped(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("FAKE_AGENT_FAIL", "1")
    with pytest.raises(DemoError) as err, DemoFleet(tmp_path / "d", agent_command=FAKE, ready_timeout_s=10) as fleet:
        fleet.start()
    assert "exited with 3" in str(err.value) and "FAKE_AGENT_FAIL" in str(err.value)
    assert "\n" not in str(err.value)
    assert alive_pids(fleet.pids) == []


def test_agent_ignoring_sigterm_is_killed_after_grace(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("FAKE_AGENT_IGNORE_TERM", "1")
    base = tmp_path / "d"
    fleet = DemoFleet(base, agent_command=FAKE, stop_grace_s=0.5)
    with fleet:
        fleet.start()
        pids = group_pids(base)
        t0 = time.monotonic()
    assert time.monotonic() - t0 < 4
    assert wait_gone(pids) == []


def test_long_data_dir_puts_sockets_in_a_short_temp_dir(tmp_path: Path) -> None:
    base = tmp_path / ("x" * 90)
    with DemoFleet(base, agent_command=FAKE) as fleet:
        specs = fleet.start()
        sock = specs[0].socket_path
        assert sock is not None and len(sock) < 100 and Path(sock).exists()
        assert asyncio.run(poll_once(specs[:1])).all_up
    assert not Path(sock).parent.exists()  # temp socket dir removed


# --------------------------------------------------------------------------- the CLI under a terminal


@pytest.mark.parametrize("how", ["q", "ctrl+c", "SIGTERM", "SIGHUP", "SIGKILL"])
def test_demo_cli_leaves_no_process_behind(tmp_path: Path, how: str) -> None:
    base = tmp_path / "demo"
    term = Terminal(["demo", "--data-dir", str(base), "--agent-command", shlex.join(FAKE), "--refresh", "0.5"])
    try:
        term.wait_for(b"demo-sim-1gpu")  # the TUI drew the fleet
        term.wait_for(b"3 up")
        pids = group_pids(base)
        assert len(pids) == 6 and alive_pids(pids) == pids
        leaders = pids[0::2]
        if how == "q":
            os.write(term.master, b"q")
        elif how == "ctrl+c":
            os.write(term.master, b"\x03")
        else:
            term.proc.send_signal(getattr(signal, how))
        rc = term.proc.wait(20)
        if how == "SIGKILL":
            # No cleanup code runs; PR_SET_PDEATHSIG still takes the agents down.
            assert rc == -signal.SIGKILL
            assert wait_gone(leaders) == []
        else:
            assert rc == {"q": 0, "ctrl+c": 0, "SIGTERM": 128 + 15, "SIGHUP": 128 + 1}[how]
            assert wait_gone(pids) == []
    finally:
        term.close()


# --------------------------------------------------------------------------- one demo per directory


def test_a_second_demo_in_the_same_directory_is_refused_and_touches_nothing(tmp_path: Path) -> None:
    base = tmp_path / "demo"
    with DemoFleet(base, agent_command=FAKE) as first:
        specs = first.start()
        sock = base / "demo-local" / "agent.sock"
        assert sock.exists()
        pids = group_pids(base)
        second = DemoFleet(base, agent_command=FAKE)
        with pytest.raises(DemoError, match=rf"a demo is already running in {base} \(pid {os.getpid()}\)"):
            second.start()
        second.stop()
        assert second.agents == [] and sock.exists() and alive_pids(pids) == pids
        assert asyncio.run(poll_once(specs)).all_up
        # the command line says so too, and exits non-zero without starting anything
        r = subprocess.run(
            [sys.executable, "-m", "console.cli", "demo", "--data-dir", str(base), "--agent-command", shlex.join(FAKE)],
            capture_output=True, text=True, timeout=60, cwd=REPO,
        )  # fmt: skip
        assert r.returncode != 0 and "a demo is already running in" in r.stderr, r.stderr
        assert "starting" not in r.stderr and len(r.stderr.strip().splitlines()) == 1  # one line, nothing started
        assert sock.exists() and group_pids(base) == pids and asyncio.run(poll_once(specs)).all_up
    # once the first demo is gone, the directory is free again
    with DemoFleet(base, agent_command=FAKE) as again:
        again.start()


def test_a_demo_refuses_an_agent_dir_held_by_an_agent_it_did_not_start(tmp_path: Path) -> None:
    import fcntl

    held = tmp_path / "demo" / "demo-sim-1gpu"
    held.mkdir(parents=True)
    (tmp_path / "demo" / "demo-local").mkdir()
    stale_sock = tmp_path / "demo" / "demo-local" / "agent.sock"
    stale_sock.write_text("")
    fd = os.open(held / "agent.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.write(fd, b"4242\n")
        fleet = DemoFleet(tmp_path / "demo", agent_command=FAKE)
        busy = r"demo-sim-1gpu is in use by an agent this demo did not start \(pid 4242\)"
        with pytest.raises(DemoError, match=busy), fleet:
            fleet.start()
        assert fleet.agents == [] and stale_sock.exists()
    finally:
        os.close(fd)
