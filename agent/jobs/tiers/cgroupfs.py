"""Small helpers over a cgroup filesystem, shared by the cgroup v1 and v2 tiers.

Everything takes plain directory paths, so the v2 tier's tests can point it at an ordinary directory tree
standing in for cgroupfs.
"""

from __future__ import annotations

import errno
import os
import re
import signal
import time

# Pipeline names come from the wire (`^[A-Za-z0-9_.-]{1,64}$`); these would climb out of the jobs root.
_BAD_NAMES = {".", ".."}
_SAFE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


def check_name(name: str, what: str) -> str:
    """A pipeline or job id usable as one path component, else ValueError naming it."""
    if name in _BAD_NAMES or not _SAFE.match(name):
        raise ValueError(f"{what} {name!r} can't name a cgroup (letters, digits, '_', '.', '-'; not '.' or '..')")
    return name


def read(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return None


def read_int(path: str) -> int | None:
    text = read(path)
    if text is None:
        return None
    text = text.strip()
    if text == "max":
        return None
    try:
        return int(text.split()[0])
    except (ValueError, IndexError):
        return None


def read_keyed(path: str) -> dict[str, int]:
    """A flat keyed file (`memory.oom_control`, `memory.events`, `cpu.stat`) as {key: int}."""
    out: dict[str, int] = {}
    for line in (read(path) or "").splitlines():
        parts = line.split()
        if len(parts) == 2:
            try:
                out[parts[0]] = int(parts[1])
            except ValueError:
                continue
    return out


def write(path: str, value: str | int) -> None:
    """Write one value; an OSError says which file and value (the kernel's errno alone says little)."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_TRUNC)  # as `echo v > file` does; cgroupfs ignores the trunc
    except OSError as exc:
        raise OSError(exc.errno, f"can't open {path}: {exc.strerror}") from exc
    try:
        os.write(fd, str(value).encode())
    except OSError as exc:
        raise OSError(exc.errno, f"can't write {value!r} to {path}: {exc.strerror}") from exc
    finally:
        os.close(fd)


def procs(cgroup_dir: str) -> list[int]:
    """Pids in the cgroup (its own, not its children's); [] if it is gone."""
    out = []
    for line in (read(os.path.join(cgroup_dir, "cgroup.procs")) or "").split():
        try:
            out.append(int(line))
        except ValueError:
            continue
    return out


def wait_populated(cgroup_dir: str, timeout_s: float = 1.0) -> bool:
    """Wait (briefly) until a process is in the cgroup: a job's command joins it a moment after its wrapper
    forked it (agent/jobs/wrapper.py), and a signal sent to the cgroup before then would reach no one.
    False if none joined in `timeout_s` (gone, or failed to join)."""
    deadline = time.monotonic() + timeout_s
    while not procs(cgroup_dir):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.005)
    return True


def signal_all(cgroup_dir: str, sig: int, spare: int | None = None) -> int:
    """Send `sig` to every process in the cgroup but `spare`; how many were signalled."""
    n = 0
    for pid in procs(cgroup_dir):
        if pid == spare:
            continue
        try:
            os.kill(pid, sig)
            n += 1
        except ProcessLookupError:
            pass
    return n


def rmdir_tree(path: str, timeout_s: float = 2.0) -> bool:
    """Remove a cgroup and its children (deepest first), retrying while dying tasks drain.

    True when it is gone. A cgroup whose tasks are still exiting answers EBUSY for a few ms; anything
    still in it after `timeout_s` is SIGKILLed once and tried again.
    """
    if not os.path.isdir(path):
        return True
    deadline = time.monotonic() + timeout_s
    killed = False
    while True:
        busy = False
        for d, _, _ in sorted(os.walk(path), key=lambda w: -w[0].count(os.sep)):
            try:
                os.rmdir(d)
            except FileNotFoundError:
                continue
            except OSError as exc:
                if exc.errno not in (errno.EBUSY, errno.ENOTEMPTY):
                    raise
                busy = True
        if not busy:
            return True
        if time.monotonic() > deadline:
            if killed:
                return False
            killed = True
            for d, _, _ in os.walk(path):
                signal_all(d, signal.SIGKILL)
            deadline = time.monotonic() + timeout_s
        time.sleep(0.02)
