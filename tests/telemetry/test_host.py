"""HostCollector against the real psutil of this machine, plus its pure helpers."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
from collections import namedtuple
from collections.abc import Iterator

import psutil
import pytest

from agent.telemetry import host as host_mod
from agent.telemetry.host import HostCollector, _local_mounts, _percent, _rate

MIB = 1024**2


def _spawn(code: str) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    return proc


@pytest.fixture
def children() -> Iterator[list[subprocess.Popen]]:
    started: list[subprocess.Popen] = []
    yield started
    for p in started:
        p.kill()
        p.wait(timeout=10)


def test_sample_values_are_in_range() -> None:
    c = HostCollector()
    time.sleep(0.3)
    r = c.sample()
    assert 0.0 <= r.cpu.percent <= 100.0
    assert len(r.cpu.per_core) == psutil.cpu_count()
    assert all(0.0 <= x <= 100.0 for x in r.cpu.per_core)
    assert r.cpu.load1 >= 0 and r.cpu.load15 >= 0
    m = r.memory
    assert m.total_bytes == psutil.virtual_memory().total
    assert 0 < m.available_bytes <= m.total_bytes and 0 < m.used_bytes <= m.total_bytes
    assert 0.0 <= m.percent <= 100.0 and m.swap_used_bytes <= m.swap_total_bytes
    root = [d for d in r.disks if d.mountpoint == "/"]
    assert root and 0 < root[0].used_bytes <= root[0].total_bytes
    assert all(d.fstype not in {"tmpfs", "overlay", "squashfs", "proc", "cgroup"} for d in r.disks)
    assert len({d.device for d in r.disks}) == len(r.disks)


def test_first_sample_has_zero_rates_then_non_negative_rates() -> None:
    c = HostCollector()
    first = c.sample()
    assert (first.disk_io.read_bytes_per_s, first.disk_io.write_bytes_per_s) == (0.0, 0.0)
    assert (first.net.recv_bytes_per_s, first.net.sent_bytes_per_s) == (0.0, 0.0)
    assert first.disk_io.read_bytes_total > 0  # this machine has read its own disk
    for _ in range(3):
        time.sleep(0.2)
        r = c.sample()
        assert r.disk_io.read_bytes_per_s >= 0 and r.disk_io.write_bytes_per_s >= 0
        assert r.net.recv_bytes_per_s >= 0 and r.net.sent_bytes_per_s >= 0
        assert r.disk_io.write_bytes_total >= first.disk_io.write_bytes_total
        assert r.net.recv_bytes_total >= first.net.recv_bytes_total


def test_disk_write_shows_up_as_a_rate(tmp_path) -> None:
    fstype = next(
        (
            p.fstype
            for p in sorted(psutil.disk_partitions(all=True), key=lambda p: -len(p.mountpoint))
            if str(tmp_path).startswith(p.mountpoint)
        ),
        None,
    )
    if fstype not in {"ext4", "xfs", "btrfs", "ext3", "zfs"}:
        pytest.skip(f"tmp_path is on {fstype}, not a block device")
    c = HostCollector()
    t0 = time.monotonic()
    before = c.sample()
    t1 = time.monotonic()
    with open(tmp_path / "blob", "wb") as f:
        f.write(os.urandom(32 * MIB))
        f.flush()
        os.fsync(f.fileno())
    t2 = time.monotonic()
    after = c.sample()
    t3 = time.monotonic()
    written = after.disk_io.write_bytes_total - before.disk_io.write_bytes_total
    assert written >= 32 * MIB
    # The rate is over the monotonic time between the two samples, whatever that was.
    assert written / (t3 - t0) <= after.disk_io.write_bytes_per_s <= written / (t2 - t1)


def test_busy_child_shows_up_in_top_cpu(children: list[subprocess.Popen]) -> None:
    busy = _spawn("while True: pass")
    children.append(busy)
    c = HostCollector(top_n=20, process_interval_s=0)
    found = None
    for _ in range(6):
        time.sleep(0.5)
        r = c.sample()
        found = next((p for p in r.top_cpu if p.pid == busy.pid), None)
        if found is not None:
            break
    assert found is not None, [(p.pid, p.name, p.cpu_percent) for p in r.top_cpu]
    assert found.cpu_percent > 20.0
    assert found.name.startswith("python")
    assert "while True" in found.cmdline
    assert found.username == psutil.Process().username()
    cpus = [p.cpu_percent for p in r.top_cpu]
    assert cpus == sorted(cpus, reverse=True)


def test_big_child_shows_up_in_top_rss(children: list[subprocess.Popen]) -> None:
    # Bytes multiplication writes every page, so the 200 MB is resident, not just reserved.
    big = _spawn("import sys, time\nx = b'\\x01' * (200 * 2**20)\nprint('ready', flush=True)\ntime.sleep(600)")
    children.append(big)
    assert big.stdout is not None and big.stdout.readline().strip() == "ready"
    c = HostCollector(top_n=10, process_interval_s=0)
    r = c.sample()
    found = next((p for p in r.top_rss if p.pid == big.pid), None)
    assert found is not None, [(p.pid, p.name, p.rss_bytes) for p in r.top_rss]
    assert found.rss_bytes >= 200 * MIB
    rss = [p.rss_bytes for p in r.top_rss]
    assert rss == sorted(rss, reverse=True) and len(rss) <= 10


def test_process_objects_are_reused_and_exited_pids_dropped(children: list[subprocess.Popen]) -> None:
    child = _spawn("import time; time.sleep(600)")
    children.append(child)
    time.sleep(0.1)
    c = HostCollector(process_interval_s=0)
    me = c._procs[os.getpid()].proc
    assert child.pid in c._procs
    c.sample()
    assert c._procs[os.getpid()].proc is me  # so cpu_percent has a baseline without sleeping
    child.kill()
    child.wait(timeout=10)
    c.sample()
    assert child.pid not in c._procs


def test_process_walk_is_amortised_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    walks = []
    real_pids = psutil.pids
    monkeypatch.setattr(psutil, "pids", lambda: walks.append(1) or real_pids())
    c = HostCollector()
    assert len(walks) == 1  # the priming walk
    for _ in range(5):
        c.sample()
    assert len(walks) == 1, "back-to-back samples must not each walk every process"
    c._scan_at -= host_mod.MAX_PROCESS_INTERVAL_S
    c.sample()
    assert len(walks) == 2
    assert host_mod.MIN_PROCESS_INTERVAL_S <= c.process_interval_s <= host_mod.MAX_PROCESS_INTERVAL_S

    fixed = HostCollector(process_interval_s=0)
    walks.clear()
    for _ in range(3):
        fixed.sample()
    assert len(walks) == 3


def test_adaptive_interval_follows_measured_cost() -> None:
    c = HostCollector()
    c._scan_cost_s = host_mod.PROCESS_SCAN_BUDGET * 4  # a walk costing 4 s worth of budget
    assert c.process_interval_s == pytest.approx(4.0)
    c._scan_cost_s = 10.0
    assert c.process_interval_s == host_mod.MAX_PROCESS_INTERVAL_S
    c._scan_cost_s = 0.0
    assert c.process_interval_s == host_mod.MIN_PROCESS_INTERVAL_S


def test_partitions_are_cached_between_refreshes(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    real = psutil.disk_partitions
    monkeypatch.setattr(psutil, "disk_partitions", lambda all=False: calls.append(all) or real(all))
    c = HostCollector()
    for _ in range(5):
        c.sample()
    assert len(calls) == 1
    monkeypatch.setattr(host_mod, "PARTITION_REFRESH_S", 0.0)
    c.sample()
    c.sample()
    assert len(calls) == 3


def test_configured_mounts_only_and_unmounted_ones_warned_once(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="watchkeeper.telemetry.host")
    c = HostCollector(disk_mounts=["/", "/definitely/not/mounted"])
    for _ in range(3):
        r = c.sample()
        assert [d.mountpoint for d in r.disks] == ["/"]
    c._refresh_partitions()
    assert len([r for r in caplog.records if "/definitely/not/mounted" in r.getMessage()]) == 1


Part = namedtuple("Part", "device mountpoint fstype opts")


def test_local_mounts_skip_images_and_dedupe_devices() -> None:
    parts = [
        Part("/dev/sda1", "/", "ext4", "rw"),
        Part("/dev/sda1", "/etc/hosts", "ext4", "rw"),
        Part("/dev/sda1", "/var/lib/docker/overlay2/x", "ext4", "rw"),
        Part("/dev/loop3", "/snap/core/123", "squashfs", "ro"),
        Part("/dev/loop4", "/media/cd", "iso9660", "ro"),
        Part("/dev/nvme0n1p1", "/data", "xfs", "rw"),
        Part("rpool/home", "/home", "zfs", "rw"),
    ]
    assert _local_mounts(parts) == [
        ("/", "/dev/sda1", "ext4"),
        ("/data", "/dev/nvme0n1p1", "xfs"),
        ("/home", "rpool/home", "zfs"),
    ]


def test_cpu_percent_matches_busy_share_and_excludes_guest() -> None:
    T = namedtuple("T", "user nice system idle iowait irq softirq steal guest guest_nice")
    old = T(100, 0, 50, 800, 50, 0, 0, 0, 0, 0)
    new = T(150, 0, 75, 850, 75, 0, 0, 0, 0, 0)  # +75 busy, +75 idle/iowait
    assert _percent(new, old) == 50.0
    # Guest time is already inside user; counting it again would understate idle.
    new_guest = T(150, 0, 75, 850, 75, 0, 0, 0, 40, 0)
    assert _percent(new_guest, old) == 50.0
    assert _percent(old, old) == 0.0
    assert _percent(old, new) == 0.0  # counters went backwards: no negative percent


def test_rate_never_negative() -> None:
    assert _rate(2000, 1000, 2.0) == 500.0
    assert _rate(500, 1000, 1.0) == 0.0
    assert _rate(500, None, 1.0) == 0.0
    assert _rate(500, 100, 0.0) == 0.0


def test_kernel_threads_skip_statm_but_a_reused_pid_is_noticed() -> None:
    c = HostCollector(process_interval_s=0)
    for e in [e for e in c._procs.values() if e.kernel_thread]:
        try:
            p = psutil.Process(e.proc.pid)
            ok = p.ppid() in (0, 2) or p.status() == psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            continue  # a kworker or zombie that has gone since the walk
        assert ok, f"pid {e.proc.pid} ({p.name()}) taken for a kernel thread or zombie"
    me = c._procs[os.getpid()]
    assert not me.kernel_thread and me.rss > 0
    # Pretend our pid used to be a kernel thread: its rss is not read until the periodic recheck.
    me.kernel_thread, me.rss = True, 0
    c._walks = 1
    for _ in range(host_mod.KTHREAD_RECHECK_WALKS - 1):
        c._walk_processes(measure=False)
        assert me.rss == 0
    c._walk_processes(measure=False)
    assert me.rss > 0 and not me.kernel_thread
