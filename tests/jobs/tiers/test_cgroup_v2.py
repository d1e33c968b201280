"""The delegated cgroup v2 tier against an ordinary directory tree standing in for cgroupfs.

This project's machines have no delegated v2 (the unified mount has no controllers), so what is tested is
the tier's side of the boundary: the files it writes (limits, joins, kills, freezes) and reads (OOM
counter, CPU, memory, peak), with real jobs running (unlimited: no kernel behind the tree) through the
real wrapper. The kernel's side — that memory.max really kills, cpu.max really throttles — is not.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import signal
from pathlib import Path

import pytest

from agent.jobs.tiers.base import JobHandle, Limits
from agent.jobs.tiers.cgroup_v2 import CgroupV2Tier
from tests.jobs.tiers.conftest import pid_alive, wait_for, wait_outcome

# What a fresh cgroup directory holds on a real cgroupfs (the files this tier touches).
FRESH = {
    "cgroup.procs": "",
    "cgroup.subtree_control": "",
    "cgroup.kill": "",
    "cgroup.freeze": "0\n",
    "cgroup.events": "populated 0\nfrozen 0\n",
    "memory.max": "max\n",
    "memory.swap.max": "max\n",
    "memory.current": "0\n",
    "memory.peak": "0\n",
    "memory.stat": "anon 0\ninactive_file 0\n",
    "memory.events": "low 0\nhigh 0\nmax 0\noom 0\noom_kill 0\n",
    "cpu.max": "max 100000\n",
    "cpu.weight": "100\n",
    "cpu.stat": "usage_usec 0\n",
    "pids.max": "max\n",
}


class FakeTreeV2(CgroupV2Tier):
    """Plays the kernel's part of mkdir/rmdir: a new cgroup gets its control files, and the controllers
    its parent enabled."""

    def _mkcg(self, path: str) -> None:
        os.mkdir(path)
        parent = (Path(path).parent / "cgroup.subtree_control").read_text().replace("+", "")
        (Path(path) / "cgroup.controllers").write_text(parent)
        for name, text in FRESH.items():
            (Path(path) / name).write_text(text)

    def _rmcg(self, path: str) -> bool:
        shutil.rmtree(path, ignore_errors=True)
        return True


@pytest.fixture
def own(tmp_path: Path) -> Path:
    d = tmp_path / "cg" / "watchkeeper-agent.service"
    d.mkdir(parents=True)
    for name, text in FRESH.items():
        (d / name).write_text(text)
    (d / "cgroup.controllers").write_text("cpuset cpu io memory pids\n")
    (d / "cgroup.procs").write_text(f"{os.getpid()}\n")
    return d


@pytest.fixture
def v2(own: Path) -> FakeTreeV2:
    return FakeTreeV2(own_dir=str(own))


def text(p: Path | str) -> str:
    return Path(p).read_text().strip()


def test_prepare_moves_the_agent_into_a_leaf_and_delegates(v2: FakeTreeV2, own: Path) -> None:
    v2.prepare()
    assert text(own / "agent" / "cgroup.procs") == str(os.getpid())
    assert text(own / "cgroup.subtree_control") == "+cpu +memory +pids"
    assert text(own / "jobs" / "cgroup.subtree_control") == "+cpu +memory +pids"
    v2.prepare()  # idempotent


def test_a_tree_without_memory_delegated_is_refused(own: Path) -> None:
    (own / "cgroup.controllers").write_text("cpu pids\n")
    with pytest.raises(OSError, match="not delegated memory"):
        FakeTreeV2(own_dir=str(own))


def test_launch_writes_limits_and_the_wrapper_joins(v2: FakeTreeV2, own: Path, spec) -> None:
    v2.set_jobs_limits(Limits(mem=8 << 30, cpu=1.5))
    v2.set_pipeline_limits("train", Limits(mem=4 << 30, cpu=1.0, pids=100), weight=300)
    s = spec(["sh", "-c", "echo $$ > pid; exit 3"], pipeline="train", limits=Limits(mem=512 << 20, cpu=0.5, pids=64),
             cpu_weight=50)  # fmt: skip
    h = v2.launch(s)
    d = own / "jobs" / "train" / f"job-{h.job_id}"
    assert h.cgroups == {"": str(d)}
    assert text(own / "jobs" / "memory.max") == str(8 << 30)
    assert text(own / "jobs" / "cpu.max") == "150000 100000"
    assert text(own / "jobs" / "cpu.weight") == "10"  # jobs yield to the agent and serving under contention
    assert not (own / "jobs" / "cpu.idle").exists()  # a kernel without cpu.idle: the weight alone, no error
    (own / "jobs" / "cpu.idle").write_text("0\n")
    v2.set_jobs_limits(Limits(mem=8 << 30, cpu=1.5))
    assert text(own / "jobs" / "cpu.idle") == "1"  # where it has it, the jobs are the host's idle class
    assert text(own / "jobs" / "train" / "cpu.weight") == "300"
    assert text(own / "jobs" / "train" / "pids.max") == "100"
    assert text(d / "memory.max") == str(512 << 20)
    assert text(d / "memory.swap.max") == "0"
    assert text(d / "cpu.max") == "50000 100000"
    assert text(d / "cpu.weight") == "50"
    assert text(d / "pids.max") == "64"
    out = wait_outcome(v2, h)
    assert (out.exit_code, out.oom) == (3, False)
    # The command's process wrote itself in (--procs); the wrapper stays out of the job's limits.
    assert text(d / "cgroup.procs") == text(Path(s.workdir) / "pid") != str(h.pid)
    v2.set_pipeline_limits("train", Limits())  # unlimited again
    assert text(own / "jobs" / "train" / "memory.max") == "max"
    assert text(own / "jobs" / "train" / "cpu.max") == "max 100000"
    v2.release(h)
    assert not d.exists()


def test_oom_and_usage_are_read_from_the_cgroup(v2: FakeTreeV2, own: Path, spec) -> None:
    s = spec(["sh", "-c", "while [ ! -e go ]; do sleep 0.05; done; kill -9 $$"])
    h = v2.launch(s)
    d = Path(h.cgroups[""])
    (d / "cpu.stat").write_text("usage_usec 2500000\nuser_usec 2000000\n")
    (d / "memory.current").write_text(f"{300 << 20}\n")
    (d / "memory.stat").write_text(f"anon {250 << 20}\ninactive_file {50 << 20}\n")
    (d / "memory.peak").write_text(f"{320 << 20}\n")
    u = v2.usage(h)
    assert (u.cpu_seconds, u.rss_bytes, u.peak_rss_bytes) == (2.5, 250 << 20, 320 << 20)
    (d / "memory.events").write_text("low 0\nhigh 0\nmax 7\noom 1\noom_kill 1\n")
    (Path(s.workdir) / "go").touch()
    out = wait_outcome(v2, h)
    assert out.oom is True and out.signal == signal.SIGKILL
    v2.release(h)


def test_terminate_spares_the_wrapper_and_freezes_for_the_kill(v2: FakeTreeV2, spec) -> None:
    s = spec(["sh", "-c", "trap '' TERM; touch ready; while true; do sleep 0.05; done"])
    h = v2.launch(s)
    d = Path(h.cgroups[""])
    wait_for((Path(s.workdir) / "ready").exists)
    cmd = int(Path(f"/proc/{h.pid}/task/{h.pid}/children").read_text().split()[0])
    (d / "cgroup.procs").write_text(f"{h.pid}\n{cmd}\n")  # the kernel would list the command too
    (d / "cgroup.events").write_text("populated 1\nfrozen 1\n")
    v2.terminate(h, grace_s=0.2)
    out = wait_outcome(v2, h)
    assert out.signal == signal.SIGKILL  # ignored SIGTERM, killed at the grace; the wrapper wrote the rc
    assert text(d / "cgroup.freeze") == "0"  # thawed again after the kill
    v2.release(h)
    assert not pid_alive(cmd)


def test_leftovers_are_killed_with_cgroup_kill(v2: FakeTreeV2, spec) -> None:
    h = v2.launch(spec(["true"]))
    wait_outcome(v2, h)
    d = Path(h.cgroups[""])
    (d / "cgroup.procs").write_text("999999\n")  # something the kernel still lists
    v2.poll(h)
    assert text(d / "cgroup.kill") == "1"
    v2.release(h)


def test_adopt(v2: FakeTreeV2, spec) -> None:
    s = spec(["sh", "-c", "while [ ! -e go ]; do sleep 0.05; done; exit 9"])
    first = v2.launch(s)
    wait_for(lambda: text(first.cgroups[""] + "/cgroup.procs") not in ("", str(first.pid)))
    h = JobHandle.from_json(first.to_json())
    fresh = FakeTreeV2(own_dir=v2.own)
    assert fresh.adopt(h) is None
    assert "another process" in fresh.adopt(dataclasses.replace(h, pid=os.getpid()))
    assert "gone" in fresh.adopt(dataclasses.replace(h, cgroups={"": h.cgroups[""] + "-x"}))
    (Path(s.workdir) / "go").touch()
    assert wait_outcome(fresh, h).exit_code == 9
    v2.poll(first)
