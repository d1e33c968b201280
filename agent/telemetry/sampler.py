"""The sampling loop: read host + GPU every interval (with jitter), keep the latest, queue rows.

It runs in its own thread because psutil and NVML calls block. Jitter spreads many collectors
(and many agents on one hypervisor) so they don't all hit /proc and the driver at the same instant;
the schedule is anchored to a monotonic clock so the average rate stays exact.
"""

from __future__ import annotations

import logging
import random
import socket
import threading
import time
from collections.abc import Callable
from typing import Protocol

from agent.schemas import GpuSample, GpuStatus, Snapshot
from agent.store.migrations import GPU_COLUMNS, HOST_COLUMNS
from agent.store.writer import StoreWriter

log = logging.getLogger("watchkeeper.telemetry")

HOST_ROW = ("ts", *HOST_COLUMNS)
GPU_ROW = ("ts", "gpu_index", "uuid", *GPU_COLUMNS)


class HostSource(Protocol):
    def sample(self): ...


class GpuSource(Protocol):
    def status(self) -> GpuStatus: ...
    def sample(self) -> list[GpuSample]: ...
    def close(self) -> None: ...


class Sampler:
    """Owns the sampling thread and the latest snapshot (read lock-free: one reference swap)."""

    def __init__(
        self,
        host: HostSource,
        gpu: GpuSource,
        writer: StoreWriter | None,
        agent_name: str,
        interval: float = 1.0,
        jitter: float = 0.1,
        host_simulated: bool = False,
        on_snapshot: Callable[[Snapshot], None] | None = None,
    ) -> None:
        self._host = host
        self._gpu = gpu
        self._writer = writer
        self.agent_name = agent_name
        self.hostname = socket.gethostname()
        self.interval = interval
        self.jitter = jitter
        self.host_simulated = host_simulated
        self._on_snapshot = on_snapshot
        self.latest: Snapshot | None = None
        self.samples_taken = 0
        self.sample_errors = 0
        self.last_loop_at = 0.0  # monotonic; the watchdog checks the loop is alive
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sampler", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        self._thread.join(timeout)
        self._gpu.close()

    def gpu_status(self) -> GpuStatus:
        return self._gpu.status()

    def alive(self, within: float) -> bool:
        return self._thread.is_alive() and time.monotonic() - self.last_loop_at < within

    def sample_once(self) -> Snapshot:
        """Take one sample now: update `latest`, queue the rows. Used by the loop and by tests."""
        t0 = time.perf_counter()
        ts = time.time()
        h = self._host.sample()
        gpus = self._gpu.sample()
        snap = Snapshot(
            ts=ts,
            hostname=self.hostname,
            agent_name=self.agent_name,
            host_simulated=self.host_simulated,
            cpu=h.cpu,
            memory=h.memory,
            disks=h.disks,
            disk_io=h.disk_io,
            net=h.net,
            top_cpu=h.top_cpu,
            top_rss=h.top_rss,
            gpus=gpus,
            gpu_status=self._gpu.status(),
            sample_duration_s=0.0,
        )
        snap.sample_duration_s = time.perf_counter() - t0
        self.latest = snap
        self.samples_taken += 1
        if self._writer is not None:
            self._writer.append("host_samples", HOST_ROW, [host_row(snap)])
            if gpus:
                self._writer.append("gpu_samples", GPU_ROW, [gpu_row(ts, g) for g in gpus])
        if self._on_snapshot is not None:
            self._on_snapshot(snap)
        return snap

    def _run(self) -> None:
        next_at = time.monotonic()
        while not self._stop.is_set():
            self.last_loop_at = time.monotonic()
            try:
                self.sample_once()
            except Exception:
                # A collector bug must not end telemetry; it is logged and counted.
                self.sample_errors += 1
                log.exception("sampling failed")
            next_at += self.interval
            now = time.monotonic()
            if next_at < now:  # fell behind (suspend, overload): skip, don't burst
                next_at = now + self.interval
            delay = next_at - now + random.uniform(-self.jitter, self.jitter) * self.interval
            self._stop.wait(max(0.0, delay))


def host_row(s: Snapshot) -> tuple:
    return (
        s.ts,
        s.cpu.percent,
        s.cpu.load1,
        s.memory.used_bytes,
        s.memory.percent,
        s.memory.swap_used_bytes,
        s.disk_io.read_bytes_per_s,
        s.disk_io.write_bytes_per_s,
        s.net.recv_bytes_per_s,
        s.net.sent_bytes_per_s,
    )


def gpu_row(ts: float, g: GpuSample) -> tuple:
    return (
        ts,
        g.index,
        g.uuid,
        g.utilization_percent,
        g.memory_used_bytes,
        g.memory_total_bytes,
        g.power_watts,
        g.temperature_c,
        g.sm_clock_mhz,
    )
