"""One agent per data dir, and the data dir private to it: real agent processes."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from agent.store.db import StoreOpenError, open_store
from tests.agentproc import AgentProc, make_agent
from tests.serving.test_serving_agent import register


def _second_agent_on(tmp_path: Path, first: AgentProc, name: str) -> AgentProc:
    """An agent with its own port, socket and log, pointed at `first`'s data dir."""
    b = make_agent(tmp_path, name)
    b.args[b.args.index("--data-dir") + 1] = str(first.data_dir)
    b.data_dir = first.data_dir
    return b


def test_a_second_agent_is_refused_and_the_first_keeps_its_store(agent_factory, tmp_path: Path) -> None:
    a = agent_factory("held", config="flush_interval = 0.2\n")
    token = a.token
    with a.client() as c:
        register(c)
    wal = a.data_dir / "watchkeeper.duckdb.wal"
    assert wal.exists()  # what the second agent used to move aside

    b = _second_agent_on(tmp_path, a, "intruder")
    b.start(wait=False)
    assert b.proc is not None and b.proc.wait(30) == 1
    assert b.log().strip().splitlines() == [
        f"watchkeeper-agent: data dir {a.data_dir} is in use by watchkeeper-agent pid {a.proc.pid}"
    ]
    assert not [p.name for p in a.data_dir.iterdir() if ".failed-" in p.name]
    assert wal.exists() and a.socket_path.exists()
    with a.uds_client() as u:
        assert u.get("/api/v1/models").status_code == 200  # still answering on its socket

    # The damage showed at the first agent's next start: a new admin token, its model deleted.
    a.kill()
    a.start()
    assert a.token == token
    with a.client(token) as c:
        assert c.get("/api/v1/whoami").status_code == 200
        assert [m["name"] for m in c.get("/api/v1/models").json()] == ["flights"]
    assert (a.data_dir / "models" / "flights" / "1" / "model.onnx").exists()
    assert "unregistered" not in a.log()


def test_a_stale_lock_file_does_not_block_a_restart(agent_factory) -> None:
    a = agent_factory("stale")
    a.kill()
    assert (a.data_dir / "agent.lock").read_text().strip() == str(a.proc.pid)
    a.start()  # the kernel dropped the dead process's lock
    assert (a.data_dir / "agent.lock").read_text().strip() == str(a.proc.pid)


def _mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


def _private_files(d: Path) -> list[Path]:
    names = ["watchkeeper.duckdb", "watchkeeper.duckdb.wal", "audit.head", "admin.token", "agent.lock"]
    return [d / n for n in names if (d / n).exists()] + [p for p in (d / "journal").iterdir()]


def test_the_data_dir_is_0700_and_its_files_0600_even_when_they_were_looser(agent_factory, tmp_path: Path) -> None:
    old = os.umask(0o022)  # the usual login umask, which the agent inherits
    try:
        a = agent_factory("priv", config="flush_interval = 0.2\n")
        with a.client() as c:
            register(c)
    finally:
        os.umask(old)
    files = _private_files(a.data_dir)
    assert {p.name for p in files} >= {"watchkeeper.duckdb", "audit.head", "admin.token", "agent.lock"}
    assert any(p.suffix == ".wkj" for p in files)
    assert _mode(a.data_dir) == 0o700 and _mode(a.data_dir / "journal") == 0o700
    assert {p.name: oct(_mode(p)) for p in files} == {p.name: oct(0o600) for p in files}
    a.stop()

    # An install from before: everything readable by others. The next start tightens it and says so.
    os.chmod(a.data_dir, 0o755)
    for p in files:
        if p.exists():
            os.chmod(p, 0o644)
    a.start()
    assert _mode(a.data_dir) == 0o700
    assert {p.name: oct(_mode(p)) for p in _private_files(a.data_dir)} == {
        p.name: oct(0o600) for p in _private_files(a.data_dir)
    }
    assert "readable by others; tightened" in a.log()


HOLD_STORE = """
import sys, time
from pathlib import Path
from agent.store.db import open_store
opened = open_store(Path(sys.argv[1]))
opened.con.execute("CHECKPOINT")
opened.con.execute("INSERT INTO agent_alerts VALUES (now(), 'info', 'k', 'kept in the WAL')")
print("open", flush=True)
time.sleep(60)
"""


def test_a_store_locked_by_another_process_is_refused_and_its_wal_left_alone(tmp_path: Path) -> None:
    db = tmp_path / "wk.duckdb"
    holder = subprocess.Popen([sys.executable, "-c", HOLD_STORE, str(db)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "open"
        wal = tmp_path / "wk.duckdb.wal"
        before = wal.read_bytes()
        with pytest.raises(StoreOpenError, match="open in another process"):
            open_store(db)
        assert wal.read_bytes() == before and [p.name for p in tmp_path.iterdir() if "failed" in p.name] == []
    finally:
        holder.kill()
        holder.wait(10)


def test_the_demo_checks_the_lock_file_the_agent_takes() -> None:
    from agent.datadir import LOCK_NAME
    from console.demo.fleet import AGENT_LOCK

    assert AGENT_LOCK == LOCK_NAME  # the console may not import agent/ (tests/test_boundaries.py)
