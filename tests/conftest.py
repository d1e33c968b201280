"""Shared fixtures: real agent processes (see tests/agentproc.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.agentproc import AgentProc, make_agent


@pytest.fixture
def agent_factory(tmp_path: Path) -> Iterator:
    """Start real agents: `agent_factory(name="a1", simulate_gpus=2)`; all are stopped at teardown."""
    started: list[AgentProc] = []

    def factory(name: str = "agent", wait: bool = True, **kw) -> AgentProc:
        a = make_agent(tmp_path, name=name, **kw)
        started.append(a)
        return a.start(wait=wait)

    yield factory
    for a in started:
        try:
            a.stop(timeout=10)
        except Exception:
            a.kill()
        a.socket_path.unlink(missing_ok=True)


@pytest.fixture(autouse=True)
def _console_state_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The console's remembered audit heads (console/core/audit_heads.py) go to the test's tmp dir, never ~."""
    monkeypatch.setenv("WATCHKEEPER_STATE_DIR", str(tmp_path / "console-state"))
