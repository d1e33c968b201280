"""Simulated sources: labelled, deterministic for a seed, plausible, and actually varying."""

from __future__ import annotations

import inspect
import statistics

from agent.telemetry.gpu import GpuSource, NvmlGpuSource
from agent.telemetry.host import HostCollector, HostReading, HostSource
from agent.telemetry.simulated import SimulatedGpuSource, SimulatedHostCollector


def gpu_run(count: int, seed: int, n: int) -> list[list[dict]]:
    src = SimulatedGpuSource(count, seed=seed)
    return [[g.model_dump() for g in src.sample()] for _ in range(n)]


def host_run(seed: int, n: int) -> list[dict]:
    src = SimulatedHostCollector(seed)
    out = []
    for _ in range(n):
        r = src.sample()
        out.append({k: getattr(r, k) for k in HostReading.__slots__})
    return out


def test_same_interfaces_as_the_real_sources() -> None:
    # The daemon swaps these in for the real ones, so the methods it calls must match exactly.
    for name in ("status", "sample", "close"):
        assert inspect.signature(getattr(SimulatedGpuSource, name)) == inspect.signature(
            getattr(NvmlGpuSource, name)
        ), name
    assert inspect.signature(SimulatedHostCollector.sample) == inspect.signature(HostCollector.sample)
    gpu_src: GpuSource = SimulatedGpuSource(1)
    host_src: HostSource = SimulatedHostCollector(0)
    assert isinstance(host_src.sample(), HostReading)
    assert [type(g).__name__ for g in gpu_src.sample()] == ["GpuSample"]


def test_gpus_are_labelled_simulated() -> None:
    src = SimulatedGpuSource(4, seed=7)
    status = src.status()
    assert status.source == "simulated" and status.simulated is True
    samples = src.sample()
    assert [g.index for g in samples] == [0, 1, 2, 3]
    assert all(g.name.startswith("Simulated ") for g in samples)
    assert all(g.uuid.startswith("GPU-sim-") for g in samples)
    assert len({g.uuid for g in samples}) == 4


def test_gpu_sequence_is_deterministic_for_a_seed() -> None:
    assert gpu_run(3, seed=42, n=200) == gpu_run(3, seed=42, n=200)
    assert gpu_run(3, seed=42, n=50) != gpu_run(3, seed=43, n=50)


def test_host_sequence_is_deterministic_for_a_seed() -> None:
    assert host_run(5, 100) == host_run(5, 100)
    assert host_run(5, 30) != host_run(6, 30)


def test_gpu_values_are_plausible_and_vary() -> None:
    src = SimulatedGpuSource(2, seed=1)
    utils, powers, temps, with_procs = [], [], [], 0
    for _ in range(3000):
        for g in src.sample():
            assert 0.0 <= g.utilization_percent <= 100.0
            assert 0 < g.memory_used_bytes <= g.memory_total_bytes
            assert 0 < g.power_watts <= g.power_limit_watts
            assert 20.0 <= g.temperature_c <= 95.0
            assert g.unavailable == {} and g.mig_enabled is False
            used_by_procs = sum(p.used_memory_bytes for p in g.processes)
            assert used_by_procs <= g.memory_used_bytes
            with_procs += bool(g.processes)
            utils.append(g.utilization_percent)
            powers.append(g.power_watts)
            temps.append(g.temperature_c)
    assert statistics.pstdev(utils) > 15  # idle and busy phases, not a constant
    # Bursts pin a GPU at 100% for a few samples now and then; idle phases sit near 0.
    assert sum(u >= 99.0 for u in utils) > 150
    assert sum(u <= 5.0 for u in utils) > 150
    assert 0 < with_procs < 6000
    # Smooth: temperature follows power with lag, so it never jumps much between samples.
    assert max(abs(a - b) for a, b in zip(temps[::2], temps[2::2], strict=False)) < 10.0
    assert statistics.correlation(utils, powers) > 0.8


def test_gpu_close_stops_samples() -> None:
    src = SimulatedGpuSource(2)
    src.close()
    assert src.sample() == [] and src.status().source == "none"


def test_host_values_are_plausible_and_vary() -> None:
    src = SimulatedHostCollector(3, cores=16, top_n=4)
    cpus, last = [], None
    for _ in range(1000):
        r = src.sample()
        assert 0.0 <= r.cpu.percent <= 100.0 and len(r.cpu.per_core) == 16
        assert all(0.0 <= c <= 100.0 for c in r.cpu.per_core)
        m = r.memory
        assert m.used_bytes + m.available_bytes == m.total_bytes
        assert 0 <= m.swap_used_bytes <= m.swap_total_bytes
        assert all(0 < d.used_bytes <= d.total_bytes for d in r.disks)
        assert (
            min(r.disk_io.read_bytes_per_s, r.disk_io.write_bytes_per_s, r.net.recv_bytes_per_s, r.net.sent_bytes_per_s)
            >= 0
        )
        if last is not None:  # counters only go up
            assert r.disk_io.write_bytes_total >= last.disk_io.write_bytes_total
            assert r.net.recv_bytes_total >= last.net.recv_bytes_total
        assert len(r.top_cpu) == 4 and len(r.top_rss) == 4
        assert [p.cpu_percent for p in r.top_cpu] == sorted((p.cpu_percent for p in r.top_cpu), reverse=True)
        assert [p.rss_bytes for p in r.top_rss] == sorted((p.rss_bytes for p in r.top_rss), reverse=True)
        cpus.append(r.cpu.percent)
        last = r
    assert statistics.pstdev(cpus) > 5
    assert last.cpu.load1 > 0
