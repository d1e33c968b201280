"""Simulated GPUs and hosts for demo agents and machines without GPUs.

Values come from a seeded random walk that advances one nominal second per `sample()` call, so a
given seed always produces the same sequence regardless of wall-clock time. Simulated GPUs are
labelled as such in their name, UUID and `GpuStatus`; a simulated host is flagged by the
snapshot's `host_simulated`.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from agent.schemas import (
    CpuSample,
    DiskUsage,
    GpuProcess,
    GpuSample,
    GpuStatus,
    IoRates,
    MemorySample,
    NetRates,
    ProcessSample,
)
from agent.telemetry.host import HostReading

GIB = 1024**3
SIM_GPU_NAME = "Simulated A100-SXM4-80GB"
_GPU_MEMORY = 80 * GIB
_IDLE_POWER_W = 60.0
_POWER_LIMIT_W = 400.0
_TICK_S = 1.0  # nominal seconds between samples, for counters and smoothing


class _Walk:
    """A value in [lo, hi] pulled toward a target that jumps now and then, with noise."""

    def __init__(self, rng: random.Random, lo: float, hi: float, start: float, pull: float, noise: float):
        self.rng, self.lo, self.hi = rng, lo, hi
        self.value = self.target = start
        self.pull, self.noise = pull, noise

    def step(self) -> float:
        self.value += self.pull * (self.target - self.value) + self.rng.gauss(0.0, self.noise)
        self.value = min(self.hi, max(self.lo, self.value))
        return self.value


@dataclass
class _SimGpu:
    index: int
    uuid: str
    util: _Walk
    mem_gib: _Walk
    temp_c: float = 32.0
    phase: str = "idle"  # idle | training | burst
    phase_left: int = 0
    procs: list[tuple[int, str, float]] = field(default_factory=list)  # pid, name, share of memory


class SimulatedGpuSource:
    """Pretend NVIDIA GPUs with the `NvmlGpuSource` interface; deterministic for a seed."""

    def __init__(self, count: int, seed: int = 0) -> None:
        """`count` GPUs whose sequence of samples depends only on `seed`."""
        self._rng = random.Random(seed)
        self._closed = False
        self._gpus: list[tuple[random.Random, _SimGpu]] = []
        for i in range(count):
            rng = random.Random(self._rng.getrandbits(64))
            gpu = _SimGpu(
                index=i,
                uuid=f"GPU-sim-{seed & 0xFFFFFFFF:08x}-{i:04x}-{rng.getrandbits(48):012x}",
                util=_Walk(rng, 0.0, 100.0, 2.0, pull=0.25, noise=3.0),
                mem_gib=_Walk(rng, 0.4, 79.5, 0.5, pull=0.3, noise=0.15),
                phase_left=rng.randint(0, 30),  # so the GPUs don't all start a job at once
            )
            self._gpus.append((rng, gpu))

    def status(self) -> GpuStatus:
        """Always "simulated", and says so in `reason` too for people reading raw JSON."""
        if self._closed:
            return GpuStatus(source="none", reason="GPU source closed")
        return GpuStatus(source="simulated", simulated=True, reason="simulated GPUs, not real hardware")

    def sample(self) -> list[GpuSample]:
        """Advance every GPU one nominal second and report it."""
        if self._closed:
            return []
        return [self._step(rng, gpu) for rng, gpu in self._gpus]

    def close(self) -> None:
        """Stop reporting GPUs."""
        self._closed = True

    def _step(self, rng: random.Random, g: _SimGpu) -> GpuSample:
        self._advance_phase(rng, g)
        util = g.util.step()
        mem_used = int(g.mem_gib.step() * GIB)
        power = _IDLE_POWER_W + (_POWER_LIMIT_W - _IDLE_POWER_W) * util / 100.0 + rng.gauss(0.0, 4.0)
        power = min(_POWER_LIMIT_W, max(_IDLE_POWER_W * 0.8, power))
        # Temperature lags power like a heatsink: first-order toward a power-dependent level.
        g.temp_c += 0.08 * ((28.0 + power * 0.12) - g.temp_c)
        procs = [
            GpuProcess(pid=pid, name=name, used_memory_bytes=int(mem_used * share)) for pid, name, share in g.procs
        ]
        return GpuSample(
            index=g.index,
            uuid=g.uuid,
            name=SIM_GPU_NAME,
            pci_bus_id=f"00000000:{0x07 + g.index * 0x10:02X}:00.0",
            utilization_percent=round(util, 1),
            memory_used_bytes=mem_used,
            memory_total_bytes=_GPU_MEMORY,
            power_watts=round(power, 1),
            power_limit_watts=_POWER_LIMIT_W,
            temperature_c=round(g.temp_c, 1),
            sm_clock_mhz=1410.0 if util > 5 else 210.0,
            ecc_uncorrected_errors=0,
            xid_errors=0,
            mig_enabled=False,
            processes=procs,
        )

    @staticmethod
    def _advance_phase(rng: random.Random, g: _SimGpu) -> None:
        g.phase_left -= 1
        if g.phase == "training" and g.phase_left > 0 and rng.random() < 0.03:
            # A short burst (eval, checkpoint, all-reduce storm) then back to training.
            g.phase, g.phase_left = "burst", rng.randint(3, 12)
            g.util.target = 100.0
            g.mem_gib.target = min(79.0, g.mem_gib.target + rng.uniform(2.0, 6.0))
            return
        if g.phase_left > 0:
            if g.phase == "training" and rng.random() < 0.05:  # dataloader stall
                g.util.value *= rng.uniform(0.3, 0.7)
            return
        if g.phase == "burst":
            g.phase, g.phase_left = "training", rng.randint(20, 120)
            g.util.target = rng.uniform(80.0, 97.0)
            g.mem_gib.target -= 3.0
        elif g.phase == "idle":
            g.phase, g.phase_left = "training", rng.randint(60, 600)
            g.util.target = rng.uniform(80.0, 97.0)
            g.mem_gib.target = rng.uniform(40.0, 74.0)
            base = 20000 + rng.randrange(40000)
            g.procs = [(base, "python", 0.97)]
            if rng.random() < 0.4:  # a notebook or profiler holding a little memory as well
                g.procs = [(base, "python", 0.9), (base + rng.randint(3, 400), "python3", 0.07)]
        else:
            g.phase, g.phase_left = "idle", rng.randint(10, 90)
            g.util.target = rng.uniform(0.0, 3.0)
            g.mem_gib.target = 0.5
            g.procs = []


_SIM_PROCESSES = (
    ("python", "trainer", "python train.py --config configs/llm-7b.yaml"),
    ("python", "trainer", "python -m torch.distributed.run --nproc-per-node 8 train.py"),
    ("pt_data_worker", "trainer", "python train.py --config configs/llm-7b.yaml"),
    ("tritonserver", "serving", "tritonserver --model-repository=/models"),
    ("jupyter-lab", "alice", "/opt/conda/bin/python /opt/conda/bin/jupyter-lab --no-browser"),
    ("dockerd", "root", "/usr/bin/dockerd -H fd://"),
    ("node_exporter", "nobody", "/usr/local/bin/node_exporter"),
    ("sshd", "root", "sshd: /usr/sbin/sshd -D"),
)


class SimulatedHostCollector:
    """A pretend host with the `HostCollector` interface; deterministic for a seed."""

    def __init__(self, seed: int = 0, *, cores: int = 32, memory_total_bytes: int = 512 * GIB, top_n: int = 5) -> None:
        """A host with `cores` CPUs and `memory_total_bytes` of RAM whose samples depend only on
        `seed`."""
        self._rng = rng = random.Random(seed)
        self.top_n = top_n
        self._cores = cores
        self._mem_total = memory_total_bytes
        self._cpu = _Walk(rng, 1.0, 100.0, 20.0, pull=0.15, noise=2.5)
        self._mem = _Walk(rng, 0.05, 0.97, 0.3, pull=0.05, noise=0.004)
        self._read = _Walk(rng, 0.0, 3e9, 50e6, pull=0.2, noise=20e6)
        self._write = _Walk(rng, 0.0, 2e9, 20e6, pull=0.2, noise=10e6)
        self._recv = _Walk(rng, 0.0, 12e9, 200e6, pull=0.2, noise=50e6)
        self._sent = _Walk(rng, 0.0, 12e9, 150e6, pull=0.2, noise=40e6)
        self._core_bias = [rng.uniform(-15.0, 15.0) for _ in range(cores)]
        self._loads = [self._cpu.value * cores / 100.0] * 3
        self._totals = [0, 0, 0, 0]  # disk read, disk write, net recv, net sent
        self._disk_used = [0.41, 0.63]
        self._burst_left = 0
        self._pids = [1000 + rng.randrange(60000) for _ in _SIM_PROCESSES]

    def sample(self) -> HostReading:
        """Advance the pretend host one nominal second and report it."""
        rng = self._rng
        if self._burst_left > 0:
            self._burst_left -= 1
            if self._burst_left == 0:
                self._cpu.target = rng.uniform(10.0, 60.0)
        elif rng.random() < 0.02:
            self._burst_left = rng.randint(3, 20)
            self._cpu.target = rng.uniform(85.0, 100.0)
        elif rng.random() < 0.02:
            self._cpu.target = rng.uniform(10.0, 60.0)
            self._mem.target = rng.uniform(0.2, 0.8)
            for walk, hi in ((self._read, 2e9), (self._write, 1e9), (self._recv, 8e9), (self._sent, 8e9)):
                walk.target = rng.uniform(0.0, hi) * rng.random()

        cpu = self._cpu.step()
        per_core = [round(min(100.0, max(0.0, cpu + b + rng.gauss(0.0, 4.0))), 1) for b in self._core_bias]
        running = cpu * self._cores / 100.0
        # Exponentially damped like the kernel's load averages over 1, 5 and 15 minutes.
        for i, window in enumerate((60.0, 300.0, 900.0)):
            self._loads[i] += (running - self._loads[i]) * (_TICK_S / window)

        mem_frac = self._mem.step()
        used = int(self._mem_total * mem_frac)
        available = self._mem_total - used
        swap_total = 8 * GIB
        swap_used = int(swap_total * max(0.0, mem_frac - 0.85) * 4)

        rates = [self._read.step(), self._write.step(), self._recv.step(), self._sent.step()]
        for i, r in enumerate(rates):
            self._totals[i] += int(r * _TICK_S)
        self._disk_used[1] = min(0.99, self._disk_used[1] + rates[1] * _TICK_S / (30 * 1024**4))

        procs = self._processes(cpu, used)
        return HostReading(
            cpu=CpuSample(
                percent=round(cpu, 1),
                per_core=per_core,
                load1=round(self._loads[0], 2),
                load5=round(self._loads[1], 2),
                load15=round(self._loads[2], 2),
            ),
            memory=MemorySample(
                total_bytes=self._mem_total,
                available_bytes=available,
                used_bytes=used,
                percent=round(100.0 * used / self._mem_total, 1),
                swap_total_bytes=swap_total,
                swap_used_bytes=min(swap_total, swap_used),
            ),
            disks=[
                _disk("/", "/dev/nvme0n1p2", "ext4", 2 * 1024**4, self._disk_used[0]),
                _disk("/data", "/dev/md0", "xfs", 30 * 1024**4, self._disk_used[1]),
            ],
            disk_io=IoRates(
                read_bytes_total=self._totals[0],
                write_bytes_total=self._totals[1],
                read_bytes_per_s=rates[0],
                write_bytes_per_s=rates[1],
            ),
            net=NetRates(
                recv_bytes_total=self._totals[2],
                sent_bytes_total=self._totals[3],
                recv_bytes_per_s=rates[2],
                sent_bytes_per_s=rates[3],
            ),
            top_cpu=sorted(procs, key=lambda p: p.cpu_percent, reverse=True)[: self.top_n],
            top_rss=sorted(procs, key=lambda p: p.rss_bytes, reverse=True)[: self.top_n],
        )

    def _processes(self, cpu: float, mem_used: int) -> list[ProcessSample]:
        rng = self._rng
        busy_cores = cpu * self._cores / 100.0
        # Roughly: the trainer and its workers take most CPU and memory, the rest is noise.
        shares = [0.45, 0.2, 0.2, 0.08, 0.03, 0.02, 0.01, 0.01]
        out = []
        for (name, user, cmd), pid, share in zip(_SIM_PROCESSES, self._pids, shares, strict=True):
            jitter = rng.uniform(0.7, 1.3)
            out.append(
                ProcessSample(
                    pid=pid,
                    name=name,
                    username=user,
                    cpu_percent=round(100.0 * busy_cores * share * jitter, 1),
                    rss_bytes=int(mem_used * share * 0.8 * jitter),
                    cmdline=cmd,
                )
            )
        return out


def _disk(mountpoint: str, device: str, fstype: str, total: int, frac: float) -> DiskUsage:
    return DiskUsage(
        mountpoint=mountpoint,
        device=device,
        fstype=fstype,
        total_bytes=total,
        used_bytes=int(total * frac),
        percent=round(100.0 * frac, 1),
    )
