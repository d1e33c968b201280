"""Real agent processes for tests: free loopback port, Unix socket, own data dir, admin token."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class AgentProc:
    name: str
    data_dir: Path
    port: int
    socket_path: Path
    args: list[str]
    env: dict[str, str]
    proc: subprocess.Popen | None = None
    log_path: Path = field(default=Path())

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def token(self) -> str:
        return (self.data_dir / "admin.token").read_text().strip()

    def headers(self, token: str | None = None) -> dict[str, str]:
        return {"Authorization": f"Bearer {token or self.token}"}

    def client(self, token: str | None = None, **kw) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers=self.headers(token), timeout=10, **kw)

    def uds_client(self, **kw) -> httpx.Client:
        return httpx.Client(
            transport=httpx.HTTPTransport(uds=str(self.socket_path)),
            base_url="http://agent",
            timeout=10,
            **kw,
        )

    def start(self, wait: bool = True, timeout: float = 20.0) -> AgentProc:
        self.log_path = self.data_dir.parent / f"{self.name}.log"
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "agent.cli", "run", *self.args],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.env,
                start_new_session=True,
            )
        if wait:
            self.wait_ready(timeout)
        return self

    def wait_ready(self, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"agent {self.name} exited {self.proc.returncode}:\n{self.log()}")
            try:
                if httpx.get(f"{self.url}/readyz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        raise TimeoutError(f"agent {self.name} not ready in {timeout}s:\n{self.log()}")

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def stop(self, timeout: float = 15.0) -> int | None:
        """SIGTERM and wait: the graceful path (flush + checkpoint)."""
        if self.proc is None or self.proc.poll() is not None:
            return None if self.proc is None else self.proc.returncode
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise

    def kill(self) -> None:
        """SIGKILL the agent: the crash path."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)


def make_agent(
    base: Path,
    name: str = "agent",
    simulate_gpus: int = 0,
    simulate_host: bool = False,
    sample_interval: float = 0.2,
    extra_args: list[str] | None = None,
    config: str | None = None,
    env: dict[str, str] | None = None,
) -> AgentProc:
    data_dir = base / name
    # AF_UNIX paths are limited to ~107 bytes; pytest's tmp paths can be long.
    sock = Path(f"/tmp/wk-{os.getpid()}-{name}-{free_port()}.sock")
    port = free_port()
    args = [
        "--data-dir",
        str(data_dir),
        "--name",
        name,
        "--listen",
        f"127.0.0.1:{port}",
        "--listen",
        f"unix:{sock}",
        "--sample-interval",
        str(sample_interval),
    ]
    if simulate_gpus:
        args += ["--simulate-gpus", str(simulate_gpus)]
    if simulate_host:
        args += ["--simulate-host"]
    if config is not None:
        cfg = base / f"{name}.toml"
        cfg.write_text(config)
        args += ["--config", str(cfg)]
    args += extra_args or []
    e = {k: v for k, v in os.environ.items() if k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHKEEPER_TOKEN")}
    e.update(env or {})
    return AgentProc(name=name, data_dir=data_dir, port=port, socket_path=sock, args=args, env=e)
