"""`ExitWatcher`: wakes the jobs runner the moment a job's wrapper exits.

Without it a job's end is seen at the runner's next tick (`[jobs] tick`, 100 ms by default), and a
pipeline of isolated steps pays that wait once per step. Here each wrapper gets a pidfd
(`pidfd_open`, Linux 5.3+) registered with one epoll set, watched by one thread: readable means
the process has exited, so the runner ticks at once and reads the rc file the wrapper wrote before
exiting. It works for jobs re-adopted after a restart too (a pidfd needs no parent). Where pidfds
are missing (older kernels, other systems) `watch` does nothing and the tick finds the end as before.
"""

from __future__ import annotations

import logging
import os
import select
import threading
from collections.abc import Callable

log = logging.getLogger(__name__)


class ExitWatcher:
    """One epoll thread over the pidfds of the running jobs' wrappers; `on_exit()` when any exits."""

    def __init__(self, on_exit: Callable[[], None]) -> None:
        self._on_exit = on_exit
        self._lock = threading.Lock()
        self._fds: dict[int, int] = {}  # pidfd -> pid
        self._pids: set[int] = set()  # the pids watched now
        self._exited: set[int] = set()  # seen exiting, not yet taken by the runner
        self._closed = False
        self.available = hasattr(os, "pidfd_open") and hasattr(select, "epoll")
        self._epoll = select.epoll() if self.available else None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._epoll is None or self._thread is not None:
            return
        self._thread = threading.Thread(target=self._run, name="jobs-exits", daemon=True)
        self._thread.start()

    def watch(self, pid: int) -> None:
        """Call `on_exit` once `pid` has exited (at once if it is gone already)."""
        if self._epoll is None:
            return
        try:
            fd = os.pidfd_open(pid)
        except ProcessLookupError:
            self._on_exit()  # gone already: let the runner look now
            return
        except OSError as e:  # ENOSYS (no pidfds in this kernel), EMFILE: the tick still sees the end
            log.debug("jobs: no pidfd for %d: %s", pid, e)
            return
        with self._lock:
            if self._closed:
                os.close(fd)
                return
            self._fds[fd] = pid
            self._pids.add(pid)
            self._epoll.register(fd, select.EPOLLIN)

    def watching(self, pid: int) -> bool:
        """True while `pid` is watched: its exit will be reported, so nobody needs to poll it meanwhile."""
        with self._lock:
            return pid in self._pids

    def take_exited(self) -> set[int]:
        """The watched pids that exited since the last call (each reported once)."""
        with self._lock:
            out, self._exited = self._exited, set()
            return out

    @property
    def watched(self) -> int:
        """How many processes are watched now."""
        with self._lock:
            return len(self._fds)

    def _run(self) -> None:
        assert self._epoll is not None
        while True:
            try:
                events = self._epoll.poll(1.0)
            except (OSError, ValueError):  # closed under us: stop
                return
            if not events:
                if self._closed:
                    return
                continue
            with self._lock:
                for fd, _ in events:
                    pid = self._fds.pop(fd, None)
                    if pid is not None:
                        self._pids.discard(pid)
                        self._exited.add(pid)
                        self._epoll.unregister(fd)
                        os.close(fd)
            self._on_exit()

    def close(self) -> None:
        """Stop watching; close every pidfd."""
        if self._epoll is None:
            return
        with self._lock:
            self._closed = True
            for fd in self._fds:
                os.close(fd)
            self._fds.clear()
            self._pids.clear()
            self._epoll.close()
        if self._thread is not None:
            self._thread.join(2.0)
