"""Which CPUs a job runs on: each job started by our executor is pinned (the wrapper sets its own CPU affinity
before it forks the command, so every process of the job inherits it) to ceil(cpu) of the host's CPUs, the
ones running jobs have taken least. Slurm does the same (task/affinity with ConstrainCores).

Why: a CFS quota caps a job's CPU time, not where it runs. A hog of two busy processes capped at one core runs
one process on each CPU of a 2-core host; when its quota runs out mid-period, both go off-CPU and one CPU
idles. A single-threaded job of another pipeline sharing a CPU with one of the hog's processes loses the
time the hog takes there, and the scheduler doesn't move it to the CPU that went idle (it is alone on its own
run-queue by then): it kept 0.74-0.88 of a core beside the hog with the host 6 % idle (1.00 alone). Pinned,
the hog's processes share one CPU and the other job has the other.

It also sizes thread pools right: OpenMP, torch and BLAS read the affinity mask, so a job with cpu = 2 on a
64-core host starts 2 threads, not 64 that spend most of each period throttled.

Affinity is placement, not enforcement: the CFS quota stays the limit, and a job may widen its own mask.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence


def place(want: float | None, cpus: Sequence[int], taken: Iterable[tuple[Sequence[int], float]]) -> list[int] | None:
    """The CPUs for a job asking `want` cores, from the host's `cpus`, given the (cpus, cores) of the jobs
    already placed; None (any CPU) when it asks for none, or for as many as the host has.

    Each placed job loads its CPUs evenly with what it asked; the job gets the ceil(want) least loaded,
    the highest-numbered first among equals (CPU 0 takes most of the host's interrupts and daemons)."""
    if want is None or not cpus:
        return None
    k = max(1, math.ceil(want - 1e-9))
    if k >= len(cpus):
        return None
    load = dict.fromkeys(cpus, 0.0)
    for used, cores in taken:
        mine = [c for c in used if c in load]
        for c in mine:
            load[c] += cores / len(mine)
    return sorted(sorted(cpus, key=lambda c: (load[c], -c))[:k])
