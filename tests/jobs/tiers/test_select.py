"""select_tier: the best tier this host offers; forcing one; refusing one the host lacks."""

from __future__ import annotations

import pytest

from agent.jobs.tiers.cgroup_v1 import CgroupV1Tier
from agent.jobs.tiers.psutil_tier import PsutilTier
from agent.jobs.tiers.select import TierUnavailable, offered, select_tier
from agent.schemas import EnforcementInfo
from agent.telemetry.enforcement import detect_enforcement
from tests.jobs.tiers.conftest import needs_v1


@needs_v1
def test_this_machine_gets_cgroup_v1(jobs_root: str) -> None:
    tier = select_tier(detect_enforcement(), jobs_root=jobs_root)
    assert isinstance(tier, CgroupV1Tier) and tier.name == "cgroup-v1"
    assert jobs_root in tier.detail


def test_forcing_psutil_works() -> None:
    tier = select_tier(detect_enforcement(), force="psutil")
    assert isinstance(tier, PsutilTier)


def test_forcing_systemd_here_is_a_clear_error() -> None:
    info = detect_enforcement()
    if info.systemd_pid1:
        pytest.skip("systemd is PID 1 on this host")
    with pytest.raises(TierUnavailable) as e:
        select_tier(info, force="systemd")
    msg = str(e.value)
    assert "'systemd' is not available on this host" in msg and "PID 1 is" in msg
    assert "psutil" in msg  # what the host does offer


def test_unknown_tier_name_is_refused() -> None:
    with pytest.raises(TierUnavailable, match="unknown jobs tier 'cgroup-v3'"):
        select_tier(detect_enforcement(), force="cgroup-v3")


def test_order_of_preference() -> None:
    full = EnforcementInfo(
        tier="systemd", systemd_pid1=True, cgroup_version=2, writable=True, controllers=["cpu", "memory", "pids"]
    )
    assert offered(full, euid=0) == ["systemd", "cgroup-v2", "psutil"]
    assert offered(full, euid=1000) == ["cgroup-v2", "psutil"]  # no transient units for an unprivileged agent
    ro = EnforcementInfo(tier="psutil", cgroup_version=1, writable=False, controllers=["cpu", "memory"])
    assert offered(ro) == ["psutil"]
    no_mem = EnforcementInfo(tier="psutil", cgroup_version=2, writable=True, controllers=["cpu", "pids"])
    assert offered(no_mem) == ["psutil"]
    with pytest.raises(TierUnavailable, match="not available"):
        select_tier(ro, force="cgroup-v1")


def test_a_detected_tier_that_fails_to_set_up_falls_back_and_says_why(monkeypatch) -> None:
    # v2 "writable" by detection, but this process is in no delegated subtree: the v2 tier can't set up.
    info = EnforcementInfo(tier="cgroup-v2", cgroup_version=2, writable=True, controllers=["cpu", "memory"])
    monkeypatch.setattr("agent.jobs.tiers.cgroup_v2.own_v2_dir", lambda root="/": "/nonexistent/cg")
    tier = select_tier(info)
    assert tier.name == "psutil"
    assert "not cgroup-v2" in tier.detail and "not delegated" in tier.detail
    with pytest.raises(TierUnavailable, match="could not be set up"):
        select_tier(info, force="cgroup-v2")


def test_every_tier_keeps_the_whole_contract() -> None:
    from agent.jobs.tiers.cgroup_v2 import CgroupV2Tier
    from agent.jobs.tiers.systemd_tier import SystemdTier

    methods = (
        "prepare",
        "launch",
        "check_limits",
        "poll",
        "usage",
        "terminate",
        "adopt",
        "release",
        "set_pipeline_limits",
        "set_jobs_limits",
    )
    for cls in (CgroupV1Tier, CgroupV2Tier, SystemdTier, PsutilTier):
        missing = [m for m in methods if not callable(getattr(cls, m, None))]
        assert not missing, (cls.__name__, missing)
