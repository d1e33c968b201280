"""Host telemetry (CPU, memory, disks, disk/network rates, top processes) from psutil.

`sample()` runs every second inside an agent whose whole budget is under 1% of one core. Everything
except the process table costs about a millisecond; walking every process is the expensive part, so
it runs on its own cadence: by default as often as keeps it under `PROCESS_SCAN_BUDGET` of one core
(measured, not guessed), never more than once a second; between walks `sample()` reports the last
walk's top lists. A longer window also makes per-process CPU % less jumpy, as in top(1).
"""

from __future__ import annotations

import heapq
import logging
import os
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol

import psutil

from agent.schemas import (
    CpuSample,
    DiskUsage,
    IoRates,
    MemorySample,
    NetRates,
    ProcessSample,
)

log = logging.getLogger("watchkeeper.telemetry.host")

PARTITION_REFRESH_S = 60.0
# Share of one core the process walk may use on average when its interval is adaptive.
PROCESS_SCAN_BUDGET = 0.003
MIN_PROCESS_INTERVAL_S = 1.0
MAX_PROCESS_INTERVAL_S = 30.0
KTHREAD_RECHECK_WALKS = 10
CMDLINE_MAX_CHARS = 512

# psutil's all=False already drops pseudo filesystems (proc, tmpfs, overlay, cgroup, nfs...); these
# are "real" block filesystems that are read-only images (snaps, ISOs) and never fill up.
_IMAGE_FSTYPES = frozenset({"squashfs", "iso9660", "udf", "erofs", "cramfs"})
# Container runtimes bind-mount the host disk here over and over; one entry per device is enough.
_RUNTIME_MOUNT_PREFIXES = ("/snap/", "/var/lib/docker/", "/var/lib/containers/", "/var/lib/kubelet/")


@dataclass(slots=True)
class HostReading:
    """One sample of the host, in the wire types the snapshot is built from."""

    cpu: CpuSample
    memory: MemorySample
    disks: list[DiskUsage]
    disk_io: IoRates
    net: NetRates
    top_cpu: list[ProcessSample]
    top_rss: list[ProcessSample]


class HostSource(Protocol):
    """What the sampler needs from a host collector, real or simulated."""

    def sample(self) -> HostReading: ...


@dataclass(slots=True)
class _Proc:
    proc: psutil.Process
    cpu_percent: float = 0.0
    rss: int = 0
    # Looked up only once a process makes a top list, then kept: they rarely change for a pid.
    name: str | None = None
    username: str | None = None
    cmdline: str = ""
    # AccessDenied on /proc/<pid>/stat (hidepid mounts): don't retry every walk.
    hidden: bool = False
    kernel_thread: bool = False  # or zombie: no address space, so rss is 0 for good
    cpu_seconds: float | None = None  # user + system at the previous walk
    seen_at: float = 0.0


def _busy_and_total(t: object) -> tuple[float, float]:
    total = sum(t)  # type: ignore[call-overload]
    # Linux already counts guest time inside user/nice; psutil subtracts it the same way.
    total -= getattr(t, "guest", 0.0) + getattr(t, "guest_nice", 0.0)
    idle = t.idle + getattr(t, "iowait", 0.0)  # type: ignore[attr-defined]
    return total - idle, total


def _percent(new: object, old: object) -> float:
    busy1, total1 = _busy_and_total(old)
    busy2, total2 = _busy_and_total(new)
    dt = total2 - total1
    if dt <= 0:
        return 0.0
    return round(min(100.0, max(0.0, (busy2 - busy1) / dt * 100.0)), 1)


def _rate(new: int, old: int | None, dt: float) -> float:
    # A counter that went backwards (device removed, counter reset) gives no rate, not a negative one.
    if old is None or dt <= 0 or new < old:
        return 0.0
    return (new - old) / dt


def _physical_disks(sys_block: str = "/sys/block") -> set[str] | None:
    """Whole physical disks (with a `device` link), so LVM/RAID/loop stacking isn't counted twice."""
    try:
        names = os.listdir(sys_block)
    except OSError:
        return None
    disks = {n for n in names if os.path.exists(os.path.join(sys_block, n, "device"))}
    return disks or None


class HostCollector:
    """Samples this host with psutil; cheap enough to call every second."""

    def __init__(
        self,
        top_n: int = 5,
        disk_mounts: list[str] | None = None,
        *,
        process_interval_s: float | None = None,
    ) -> None:
        """`disk_mounts` limits disks to those mountpoints (which may then include network file
        systems, at the risk of a hung mount blocking the sampler); by default every local
        filesystem is reported. `process_interval_s` fixes how often the process table is walked
        (0: every sample); None adapts it to `PROCESS_SCAN_BUDGET`.
        """
        self.top_n = top_n
        self._disk_mounts = list(disk_mounts) if disk_mounts is not None else None
        self._fixed_process_interval = process_interval_s

        self._mounts: list[tuple[str, str, str]] = []  # (mountpoint, device, fstype)
        self._phys_disks: set[str] | None = None
        self._warned: set[str] = set()
        self._disk_last: tuple[int, int] | None = None
        self._refresh_partitions()
        self._partitions_at = time.monotonic()

        # Own CPU-times baseline instead of psutil.cpu_percent(interval=None): psutil keys its
        # baseline by thread, so sampling from a thread pool would measure arbitrary windows.
        self._cpu_last = psutil.cpu_times(percpu=True)

        # Rate baselines start at the first sample: a window from construction to a first sample
        # taken right after it would be a few ms long and turn one write into a huge rate.
        self._last_t: float | None = None
        self._net_last: tuple[int, int] | None = None

        self._procs: dict[int, _Proc] = {}
        self._scan_cost_s: float | None = None  # smoothed CPU seconds of one process walk
        self._ncpu = psutil.cpu_count() or 1
        self._walks = 0
        self._top_cpu: list[ProcessSample] = []
        self._top_rss: list[ProcessSample] = []
        # Primes each process's CPU-time baseline so the first real walk has a window to measure.
        # A walk right after this one would divide 10 ms clock ticks by a tiny window: _scan_at.
        self._walk_processes(measure=False)
        self._scan_at = time.monotonic()

    @property
    def process_interval_s(self) -> float:
        """Seconds between process-table walks, as currently in force."""
        if self._fixed_process_interval is not None:
            return self._fixed_process_interval
        if self._scan_cost_s is None:
            return MIN_PROCESS_INTERVAL_S
        wanted = self._scan_cost_s / PROCESS_SCAN_BUDGET
        return min(MAX_PROCESS_INTERVAL_S, max(MIN_PROCESS_INTERVAL_S, wanted))

    def sample(self) -> HostReading:
        """Take one reading. Rates cover the time since the previous call and are 0 on the first;
        CPU % covers the time since the previous call or construction."""
        now = time.monotonic()
        dt = now - self._last_t if self._last_t is not None else 0.0
        self._last_t = now
        if now - self._partitions_at >= PARTITION_REFRESH_S:
            self._refresh_partitions()
            self._partitions_at = now

        reading = HostReading(
            cpu=self._cpu(),
            memory=self._memory(),
            disks=self._disks(),
            disk_io=self._disk_rates(dt),
            net=self._net_rates(dt),
            top_cpu=list(self._top_cpu),
            top_rss=list(self._top_rss),
        )
        # Walk after the cheap parts so a slow walk doesn't skew the other rates' timestamps.
        if now - self._scan_at >= self.process_interval_s:
            self._scan_at = now
            self._walk_processes(measure=True)
            reading.top_cpu, reading.top_rss = list(self._top_cpu), list(self._top_rss)
        return reading

    # ------------------------------------------------------------------ cpu, memory

    def _cpu(self) -> CpuSample:
        current = psutil.cpu_times(percpu=True)
        last = self._cpu_last
        self._cpu_last = current
        if len(current) != len(last):  # CPU hotplug: no comparable baseline this time
            per_core = [0.0] * len(current)
            total = 0.0
        else:
            per_core = [_percent(n, o) for n, o in zip(current, last, strict=True)]
            # The kernel's aggregate "cpu" line is the sum of the per-core lines.
            total = _percent(_sum_times(current), _sum_times(last))
        load1, load5, load15 = psutil.getloadavg()
        return CpuSample(percent=total, per_core=per_core, load1=load1, load5=load5, load15=load15)

    @staticmethod
    def _memory() -> MemorySample:
        vm = psutil.virtual_memory()
        sw = psutil.swap_memory()
        return MemorySample(
            total_bytes=vm.total,
            available_bytes=vm.available,
            used_bytes=vm.used,
            percent=vm.percent,
            swap_total_bytes=sw.total,
            swap_used_bytes=sw.used,
        )

    # ------------------------------------------------------------------ disks

    def _refresh_partitions(self) -> None:
        phys = _physical_disks()
        if phys != self._phys_disks:
            # Totals over a different set of disks aren't comparable with the previous ones.
            self._phys_disks = phys
            self._disk_last = None
        try:
            if self._disk_mounts is not None:
                known = {p.mountpoint: p for p in psutil.disk_partitions(all=True)}
                mounts = []
                for mp in self._disk_mounts:
                    part = known.get(mp)
                    if part is None:
                        # statvfs on an unmounted directory would silently report its parent's disk.
                        self._warn_once(f"mount:{mp}", "configured disk mount %s is not mounted", mp)
                        continue
                    mounts.append((part.mountpoint, part.device, part.fstype))
                self._mounts = mounts
            else:
                self._mounts = _local_mounts(psutil.disk_partitions(all=False))
        except OSError as exc:
            self._warn_once("partitions", "cannot list mounted filesystems: %s", exc)

    def _disks(self) -> list[DiskUsage]:
        out = []
        for mountpoint, device, fstype in self._mounts:
            try:
                usage = psutil.disk_usage(mountpoint)
            except OSError:
                continue  # unmounted since the last refresh, or not ours to stat
            out.append(
                DiskUsage(
                    mountpoint=mountpoint,
                    device=device,
                    fstype=fstype,
                    total_bytes=usage.total,
                    used_bytes=usage.used,
                    percent=usage.percent,
                )
            )
        return out

    def _read_disk_io(self) -> tuple[int, int] | None:
        counters = psutil.disk_io_counters(perdisk=True, nowrap=True)
        if not counters:
            return None
        disks = self._phys_disks
        picked = [c for name, c in counters.items() if disks is None or name in disks]
        if not picked:
            total = psutil.disk_io_counters(perdisk=False, nowrap=True)
            return (total.read_bytes, total.write_bytes) if total else None
        return sum(c.read_bytes for c in picked), sum(c.write_bytes for c in picked)

    def _disk_rates(self, dt: float) -> IoRates:
        current = self._read_disk_io()
        last = self._disk_last
        self._disk_last = current
        if current is None:
            return IoRates()
        return IoRates(
            read_bytes_total=current[0],
            write_bytes_total=current[1],
            read_bytes_per_s=_rate(current[0], last[0] if last else None, dt),
            write_bytes_per_s=_rate(current[1], last[1] if last else None, dt),
        )

    # ------------------------------------------------------------------ network

    @staticmethod
    def _read_net() -> tuple[int, int]:
        recv = sent = 0
        for nic, c in psutil.net_io_counters(pernic=True, nowrap=True).items():
            if nic == "lo":  # the agent's own HTTP traffic and other local chatter
                continue
            recv += c.bytes_recv
            sent += c.bytes_sent
        return recv, sent

    def _net_rates(self, dt: float) -> NetRates:
        current = self._read_net()
        last = self._net_last
        self._net_last = current
        return NetRates(
            recv_bytes_total=current[0],
            sent_bytes_total=current[1],
            recv_bytes_per_s=_rate(current[0], last[0] if last else None, dt),
            sent_bytes_per_s=_rate(current[1], last[1] if last else None, dt),
        )

    # ------------------------------------------------------------------ processes

    def _walk_processes(self, *, measure: bool) -> None:
        t0 = time.thread_time()
        procs = self._procs
        try:
            pids = psutil.pids()
        except OSError as exc:
            self._warn_once("pids", "cannot list processes: %s", exc)
            return
        for gone in procs.keys() - set(pids):
            del procs[gone]

        # The hot loop reads two files per process: /proc/<pid>/stat (cpu_times) and statm
        # (memory_info). oneshot() would cache nothing between them, and Process.cpu_percent()
        # calls cpu_count() each time; a delta against one timestamp per walk is 40% cheaper.
        now = time.monotonic()
        recheck_kthreads = self._walks % KTHREAD_RECHECK_WALKS == 0
        self._walks += 1
        cap = 100.0 * self._ncpu
        for pid in pids:
            entry = procs.get(pid)
            try:
                if entry is None:
                    entry = procs[pid] = _Proc(psutil.Process(pid))
                elif entry.hidden:
                    continue
                p = entry.proc
                t = p.cpu_times()
                used = t.user + t.system
                if entry.cpu_seconds is not None and now > entry.seen_at:
                    pct = (used - entry.cpu_seconds) / (now - entry.seen_at) * 100.0
                    # Bounded: a pid reused since the last walk gives a meaningless delta.
                    entry.cpu_percent = min(max(pct, 0.0), cap)
                entry.cpu_seconds, entry.seen_at = used, now
                # Kernel threads never get an address space, and they are most pids on a
                # many-core host: skip their statm, rechecking now and then in case the pid went
                # to a user process.
                if entry.kernel_thread and not recheck_kthreads:
                    continue
                mem = p.memory_info()
                entry.rss = mem.rss
                entry.kernel_thread = mem.vms == 0
            except psutil.ZombieProcess:
                if entry is not None:
                    entry.cpu_percent, entry.rss = 0.0, 0
            except psutil.NoSuchProcess:
                procs.pop(pid, None)
            except psutil.AccessDenied:
                if entry is not None:
                    entry.hidden = True
                    entry.cpu_percent, entry.rss = 0.0, 0

        live = [e for e in procs.values() if not e.hidden]
        top_cpu = self._finish(heapq.nlargest(self.top_n, live, key=lambda e: e.cpu_percent), "cpu")
        top_rss = self._finish(heapq.nlargest(self.top_n, live, key=lambda e: e.rss), "rss")
        self._top_cpu, self._top_rss = top_cpu, top_rss

        if measure:
            cost = time.thread_time() - t0
            prev = self._scan_cost_s
            self._scan_cost_s = cost if prev is None else 0.7 * prev + 0.3 * cost

    def _finish(self, entries: Iterable[_Proc], key: str) -> list[ProcessSample]:
        out = []
        for e in entries:
            if (e.cpu_percent if key == "cpu" else e.rss) <= 0:
                break  # sorted, so the rest are idle too; an idle host gets an empty list
            if not self._describe(e):
                continue
            out.append(
                ProcessSample(
                    pid=e.proc.pid,
                    name=e.name or "?",
                    username=e.username,
                    cpu_percent=round(e.cpu_percent, 1),
                    rss_bytes=e.rss,
                    cmdline=e.cmdline,
                )
            )
        return out

    def _describe(self, e: _Proc) -> bool:
        """Fill name/user/cmdline for a top-list process; False if its pid now belongs to another."""
        p = e.proc
        # Only top entries are checked for pid reuse: it costs a read, and elsewhere a stale
        # object merely yields one odd cpu delta that no one sees.
        if not p.is_running():
            self._procs.pop(p.pid, None)
            return False
        if e.name is not None:
            return True
        try:
            with p.oneshot():
                e.name = p.name()
                try:
                    e.username = p.username()
                except (psutil.AccessDenied, KeyError):
                    e.username = None
                try:
                    e.cmdline = " ".join(p.cmdline())[:CMDLINE_MAX_CHARS]
                except (psutil.AccessDenied, psutil.ZombieProcess):
                    e.cmdline = ""
        except psutil.NoSuchProcess:
            self._procs.pop(p.pid, None)
            return False
        except psutil.AccessDenied:
            e.name = e.name or "?"
        return True

    def _warn_once(self, key: str, msg: str, *args: object) -> None:
        if key not in self._warned:
            self._warned.add(key)
            log.warning(msg, *args)


def _sum_times(times: list) -> tuple[float, ...]:
    summed = [sum(col) for col in zip(*times, strict=True)]
    return type(times[0])(*summed)


def _local_mounts(partitions: Iterable) -> list[tuple[str, str, str]]:
    """Local filesystems worth watching, one mountpoint per device (the shortest one)."""
    by_device: dict[str, tuple[str, str, str]] = {}
    for p in partitions:
        if p.fstype in _IMAGE_FSTYPES or p.mountpoint.startswith(_RUNTIME_MOUNT_PREFIXES):
            continue
        known = by_device.get(p.device)
        if known is None or len(p.mountpoint) < len(known[0]):
            by_device[p.device] = (p.mountpoint, p.device, p.fstype)
    return sorted(by_device.values())
