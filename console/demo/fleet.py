"""`watchkeeper demo`: three local agents as child processes, and the console on them.

Child processes are the risky part: an agent left running after the demo holds a port, a socket
and a DuckDB file. So every agent runs in its own process group (its own children included), logs
to a file (a pipe nobody reads would block it), is told to die with us where Linux allows
(PR_SET_PDEATHSIG, so even `kill -9` of the console takes them down), and `DemoFleet` stops them
all on any exit: normal, exception, Ctrl+C, SIGTERM or SIGHUP (SIGTERM, then SIGKILL after a
grace period).

Only one demo runs in a directory: `start` takes an exclusive `flock` on `<dir>/demo.lock` (holding its
pid) before it touches anything there, and refuses when it is held or when an agent it did not start
holds one of the agent data dirs (the agent's own lock, `agent.lock`): a second demo used to unlink the
first one's sockets and start agents that ruined the running agents' stores.

To attach a second console or the CLI, `start` writes `<dir>/fleet.toml` (0600: it holds the agents'
tokens) and the CLI prints the one line that uses it. Agents run as `watchkeeper-agent` (the installed
entry point) so `ps` says what they are, and a reaper thread waits on any agent that dies while the demo
runs, so none lingers as `<defunct>`.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import os
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

import httpx

from console.core.config import AgentSpec

READY_TIMEOUT_S = 60.0
STOP_GRACE_S = 5.0
# sockaddr_un.sun_path is 108 bytes on Linux; leave room for the NUL.
MAX_SOCKET_PATH = 100
DEMO_LOCK = "demo.lock"
FLEET_FILE = "fleet.toml"
REAP_INTERVAL_S = 1.0
# The agent's data-dir lock (agent/datadir.py LOCK_NAME; the console imports nothing from agent/ but schemas).
AGENT_LOCK = "agent.lock"


class DemoError(RuntimeError):
    """The demo fleet could not be started (message fits on one line)."""


@dataclass(frozen=True)
class DemoAgent:
    """One agent of the demo fleet."""

    name: str
    simulate_gpus: int
    simulate_host: bool
    via_socket: bool = False


DEMO_PLAN: tuple[DemoAgent, ...] = (
    # Real psutil data for this machine, two simulated GPUs; reached over its Unix socket.
    DemoAgent("demo-local", simulate_gpus=2, simulate_host=False, via_socket=True),
    DemoAgent("demo-sim-4gpu", simulate_gpus=4, simulate_host=True),
    DemoAgent("demo-sim-1gpu", simulate_gpus=1, simulate_host=True),
)


@dataclass
class RunningAgent:
    """A started agent process and how to reach it."""

    plan: DemoAgent
    data_dir: Path
    port: int
    socket_path: Path
    log_path: Path
    proc: subprocess.Popen[bytes]
    token: str | None = None

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def spec(self) -> AgentSpec:
        """How the console reaches this agent."""
        url = f"unix://{self.socket_path}" if self.plan.via_socket else self.http_url
        return AgentSpec(name=self.plan.name, url=url, token=self.token, timeout_s=2.0)


DEMO_CONFIG = """\
[monitoring]
window = 20
interval = 2

[alerting]
interval = 3

# The demo's jobs (console/demo/jobs.py) run under these quotas; a cancelled job gets 2 s to stop.
[jobs]
default_mem = "256MiB"
terminate_grace = 2

[[quotas]]
pipeline = "training"
cpu = 1.5
mem = "1GiB"
max_running_jobs = 2
priority = 10

[[quotas]]
pipeline = "batch"
cpu = 0.5
mem = "288MiB"
max_running_jobs = 2
"""


def default_agent_command() -> list[str]:
    """Start agents with this installation: its `watchkeeper-agent` script (what `ps` then shows),
    else this interpreter running the agent's entry point."""
    script = Path(sys.executable).with_name("watchkeeper-agent")
    if script.is_file() and os.access(script, os.X_OK):
        return [str(script)]
    return [sys.executable, "-c", "import sys; from agent.cli import main; sys.exit(main())"]


def fleet_toml(specs: Sequence[AgentSpec]) -> str:
    """A fleet file naming `specs` with their tokens (see console/core/config.py)."""
    lines = ["# Written by `watchkeeper demo`; valid while it runs. Holds the agents' tokens: keep it private.\n"]
    for s in specs:
        lines.append(f"[[agent]]\nname = {_toml_str(s.name)}\nurl = {_toml_str(s.url)}\n")
        if s.token:
            lines.append(f"token = {_toml_str(s.token)}\n")
        lines.append("\n")
    return "".join(lines)


def _toml_str(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def free_port() -> int:
    """A loopback TCP port free right now (the agent binds it a moment later)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _signal_group(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


@dataclass
class DemoFleet:
    """Starts the demo agents and guarantees they are stopped (use as a context manager)."""

    base_dir: Path
    plan: Sequence[DemoAgent] = DEMO_PLAN
    agent_command: Sequence[str] = field(default_factory=default_agent_command)
    ready_timeout_s: float = READY_TIMEOUT_S
    stop_grace_s: float = STOP_GRACE_S
    agents: list[RunningAgent] = field(default_factory=list)
    _socket_dir: Path | None = None
    _lock_fd: int | None = None
    _reaper: threading.Thread | None = None
    _stopping: threading.Event = field(default_factory=threading.Event)

    def __enter__(self) -> DemoFleet:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def pids(self) -> list[int]:
        return [a.proc.pid for a in self.agents]

    def claim(self) -> None:
        """Take the demo directory (refused with DemoError when a demo or a foreign agent holds it)."""
        if self._lock_fd is not None:
            return
        self.base_dir.mkdir(parents=True, exist_ok=True)
        self._lock_fd = _take_lock(self.base_dir / DEMO_LOCK, f"a demo is already running in {self.base_dir}")
        for plan in self.plan:
            held = _lock_holder(self.base_dir / plan.name / AGENT_LOCK)
            if held is not None:
                raise DemoError(f"{self.base_dir / plan.name} is in use by an agent this demo did not start ({held})")

    def start(self) -> list[AgentSpec]:
        """Start every agent, wait until all are ready, and return their specs."""
        self.claim()
        for plan in self.plan:
            self.agents.append(self._spawn(plan))
        self._reaper = threading.Thread(target=self._reap, name="demo-reaper", daemon=True)
        self._reaper.start()
        deadline = time.monotonic() + self.ready_timeout_s
        for agent in self.agents:
            self._wait_ready(agent, deadline)
            agent.token = self._read_token(agent)
        specs = [a.spec() for a in self.agents]
        fd = os.open(self.fleet_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(fleet_toml(specs))
        return specs

    @property
    def fleet_file(self) -> Path:
        """The fleet file a second console or the CLI can use while the demo runs."""
        return self.base_dir.resolve() / FLEET_FILE

    def _reap(self) -> None:
        """Wait on agents that die while the demo runs (killed by hand, crashed): no `<defunct>` left."""
        while not self._stopping.wait(REAP_INTERVAL_S):
            for agent in list(self.agents):
                agent.proc.poll()

    def _socket_path(self, data_dir: Path) -> Path:
        path = data_dir.resolve() / "agent.sock"
        if len(str(path)) <= MAX_SOCKET_PATH:
            return path
        if self._socket_dir is None:
            self._socket_dir = Path(tempfile.mkdtemp(prefix="wk-demo-"))
        return self._socket_dir / f"{data_dir.name}.sock"

    def _spawn(self, plan: DemoAgent) -> RunningAgent:
        data_dir = self.base_dir / plan.name
        data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)  # the agent keeps it private
        sock = self._socket_path(data_dir)
        with contextlib.suppress(FileNotFoundError):
            sock.unlink()  # left over from a demo that was killed with -9
        port = free_port()
        args = [
            *self.agent_command,
            "run",
            "--data-dir", str(data_dir.resolve()),
            "--listen", f"127.0.0.1:{port}",
            "--listen", f"unix:{sock}",
            "--name", plan.name,
            "--simulate-gpus", str(plan.simulate_gpus),
            # a different seed per agent, so simulated hosts don't move in lockstep
            "--seed", str(zlib.crc32(plan.name.encode())),
        ]  # fmt: skip
        if plan.simulate_host:
            args.append("--simulate-host")
        # Short drift windows and quick rule evaluation, so drift and its alert show within a minute.
        cfg = data_dir / "agent.toml"
        cfg.write_text(DEMO_CONFIG)
        args += ["--config", str(cfg)]
        log_path = data_dir / "agent.log"
        with open(log_path, "ab") as log:
            proc = subprocess.Popen(
                args,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # own process group: killpg reaches its children too
                preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None,
            )
        return RunningAgent(plan, data_dir, port, sock, log_path, proc)

    def _wait_ready(self, agent: RunningAgent, deadline: float) -> None:
        last = "no answer"
        with httpx.Client(timeout=1.0, trust_env=False) as http:
            while time.monotonic() < deadline:
                if agent.proc.poll() is not None:
                    code = agent.proc.returncode
                    raise DemoError(f"agent {agent.plan.name} exited with {code}: {self._log_tail(agent)}")
                try:
                    r = http.get(f"{agent.http_url}/readyz")
                    if r.status_code == 200:
                        return
                    last = f"/readyz {r.status_code}"
                except httpx.HTTPError as exc:
                    last = type(exc).__name__
                time.sleep(0.1)
        raise DemoError(f"agent {agent.plan.name} not ready after {self.ready_timeout_s:g}s ({last})")

    def _read_token(self, agent: RunningAgent) -> str | None:
        path = agent.data_dir / "admin.token"
        try:
            token = path.read_text().strip()
        except FileNotFoundError:
            return None  # the console still gets in over the Unix socket (peer uid)
        return token or None

    @staticmethod
    def _log_tail(agent: RunningAgent, lines: int = 3) -> str:
        try:
            text = agent.log_path.read_text(errors="replace").strip().splitlines()
        except OSError:
            return "(no log)"
        return " | ".join(text[-lines:]) or "(empty log)"

    def stop(self) -> None:
        """Stop every agent and its children: SIGTERM, then SIGKILL after the grace period.

        SIGINT/SIGTERM/SIGHUP are held back meanwhile: a second Ctrl+C must not abort the cleanup
        half-way (they are delivered, and act, once it is done).
        """
        blocked = {signal.SIGINT, signal.SIGTERM, signal.SIGHUP}
        on_main = threading.current_thread() is threading.main_thread()
        old = signal.pthread_sigmask(signal.SIG_BLOCK, blocked) if on_main else None
        try:
            self._stop()
        finally:
            if old is not None:
                signal.pthread_sigmask(signal.SIG_SETMASK, old)

    def _stop(self) -> None:
        self._stopping.set()
        procs = [a.proc for a in self.agents]
        for proc in procs:
            if proc.poll() is None:
                _signal_group(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + self.stop_grace_s
        for proc in procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        for proc in procs:
            if proc.poll() is None:
                _signal_group(proc.pid, signal.SIGKILL)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=5)
            # The leader is gone; anything it left in its group (a worker, a grandchild) goes too.
            if _group_alive(proc.pid):
                _signal_group(proc.pid, signal.SIGKILL)
        if self._socket_dir is not None:
            for path in self._socket_dir.glob("*"):
                with contextlib.suppress(OSError):
                    path.unlink()
            with contextlib.suppress(OSError):
                self._socket_dir.rmdir()
            self._socket_dir = None
        with contextlib.suppress(OSError):
            self.fleet_file.unlink()  # its tokens and addresses die with the demo
        if self._lock_fd is not None:  # last: the directory is free once its agents are gone
            os.close(self._lock_fd)
            self._lock_fd = None


def _read_pid(fd: int) -> str:
    try:
        text = os.pread(fd, 64, 0).decode(errors="replace").strip()
    except OSError:
        text = ""
    return f"pid {text}" if text.isdigit() else "pid unknown"


def _take_lock(path: Path, busy: str) -> int:
    """Hold an exclusive flock on `path` (writing our pid into it), or raise DemoError: `busy (pid N)`."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = _read_pid(fd)
        os.close(fd)
        raise DemoError(f"{busy} ({holder}); stop it first, or use another --data-dir") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


def _lock_holder(path: Path) -> str | None:
    """Who holds the flock on `path` ("pid N"), or None when nobody does (checked without keeping it)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return _read_pid(fd)
    finally:
        os.close(fd)
    return None


@contextlib.contextmanager
def exit_on_signals(signals: Sequence[int] = (signal.SIGTERM, signal.SIGHUP)) -> Iterator[None]:
    """Turn SIGTERM/SIGHUP into SystemExit while not in the TUI, so `finally` blocks run."""

    def handler(signum: int, frame: FrameType | None) -> None:
        raise SystemExit(128 + signum)

    previous = {s: signal.signal(s, handler) for s in signals}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def parse_agent_command(value: str | None) -> list[str]:
    """`--agent-command` as argv (shell-like quoting), or the default."""
    if not value:
        return default_agent_command()
    return shlex.split(value)


def demo_dir(value: str | None) -> Path:
    """Where the demo keeps its agents' data (default `./.demo`)."""
    return Path(value) if value else Path.cwd() / ".demo"


def alive_pids(pids: Sequence[int]) -> list[int]:
    """The subset of `pids` still running (zombies count as gone)."""
    out = []
    for pid in pids:
        if not _alive(pid):
            continue
        try:
            with open(f"/proc/{pid}/stat") as f:
                if f.read().split(")")[-1].split()[0] == "Z":
                    continue
        except OSError:
            pass
        out.append(pid)
    return out
