"""The agent's end of the job launcher (agent/jobs/launcher.py): wrappers forked from one warm process.

`launch()` hands the launcher a job's wrapper options, working dir, environment and output fds, and gets
back the wrapper's pid. The launcher is started on first use and again after it died. Where it can't be
started, or is turned off (`WATCHKEEPER_JOB_LAUNCHER=0`), the caller starts the wrapper as its own
interpreter (tiers/base.py `spawn_wrapper`).

A request that reached the launcher but got no answer is an error, never retried another way: the
launcher may have forked the wrapper before it died, and a job must not be started twice.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
import threading
from pathlib import Path

log = logging.getLogger("watchkeeper.jobs")

LAUNCHER = str(Path(__file__).resolve().parent / "launcher.py")
START_TIMEOUT_S = 10.0
ANSWER_TIMEOUT_S = 10.0


class LauncherUnavailable(Exception):
    """The launcher could not be started or was gone before the request: start the wrapper another way."""


class Launcher:
    """One launcher process per agent, shared by the tiers (thread-safe: one request at a time)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._proc: subprocess.Popen | None = None
        self._sock: socket.socket | None = None
        self.launches = 0
        self.starts = 0

    def _start(self) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            proc = subprocess.Popen(
                [sys.executable, "-I", "-S", LAUNCHER], stdin=theirs, stdout=subprocess.DEVNULL,
                start_new_session=True, close_fds=True,
            )  # fmt: skip
        except OSError as e:
            ours.close()
            raise LauncherUnavailable(f"could not start the job launcher: {e}") from e
        finally:
            theirs.close()
        ours.settimeout(START_TIMEOUT_S)
        try:
            ready = ours.recv(64)
        except OSError as e:
            ready = b""
            log.error("jobs: the job launcher did not answer: %s", e)
        if ready != b'{"ready": true}':
            ours.close()
            proc.kill()
            proc.wait()
            raise LauncherUnavailable("the job launcher did not start")
        ours.settimeout(ANSWER_TIMEOUT_S)
        self._proc, self._sock = proc, ours
        self.starts += 1

    def _drop(self) -> None:
        if self._sock is not None:
            self._sock.close()
        if self._proc is not None:
            self._proc.kill()
            self._proc.wait()
        self._sock = self._proc = None

    def launch(self, argv: list[str], cwd: str, env: dict[str, str], out: int, err: int, nice: int = 0) -> int:
        """Fork a wrapper running `wrapper.py ARGV...` in a new session; returns its pid. Raises
        LauncherUnavailable (nothing was started: start it another way) or OSError (the launcher refused it,
        e.g. no such working dir; or it died mid-request: the job may have started, so don't retry)."""
        req = json.dumps({"argv": argv, "cwd": cwd, "env": env, "nice": nice}).encode()
        with self._lock:
            for fresh in (False, True):
                if self._sock is None:
                    self._start()
                assert self._sock is not None
                try:
                    socket.send_fds(self._sock, [req], [out, err])
                    break
                except OSError as e:  # not delivered, nothing started: a new launcher, once
                    self._drop()
                    if fresh:
                        raise LauncherUnavailable(f"the job launcher is gone: {e}") from e
                    log.warning("jobs: the job launcher was gone (%s); starting a new one", e)
            try:
                raw = self._sock.recv(4096)
            except OSError as e:
                raw = b""
                why = str(e)
            else:
                why = "it closed the connection"
            if not raw:
                self._drop()
                raise OSError(f"the job launcher died while starting the job ({why}); it may have started")
        ans = json.loads(raw)
        if "pid" not in ans:
            raise OSError(ans.get("errno") or 0, ans.get("error", "the job launcher refused the job"))
        self.launches += 1
        return int(ans["pid"])

    def close(self) -> None:
        with self._lock:
            self._drop()


_shared: Launcher | None = None
_shared_lock = threading.Lock()


def shared() -> Launcher | None:
    """The process's launcher; None where it is turned off (`WATCHKEEPER_JOB_LAUNCHER=0` in the agent's
    environment: each wrapper then starts as its own interpreter, ~15 ms of CPU more per job).

    It was off by default while bursts of short jobs sometimes took 14-120 s to be seen ending; the cause was
    the wrapper's own work held to the job's CPU quota inside its cgroup (agent/jobs/wrapper.py), not the
    launcher, which only made it likelier (docs/jobs.md, "The job launcher")."""
    global _shared
    if os.environ.get("WATCHKEEPER_JOB_LAUNCHER", "1") == "0":
        return None
    with _shared_lock:
        if _shared is None:
            _shared = Launcher()
        return _shared
