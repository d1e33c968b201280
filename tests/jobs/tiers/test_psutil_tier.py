"""The psutil tier, forced: the agent itself watches and enforces (no cgroup)."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import psutil
import pytest

from agent.jobs.tiers.base import JobHandle, Limits
from agent.jobs.tiers.psutil_tier import PsutilTier, nice_from_weight
from tests.jobs.tiers.conftest import HOG, PY, pid_alive, wait_for, wait_outcome
from tests.jobs.tiers.test_cgroup_v1 import DOUBLE_FORK

MiB = 1 << 20


@pytest.fixture
def tier() -> PsutilTier:
    return PsutilTier()


def test_over_memory_limit_is_stopped_killed_and_oom(tier: PsutilTier, spec) -> None:
    h = tier.launch(spec([PY, "-c", HOG, "200"], limits=Limits(mem=64 * MiB)))
    reasons: list[str] = []

    def tick() -> None:
        r = tier.check_limits(h)
        if r:
            reasons.append(r)

    out = wait_outcome(tier, h, tick=tick)
    peak = tier.usage(h).peak_rss_bytes
    tier.release(h)
    print(f"\npsutil OOM: limit 64 MiB, job asked 200 MiB: seen {peak / MiB:.1f} MiB before the kill; {reasons}")
    assert out.oom is True and out.signal == 9
    assert len(reasons) == 1 and "over the limit" in reasons[0]


def test_a_job_that_fits_ends_with_its_exit_code(tier: PsutilTier, spec) -> None:
    h = tier.launch(spec(["sh", "-c", "exit 4"], limits=Limits(mem=64 * MiB)))
    out = wait_outcome(tier, h, tick=lambda: tier.check_limits(h))
    assert (out.exit_code, out.oom) == (4, False)


def test_double_forked_child_dies_with_its_job(tier: PsutilTier, spec) -> None:
    s = spec([PY, "-c", DOUBLE_FORK])
    h = tier.launch(s)
    marker = Path(s.workdir) / "grandchild"
    wait_for(lambda: marker.exists() and marker.read_text() != "")
    gc = int(marker.read_text())
    assert gc in tier.usage(h).pids  # re-parented to the wrapper (subreaper), not to init
    tier.terminate(h, grace_s=0.3)
    out = wait_outcome(tier, h)
    assert out.signal == 15
    wait_for(lambda: not pid_alive(gc), timeout=10)


def test_adopt_after_restart_and_refusals(tier: PsutilTier, spec) -> None:
    s = spec(["sh", "-c", "while [ ! -e go ]; do sleep 0.05; done; exit 7"], limits=Limits(mem=64 * MiB))
    first = tier.launch(s)
    h = JobHandle.from_json(first.to_json())
    assert h.mem_limit == 64 * MiB
    fresh = PsutilTier()
    assert fresh.adopt(h) is None
    assert fresh.poll(h) is None
    assert "another process" in fresh.adopt(dataclasses.replace(h, pid=os.getpid()))
    assert "another process" in fresh.adopt(dataclasses.replace(h, create_time=h.create_time + 5))
    assert "rebooted" in fresh.adopt(dataclasses.replace(h, boot_id="not-this-boot"))
    (Path(s.workdir) / "go").touch()
    out = wait_outcome(fresh, h)
    assert out.exit_code == 7
    tier.poll(first)  # reap our child
    gone = dataclasses.replace(h, rc_path=h.rc_path + "-missing")
    assert "gone" in fresh.adopt(gone)


def test_pipeline_memory_sum_is_watched(tier: PsutilTier, spec) -> None:
    tier.set_pipeline_limits("train", Limits(mem=150 * MiB))
    a = spec([PY, "-c", HOG, "100"], pipeline="train", limits=Limits(mem=120 * MiB))
    b = spec([PY, "-c", HOG, "100"], pipeline="train", limits=Limits(mem=120 * MiB))
    other = spec([PY, "-c", HOG, "100"], pipeline="serving-data", limits=Limits(mem=120 * MiB))
    ha = tier.launch(a)
    wait_for(lambda: "allocated" in a.stdout_path.read_text())
    ho = tier.launch(other)
    wait_for(lambda: "allocated" in other.stdout_path.read_text())
    assert tier.check_limits(ha) is None  # 100 (+ 100 of another pipeline) fits train's 150
    hb = tier.launch(b)
    reasons = {}
    wait_for(lambda: "allocated" in b.stdout_path.read_text() or tier.poll(hb) is not None)

    def tick() -> None:
        for h in (ha, hb, ho):
            r = tier.check_limits(h)
            if r:
                reasons[h.job_id] = r

    wait_for(lambda: (tick(), tier.poll(ha) is not None or tier.poll(hb) is not None)[1])
    for x in (a, b, other):
        (Path(x.workdir) / "go").touch()
    outs = {h.job_id: wait_outcome(tier, h) for h in (ha, hb, ho)}
    killed = [j for j, o in outs.items() if o.oom]
    assert len(killed) == 1 and killed[0] in (ha.job_id, hb.job_id), outs
    assert "pipeline train" in reasons[killed[0]]
    assert outs[ho.job_id].exit_code == 0


def test_jobs_wide_cap(tier: PsutilTier, spec) -> None:
    tier.set_jobs_limits(Limits(mem=50 * MiB))
    s = spec([PY, "-c", HOG, "80"])
    h = tier.launch(s)
    wait_for(lambda: "allocated" in s.stdout_path.read_text())
    assert "all jobs" in tier.check_limits(h)
    assert wait_outcome(tier, h).oom
    tier.set_jobs_limits(Limits())
    assert tier._caps == {}


def test_weight_becomes_nice(tier: PsutilTier, spec) -> None:
    assert nice_from_weight(100) == 0 and nice_from_weight(1000) == 0
    assert nice_from_weight(50) == 3 and nice_from_weight(1) == 19
    s = spec(["sleep", "30"], cpu_weight=50)
    h = tier.launch(s)
    try:
        wait_for(lambda: len(tier.usage(h).pids) == 2)
        for pid in tier.usage(h).pids:
            assert psutil.Process(pid).nice() == 3  # the command inherited it from its first instruction
    finally:
        tier.terminate(h, grace_s=0.2)
        wait_outcome(tier, h)


def test_terminate_right_after_launch_still_ends_the_job(tier: PsutilTier, spec) -> None:
    h = tier.launch(spec(["sleep", "300"]))
    tier.terminate(h, grace_s=0.2)
    assert wait_outcome(tier, h, timeout=15).signal in (15, 9)


def test_one_proc_scan_per_tick_serves_every_job(tier: PsutilTier, spec) -> None:
    """Twenty running jobs, each with a child: a tick's usage and limit checks of all of them read /proc once
    (children(recursive=True) per job read every /proc/*/stat twenty times), and each job's tree, memory and
    CPU are still its own: a child that burned CPU and was reaped still counts."""
    burn = "import time\nt=time.process_time()\nwhile time.process_time()-t<0.3: pass"
    hs = [tier.launch(spec(["sh", "-c", "sleep 30 & wait"], limits=Limits(mem=512 * MiB))) for _ in range(20)]
    burner = tier.launch(spec(["sh", "-c", f'{PY} -c "{burn}"; sleep 30'], limits=Limits(mem=512 * MiB)))
    try:
        wait_for(lambda: all(len(tier.usage(h).pids) >= 3 for h in hs), timeout=20)
        wait_for(lambda: (tier.usage(burner).cpu_seconds or 0) >= 0.3 and len(tier.usage(burner).pids) == 3,
                 timeout=20)  # fmt: skip
        before = tier._procs.scans
        tier.new_tick()
        for h in [*hs, burner]:
            assert tier.check_limits(h) is None
            u = tier.usage(h)
            sleeper = [p for p in u.pids if p not in (h.pid,) and psutil.Process(p).name() == "sleep"]
            assert len(sleeper) >= 1 and u.rss_bytes and u.rss_bytes > 0
            assert h.pid == u.pids[0] and not set(u.pids[1:]) & {x.pid for x in hs if x is not h}
        assert tier._procs.scans == before + 1
        assert (tier.usage(burner).cpu_seconds or 0) >= 0.3  # the reaped python's CPU, via its parent
    finally:
        for h in [*hs, burner]:
            tier.terminate(h, grace_s=0.2)
        for h in [*hs, burner]:
            wait_outcome(tier, h)
            tier.release(h)
