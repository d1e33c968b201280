"""`watchkeeper` on a pseudo-terminal, for tests of the real TUI process."""

from __future__ import annotations

import os
import pty
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


class Terminal:
    """Runs `watchkeeper demo` on a pseudo-terminal and drains its output."""

    def __init__(self, args: list[str], env: dict[str, str] | None = None) -> None:
        master, slave = pty.openpty()
        full_env = {**os.environ, "TERM": "xterm-256color", "COLUMNS": "120", "LINES": "30", **(env or {})}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "console.cli", *args],
            stdin=slave,
            stdout=slave,
            stderr=slave,
            cwd=REPO,
            env=full_env,
            start_new_session=True,
        )
        os.close(slave)
        self.master = master
        self.output = bytearray()
        self._reader = threading.Thread(target=self._drain, daemon=True)
        self._reader.start()

    def _drain(self) -> None:
        while True:
            try:
                chunk = os.read(self.master, 65536)
            except OSError:
                return
            if not chunk:
                return
            self.output.extend(chunk)

    def wait_for(self, needle: bytes, timeout: float = 60.0) -> None:
        end = time.monotonic() + timeout
        while needle not in self.output:
            assert self.proc.poll() is None, f"exited {self.proc.returncode}: {bytes(self.output[-2000:])!r}"
            assert time.monotonic() < end, f"{needle!r} not seen: {bytes(self.output[-2000:])!r}"
            time.sleep(0.05)

    def close(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(5)
        os.close(self.master)
