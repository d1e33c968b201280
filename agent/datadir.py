"""The agent's data dir: held by one agent at a time, and private to the agent's user.

A second agent started on a data dir in use used to open the store, fail on DuckDB's file lock, take
that for a WAL that won't replay and move the running agent's WAL aside (the first agent then lost
its tokens and models at its next start). So the first thing `watchkeeper-agent run` does, before
it touches anything in the dir (migrations, WAL, tokens, sockets), is take an exclusive `flock` on
`<data_dir>/agent.lock`, which holds the holder's pid. The kernel drops the lock when the process
dies, however it dies, so a stale lock file never blocks a restart.

The dir is 0700 and what the agent creates in it 0600 (the process umask is 077 once listeners are
bound); an existing dir or file that is looser is tightened at start, with a log line.
"""

from __future__ import annotations

import fcntl
import logging
import os
import stat
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("watchkeeper.agent")

LOCK_NAME = "agent.lock"
# The agent's own files directly in the data dir; anything else there (a config, a log) is left as it is.
PRIVATE_FILES = ("watchkeeper.duckdb", "watchkeeper.duckdb.wal", "audit.head", "admin.token", LOCK_NAME)
PRIVATE_DIRS = ("journal", "jobs-journal", "tmp", "models", "datasets")
JOURNAL_DIRS = ("journal", "jobs-journal")  # crash journals: the prediction log's, the jobs store's


class DataDirInUse(Exception):
    """Another live process holds the data dir's lock (message fits on one line)."""


@dataclass
class DataDirLock:
    """Held for the life of the process (closing the descriptor releases it)."""

    path: Path
    fd: int

    def release(self) -> None:
        try:
            os.close(self.fd)
        except OSError:
            pass


def _holder(fd: int) -> str:
    try:
        text = os.pread(fd, 64, 0).decode(errors="replace").strip()
    except OSError:
        text = ""
    return f"pid {text}" if text.isdigit() else "another process (pid not yet written)"


def lock_data_dir(data_dir: Path) -> DataDirLock:
    """Take the data dir's exclusive lock or raise `DataDirInUse` naming the holder's pid."""
    path = data_dir / LOCK_NAME
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = _holder(fd)
        os.close(fd)
        raise DataDirInUse(f"data dir {data_dir} is in use by watchkeeper-agent {holder}") from None
    except OSError:
        os.close(fd)
        raise
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return DataDirLock(path, fd)


def make_private(data_dir: Path) -> list[str]:
    """Create the data dir 0700, or tighten it and the agent's files and dirs in it; returns what was tightened."""
    data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    fixed: list[str] = []

    def tighten(p: Path, mode: int) -> None:
        try:
            st = p.lstat()
        except FileNotFoundError:
            return
        if stat.S_ISLNK(st.st_mode) or st.st_uid != os.getuid():
            return
        if stat.S_IMODE(st.st_mode) & 0o077:
            try:
                os.chmod(p, stat.S_IMODE(st.st_mode) & ~0o077 & mode)
            except OSError as e:  # a read-only mount, say: worth a line, not a refusal to start
                log.warning("cannot make %s private: %s", p, e.strerror or e)
                return
            fixed.append(f"{p.name} {stat.S_IMODE(st.st_mode):o}->{stat.S_IMODE(p.stat().st_mode):o}")

    tighten(data_dir, 0o700)
    for name in PRIVATE_FILES:
        tighten(data_dir / name, 0o600)
    for name in PRIVATE_DIRS:
        tighten(data_dir / name, 0o700)
    for jname in JOURNAL_DIRS:
        jdir = data_dir / jname
        if jdir.is_dir():
            for p in jdir.iterdir():
                tighten(p, 0o600)
    if fixed:
        log.warning("data dir %s was readable by others; tightened: %s", data_dir, ", ".join(fixed))
    return fixed
