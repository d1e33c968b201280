"""Prometheus text exposition at /metrics, in the names dashboards already chart.

Host metrics follow node_exporter (`node_cpu_seconds_total{cpu,mode}`, `node_memory_*_bytes`, ...),
GPU metrics follow NVIDIA's DCGM exporter (`DCGM_FI_DEV_GPU_UTIL`, `DCGM_FI_DEV_FB_USED` in MiB as
DCGM reports it, labels gpu, UUID, pci_bus_id, modelName, Hostname). Simulated GPUs carry
`source="simulated"` so nobody mistakes them for hardware. The collector reads the sampler's
latest snapshot at scrape time: a scrape never touches the store or the GPU driver.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import psutil
from prometheus_client import CollectorRegistry, ProcessCollector, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily
from prometheus_client.registry import Collector

from agent import __version__
from agent.schemas import Snapshot
from agent.store.writer import WriterStats

MIB = 1024 * 1024


class AgentCollector(Collector):
    def __init__(
        self,
        latest: Callable[[], Snapshot | None],
        writer_stats: Callable[[], WriterStats],
        agent_name: str,
        extra: Callable[[], Iterator] | None = None,
    ) -> None:
        self._latest = latest
        self._writer_stats = writer_stats
        self._agent_name = agent_name
        self._extra = extra

    def collect(self) -> Iterator:
        yield InfoMetricFamily(
            "watchkeeper_agent",
            "Agent build information",
            value={"version": __version__, "agent": self._agent_name},
        )
        ws = self._writer_stats()
        yield CounterMetricFamily("watchkeeper_store_rows_written", "Rows committed to the store", ws.rows_written)
        yield CounterMetricFamily(
            "watchkeeper_store_rows_dropped",
            "Rows dropped because the store fell behind or rejected them",
            ws.rows_dropped,
        )
        yield GaugeMetricFamily(
            "watchkeeper_store_last_flush_seconds",
            "Duration of the last store flush",
            ws.last_flush_duration_s,
        )
        if self._extra is not None:
            yield from self._extra()
        s = self._latest()
        if s is None:
            return
        yield GaugeMetricFamily(
            "watchkeeper_sample_duration_seconds",
            "Time to take the last telemetry sample",
            s.sample_duration_s,
        )
        yield GaugeMetricFamily("watchkeeper_last_sample_timestamp_seconds", "Unix time of the last sample", s.ts)
        yield from _host(s)
        yield from _gpus(s)


def _host(s: Snapshot) -> Iterator:
    if not s.host_simulated:
        # Real counters, exactly as node_exporter exposes them (seconds per cpu and mode).
        cpu = CounterMetricFamily(
            "node_cpu_seconds_total", "Seconds the CPUs spent in each mode", labels=["cpu", "mode"]
        )
        for i, t in enumerate(psutil.cpu_times(percpu=True)):
            for mode in ("user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal"):
                if hasattr(t, mode):
                    cpu.add_metric([str(i), mode], getattr(t, mode))
        yield cpu
    for name, value, help_ in (
        ("node_load1", s.cpu.load1, "1m load average"),
        ("node_load5", s.cpu.load5, "5m load average"),
        ("node_load15", s.cpu.load15, "15m load average"),
        ("node_memory_MemTotal_bytes", s.memory.total_bytes, "Memory total"),
        ("node_memory_MemAvailable_bytes", s.memory.available_bytes, "Memory available"),
        ("node_memory_SwapTotal_bytes", s.memory.swap_total_bytes, "Swap total"),
        ("node_memory_SwapFree_bytes", s.memory.swap_total_bytes - s.memory.swap_used_bytes, "Swap free"),
        ("watchkeeper_cpu_utilization_percent", s.cpu.percent, "CPU utilization over the last interval"),
    ):
        yield GaugeMetricFamily(name, help_, value)
    size = GaugeMetricFamily("node_filesystem_size_bytes", "Filesystem size", labels=["device", "mountpoint", "fstype"])
    avail = GaugeMetricFamily(
        "node_filesystem_avail_bytes", "Filesystem space available", labels=["device", "mountpoint", "fstype"]
    )
    for d in s.disks:
        labels = [d.device, d.mountpoint, d.fstype]
        size.add_metric(labels, d.total_bytes)
        avail.add_metric(labels, d.total_bytes - d.used_bytes)
    yield size
    yield avail
    for name, value, help_ in (
        ("node_disk_read_bytes_total", s.disk_io.read_bytes_total, "Bytes read from all disks"),
        ("node_disk_written_bytes_total", s.disk_io.write_bytes_total, "Bytes written to all disks"),
        ("node_network_receive_bytes_total", s.net.recv_bytes_total, "Bytes received on all interfaces"),
        ("node_network_transmit_bytes_total", s.net.sent_bytes_total, "Bytes sent on all interfaces"),
    ):
        c = CounterMetricFamily(name.removesuffix("_total"), help_, labels=["device"])
        c.add_metric(["all"], value)
        yield c


_DCGM = (
    ("DCGM_FI_DEV_GPU_UTIL", "GPU utilization (in %).", lambda g: g.utilization_percent),
    (
        "DCGM_FI_DEV_FB_USED",
        "Framebuffer memory used (in MiB).",
        lambda g: None if g.memory_used_bytes is None else g.memory_used_bytes / MIB,
    ),
    (
        "DCGM_FI_DEV_FB_FREE",
        "Framebuffer memory free (in MiB).",
        lambda g: (
            None
            if g.memory_used_bytes is None or g.memory_total_bytes is None
            else (g.memory_total_bytes - g.memory_used_bytes) / MIB
        ),
    ),
    ("DCGM_FI_DEV_POWER_USAGE", "Power draw (in W).", lambda g: g.power_watts),
    ("DCGM_FI_DEV_GPU_TEMP", "GPU temperature (in C).", lambda g: g.temperature_c),
    ("DCGM_FI_DEV_SM_CLOCK", "SM clock frequency (in MHz).", lambda g: g.sm_clock_mhz),
    ("DCGM_FI_DEV_XID_ERRORS", "Value of the last XID error encountered.", lambda g: g.xid_errors),
    (
        "DCGM_FI_DEV_ECC_DBE_VOL_TOTAL",
        "Total number of double-bit volatile ECC errors.",
        lambda g: g.ecc_uncorrected_errors,
    ),
)
_GPU_LABELS = ["gpu", "UUID", "pci_bus_id", "modelName", "Hostname", "source"]


def _gpus(s: Snapshot) -> Iterator:
    if not s.gpus:
        return
    source = "simulated" if s.gpu_status.simulated else s.gpu_status.source
    for name, help_, get in _DCGM:
        fam = GaugeMetricFamily(name, help_, labels=_GPU_LABELS)
        for g in s.gpus:
            v = get(g)
            if v is not None:  # absent, not zero, when the device can't say
                fam.add_metric([str(g.index), g.uuid, g.pci_bus_id or "", g.name, s.hostname, source], v)
        yield fam
    proc = GaugeMetricFamily(
        "watchkeeper_gpu_process_memory_bytes", "GPU memory used per process", labels=["gpu", "UUID", "pid"]
    )
    for g in s.gpus:
        for p in g.processes:
            if p.used_memory_bytes is not None:
                proc.add_metric([str(g.index), g.uuid, str(p.pid)], p.used_memory_bytes)
    yield proc


def make_registry(collector: AgentCollector) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    # process_cpu_seconds_total, process_resident_memory_bytes, ...: the agent's own cost (loadtest reads it).
    ProcessCollector(registry=registry)
    return registry


def render(registry: CollectorRegistry) -> bytes:
    return generate_latest(registry)
