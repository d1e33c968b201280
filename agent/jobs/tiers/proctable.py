"""One scan of /proc shared by every job's usage and limit check in a runner tick (the psutil tier).

`psutil.Process.children(recursive=True)` reads every /proc/*/stat to build its parent map, once per job
per call: with 50 jobs checked four times a second that was ~50 % of a core. Here one scan per tick reads
each /proc/<pid>/stat once, and everything the tier needs is in that line: parent, start time (the
create time psutil reports: boot time + start ticks / CLK_TCK), CPU times of the process and of its
reaped children, and resident pages.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

import psutil

_TICKS = os.sysconf("SC_CLK_TCK")
_PAGE = os.sysconf("SC_PAGE_SIZE")


@dataclass(frozen=True, slots=True)
class Proc:
    pid: int
    ppid: int
    create_time: float
    cpu: float  # user + system seconds of the process itself
    child_cpu: float  # user + system seconds of its reaped children (and theirs)
    rss: int  # bytes
    zombie: bool


class ProcTable:
    """Processes by pid and children by parent, as of one scan. A process's fields are parsed only when
    asked for (`get`): most of the host's processes are nobody's job."""

    def __init__(self, raw: dict[int, list[bytes]], boot: float) -> None:
        self._raw = raw
        self._boot = boot
        self.kids: dict[int, list[int]] = {}
        for pid, f in raw.items():
            self.kids.setdefault(int(f[1]), []).append(pid)

    @classmethod
    def scan(cls, proc_root: str = "/proc") -> ProcTable:
        """Read /proc/<pid>/stat for every process (a process that ends meanwhile is skipped)."""
        raw: dict[int, list[bytes]] = {}
        for name in os.listdir(proc_root):
            if not name.isdigit():
                continue
            try:
                fd = os.open(f"{proc_root}/{name}/stat", os.O_RDONLY)
                try:
                    line = os.read(fd, 4096)
                finally:
                    os.close(fd)
            except OSError:
                continue
            # The command name (field 2) may hold spaces and parentheses: the fields start after the last ')'.
            f = line[line.rfind(b")") + 2 :].split()
            if len(f) > 21:
                raw[int(name)] = f
        return cls(raw, _boot_time())

    def get(self, pid: int) -> Proc | None:
        f = self._raw.get(pid)
        if f is None:
            return None
        return Proc(
            pid=pid,
            ppid=int(f[1]),
            create_time=self._boot + int(f[19]) / _TICKS,
            cpu=(int(f[11]) + int(f[12])) / _TICKS,
            child_cpu=(int(f[13]) + int(f[14])) / _TICKS,
            rss=int(f[21]) * _PAGE,
            zombie=f[0] == b"Z",
        )

    def descendants(self, pid: int) -> list[Proc]:
        """Every process below `pid` (children, theirs, ...), as of the scan."""
        out: list[Proc] = []
        todo = list(self.kids.get(pid, ()))
        while todo:
            p = self.get(todo.pop())
            if p is None:
                continue
            out.append(p)
            todo.extend(self.kids.get(p.pid, ()))
        return out


_BOOT: float | None = None


def _boot_time() -> float:
    """psutil's boot time (what its create_time is measured from), read once: it does not move."""
    global _BOOT
    if _BOOT is None:
        _BOOT = psutil.boot_time()
    return _BOOT


class TableCache:
    """The scan the calls of one runner tick share: taken at the first call after `new_tick`, and again
    when older than `max_age_s` (a call outside the runner's ticks never reads a stale table)."""

    def __init__(self, max_age_s: float = 0.5) -> None:
        self.max_age_s = max_age_s
        self._at = -1e9
        self._table: ProcTable | None = None
        self.scans = 0

    def new_tick(self) -> None:
        self._table = None

    def get(self) -> ProcTable:
        now = time.monotonic()
        if self._table is None or now - self._at > self.max_age_s:
            self._table = ProcTable.scan()
            self._at = time.monotonic()
            self.scans += 1
        return self._table
