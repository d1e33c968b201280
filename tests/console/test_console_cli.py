"""`watchkeeper` command line: status exit codes, --json, usage errors, the TUI on a terminal."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from console.cli import build_parser, main
from tests.console.wk_fakes import ThreadedFakeAgent, agent_routes, closed_url
from tests.console.wk_terminal import Terminal

REPO = Path(__file__).resolve().parents[2]
WATCHKEEPER = [sys.executable, "-m", "console.cli"]


@pytest.fixture
def agent():
    with ThreadedFakeAgent(agent_routes("gpu-01", token="tok")) as server:
        yield server


def test_status_all_up_exits_0(agent, capsys, monkeypatch) -> None:
    monkeypatch.setenv("WATCHKEEPER_TOKEN", "tok")
    assert main(["status", "--agents", agent.url]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split() == ["HOST", "STATE", "CPU%", "MEM%", "GPUS", "GPU%", "GPU", "MEM", "AGE", "WHY"]
    assert out[1].split()[:5] == ["gpu-01", "up", "12.5", "40.0", "2"]


def test_status_with_a_down_or_unauthorised_agent_exits_1(agent, capsys, monkeypatch) -> None:
    monkeypatch.delenv("WATCHKEEPER_TOKEN", raising=False)
    dead = closed_url()
    assert main(["status", "--agents", f"{agent.url},{dead}"]) == 1
    out = capsys.readouterr().out
    assert "401 no token" in out and "connection refused" in out


def test_status_json_is_machine_readable(agent, capsys, monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setenv("GPU01_TOKEN", "tok")
    fleet = tmp_path / "fleet.toml"
    fleet.write_text(
        f'[[agent]]\nname="gpu-01"\nurl="{agent.url}"\ntoken_env="GPU01_TOKEN"\n'
        f'[[agent]]\nname="gone"\nurl="{closed_url()}"\ntimeout=0.5\n'
    )
    assert main(["status", "--json", "--fleet", str(fleet)]) == 1
    doc = json.loads(capsys.readouterr().out)
    assert doc["all_up"] is False and doc["counts"] == {"up": 1, "stale": 0, "down": 1}
    a, b = doc["agents"]
    assert (a["name"], a["state"], a["gpu_count"], a["cpu_percent"]) == ("gpu-01", "up", 2, 12.5)
    assert a["gpu_mem_total"] == 2 * 80 * 2**30 and a["reason"] is None
    assert (b["name"], b["state"], b["reason"]) == ("gone", "down", "connection refused")


def test_agents_flag_replaces_the_fleet_file_from_the_environment(agent, capsys, monkeypatch, tmp_path) -> None:
    fleet = tmp_path / "fleet.toml"
    fleet.write_text(f'[[agent]]\nname="gpu-01"\nurl="{agent.url}"\ntoken="tok"\n')
    monkeypatch.setenv("WATCHKEEPER_FLEET", str(fleet))
    monkeypatch.delenv("WATCHKEEPER_TOKEN", raising=False)
    # The address is the fleet file's gpu-01: listed once, with the file's token, and the fleet is healthy.
    assert main(["status", "--json", "--agents", agent.url]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert [(a["name"], a["state"]) for a in doc["agents"]] == [("gpu-01", "up")]


def test_options_before_the_subcommand_are_kept(agent, capsys, monkeypatch) -> None:
    monkeypatch.setenv("WATCHKEEPER_TOKEN", "tok")
    assert main(["--agents", agent.url, "status", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["all_up"] is True


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["status"], "no agents"),
        (["status", "--agents", "ftp://x"], "must be http://"),
        (["status", "--fleet", "/nonexistent/fleet.toml"], "cannot read fleet file"),
        (["status", "--bogus"], "unrecognized arguments"),
        (["--refresh", "0", "--agents", "http://h:1"], "between 0.2 and 3600"),
        (["--theme", "no-such-theme", "--agents", "http://h:1"], "unknown theme"),
        (["frobnicate"], "invalid choice"),
    ],
)
def test_usage_and_config_errors_exit_2_with_one_line(args: list[str], needle: str) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("WATCHKEEPER_FLEET", "WATCHKEEPER_TOKEN")}
    r = subprocess.run([*WATCHKEEPER, *args], capture_output=True, text=True, cwd=REPO, env=env, timeout=60)
    assert r.returncode == 2, r
    assert r.stdout == ""
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("watchkeeper: error:") and needle in lines[0], r.stderr


def test_entry_point_is_installed() -> None:
    exe = Path(sys.executable).parent / "watchkeeper"
    r = subprocess.run([str(exe), "--version"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and r.stdout.startswith("watchkeeper ")


def test_parser_leaves_a_seam_for_more_subcommands() -> None:
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    assert {"status", "demo"} <= set(sub.choices)  # type: ignore[arg-type]
    args = parser.parse_args(["--readonly", "--refresh", "5"])
    assert args.readonly is True and args.refresh == 5.0 and args.command is None


def test_tui_on_a_terminal_readonly_then_q(agent) -> None:
    term = Terminal(["--agents", agent.url, "--readonly", "--refresh", "0.5"], env={"WATCHKEEPER_TOKEN": "tok"})
    try:
        term.wait_for(b"READ-ONLY", timeout=30)
        term.wait_for(b"1 up", timeout=30)
        os.write(term.master, b"q")
        assert term.proc.wait(15) == 0
    finally:
        term.close()
