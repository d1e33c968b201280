"""The systemd tier's side of the boundary: the command lines it builds and how it reads `systemctl show`.

systemd is not PID 1 on this project's machines (`systemd-run` fails), so systemd itself is replaced by
a recorder that answers as systemctl would; nothing here proves systemd accepts the units.
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import pytest

from agent.jobs.tiers.base import WRAPPER, JobHandle, Limits
from agent.jobs.tiers.systemd_tier import (
    SystemdTier,
    escape,
    parse_show,
    pipeline_slice,
    run_argv,
    show_int,
    unit_name,
)

SHOW_RUNNING = """LoadState=loaded
ActiveState=active
SubState=running
Result=success
MainPID={pid}
ControlGroup=/watchkeeper.slice/watchkeeper-jobs.slice/watchkeeper-jobs-train.slice/wk-job-j-1.service
CPUUsageNSec=1500000000
MemoryCurrent=104857600
MemoryPeak=[not set]
"""
SHOW_GONE = "LoadState=not-found\nActiveState=inactive\nSubState=dead\nResult=success\nMainPID=0\nControlGroup=\n"


class FakeSystemd:
    """Records every call; answers `systemctl show` with `self.show`."""

    def __init__(self) -> None:
        self.calls: list[list[str]] = []
        self.envs: list[dict | None] = []
        self.show = SHOW_GONE
        self.rc = 0

    def __call__(self, argv, **kw) -> subprocess.CompletedProcess:
        self.calls.append(argv)
        self.envs.append(kw.get("env"))
        out = self.show if argv[:2] == ["systemctl", "show"] else ""
        return subprocess.CompletedProcess(argv, self.rc, out, "Failed to connect to bus" if self.rc else "")


def test_names_escape_dashes_so_slices_nest_only_where_meant() -> None:
    assert unit_name("j-0a1b") == "wk-job-j\\x2d0a1b.service"
    assert pipeline_slice("train") == "watchkeeper-jobs-train.slice"
    assert pipeline_slice("serving-data") == "watchkeeper-jobs-serving\\x2ddata.slice"
    assert escape(".hidden") == "\\x2ehidden" and escape("a.b_c") == "a.b_c"


def test_run_argv(spec) -> None:
    s = spec(["python", "train.py", "--epochs", "3"], pipeline="train", limits=Limits(cpu=0.5, mem=1 << 30, pids=512))
    s = dataclasses.replace(s, env={"PATH": "/usr/bin", "API_KEY": "secret"}, cpu_weight=200)
    argv = run_argv(s, user="wkjobs")
    assert argv[:6] == [
        "systemd-run",
        "--unit=wk-job-" + escape(s.job_id) + ".service",
        "--slice=watchkeeper-jobs-train.slice",
        "--collect",
        "--quiet",
        f"--working-directory={s.workdir}",
    ]
    props = [argv[i + 1] for i, a in enumerate(argv) if a == "-p"]
    for p in (
        "Type=exec",
        "OOMPolicy=continue",
        "MemorySwapMax=0",
        f"MemoryMax={1 << 30}",
        "CPUQuota=50%",
        "TasksMax=512",
        "CPUWeight=200",
        "User=wkjobs",
        f"StandardOutput=append:{s.stdout_path}",
        f"StandardError=append:{s.stderr_path}",
    ):
        assert p in props, p
    assert "--setenv=API_KEY" in argv and "--setenv=PATH" in argv
    assert not any("secret" in a for a in argv)  # values come from systemd-run's environment, never argv
    sep = argv.index("--")
    assert argv[sep + 1 : sep + 5] == [sys.executable, "-I", "-S", WRAPPER]
    assert argv[-5:] == ["--", "python", "train.py", "--epochs", "3"]
    assert "--procs" not in argv  # systemd puts the wrapper in the unit's cgroup itself


def test_unlimited_props() -> None:
    from agent.jobs.tiers.systemd_tier import limit_props

    assert limit_props(Limits()) == ["MemoryMax=infinity", "CPUQuota=", "TasksMax=infinity"]


def test_parse_show() -> None:
    props = parse_show(SHOW_RUNNING.format(pid=42))
    assert props["ActiveState"] == "active" and show_int(props, "MainPID") == 42
    assert show_int(props, "MemoryPeak") is None
    assert show_int({"MemoryCurrent": "18446744073709551615"}, "MemoryCurrent") is None
    assert props["ControlGroup"].endswith("wk-job-j-1.service")


def test_launch_poll_adopt_with_a_recorded_systemd(spec, tmp_path: Path) -> None:
    fake = FakeSystemd()
    tier = SystemdTier(run=fake, cgroup_mount=str(tmp_path / "cgroup"))
    fake.show = SHOW_RUNNING.format(pid=os.getpid())  # "the wrapper" is this test process: alive, known
    s = dataclasses.replace(spec(["true"], pipeline="train"), env={"K": "v"})
    h = tier.launch(s)
    assert fake.calls[0][0] == "systemd-run" and fake.envs[0] == {"K": "v"}
    assert (h.pid, h.unit) == (os.getpid(), unit_name(s.job_id))
    assert h.cgroups[""].startswith(str(tmp_path / "cgroup") + "/watchkeeper.slice/")
    assert oct(os.stat(s.stdout_path).st_mode & 0o777) == "0o600"
    assert tier.poll(h) is None
    u = tier.usage(h)
    assert (u.cpu_seconds, u.rss_bytes, u.peak_rss_bytes) == (1.5, 100 << 20, None)

    # the OOM counter is read while the unit lives (--collect forgets the unit once it ends)
    cg = Path(h.cgroups[""])
    cg.mkdir(parents=True)
    (cg / "memory.events").write_text("oom 1\noom_kill 1\n")
    assert tier.poll(h) is None
    restarted = SystemdTier(run=fake)
    saved = JobHandle.from_json(h.to_json())
    assert restarted.adopt(saved) is None
    assert "not the job's wrapper 1" in restarted.adopt(dataclasses.replace(saved, pid=1))

    fake.show = SHOW_GONE
    Path(s.rc_path).write_text('{"exit_code": null, "signal": 9, "ended_at": 1.0}')
    out = tier.poll(h)
    assert out.oom is True and out.signal == 9
    assert restarted.adopt(saved) is None  # ended with an rc file: still ours to report
    Path(s.rc_path).unlink()
    assert "is not running (not-found)" in restarted.adopt(saved)
    assert restarted.poll(saved).oom is True  # no rc file, but the counter says the kernel killed it
    (cg / "memory.events").unlink()
    assert "without the wrapper's exit status" in SystemdTier(run=fake).poll(saved).lost
    tier.release(h)
    assert fake.calls[-1] == ["systemctl", "reset-failed", h.unit]


def test_terminate_and_limits_commands(spec) -> None:
    fake = FakeSystemd()
    tier = SystemdTier(run=fake)
    h = JobHandle(
        job_id="j-1",
        tier="systemd",
        pid=0,
        create_time=0,
        boot_id="",
        rc_path="/nonexistent",
        unit="wk-job-j\\x2d1.service",
    )
    tier.terminate(h, grace_s=0.05)
    assert fake.calls[0] == ["systemctl", "kill", "--kill-whom=main", "--signal=SIGTERM", h.unit]
    import time

    time.sleep(0.3)
    assert fake.calls[1] == ["systemctl", "kill", "--kill-whom=all", "--signal=SIGKILL", h.unit]  # no cgroup to read
    tier.set_pipeline_limits("train", Limits(cpu=2, mem=4 << 30), weight=50)
    assert fake.calls[2] == [
        "systemctl",
        "set-property",
        "--runtime",
        "watchkeeper-jobs-train.slice",
        f"MemoryMax={4 << 30}",
        "CPUQuota=200%",
        "TasksMax=infinity",
        "CPUWeight=50",
    ]
    tier.set_jobs_limits(Limits(mem=8 << 30))
    assert fake.calls[3][:4] == ["systemctl", "set-property", "--runtime", "watchkeeper-jobs.slice"]
    assert fake.calls[3][-1] == "CPUWeight=idle"  # the jobs slice is the host's idle CPU class
    tier.set_jobs_limits(Limits(mem=8 << 30), idle=False)
    assert fake.calls[4][-1] == "CPUWeight=10"


def test_a_systemd_without_cpuweight_idle_gets_the_low_weight(spec) -> None:
    class OldSystemd(FakeSystemd):  # before 252: "Invalid value" for CPUWeight=idle
        def __call__(self, argv, **kw) -> subprocess.CompletedProcess:
            self.calls.append(argv)
            bad = "CPUWeight=idle" in argv
            why = "Failed to parse CPUWeight=idle" if bad else ""
            return subprocess.CompletedProcess(argv, 1 if bad else 0, "", why)

    fake = OldSystemd()
    SystemdTier(run=fake).set_jobs_limits(Limits(mem=8 << 30))
    assert [c[-1] for c in fake.calls] == ["CPUWeight=idle", "CPUWeight=10"]


def test_failures_are_clear(spec) -> None:
    fake = FakeSystemd()
    fake.rc = 1
    tier = SystemdTier(run=fake)
    with pytest.raises(OSError, match=r"systemd-run wk-job-.* failed: Failed to connect to bus"):
        tier.launch(spec(["true"]))
    with pytest.raises(OSError, match=r"set-property watchkeeper-jobs\.slice failed"):
        tier.set_jobs_limits(Limits())


def test_real_systemd_run_is_refused_here(spec) -> None:
    """On this machine kind systemd is not PID 1: the real command fails, with systemd's words."""
    from agent.telemetry.enforcement import detect_enforcement

    if detect_enforcement().systemd_pid1:
        pytest.skip("systemd is PID 1 here")
    tier = SystemdTier()
    try:
        with pytest.raises(OSError, match="systemd-run"):
            tier.launch(spec(["true"]))
    except FileNotFoundError:
        pytest.skip("no systemd-run installed")
