"""Pick the enforcement tier for this host: the best it offers, or the one the `[jobs] tier` key forces.

Best first: systemd (transient units; jobs survive an agent restart by construction), delegated cgroup v2,
cgroup v1, psutil (the agent watches). A detected tier that then fails to set up (its jobs root can't be
made) falls to the next one down, and the tier's `detail` says why; a forced tier never falls back — the
operator asked for it, so its failure is an error that names the reason.
"""

from __future__ import annotations

import os

from agent.jobs.tiers.base import Tier
from agent.schemas import EnforcementInfo

TIERS = ("systemd", "cgroup-v2", "cgroup-v1", "psutil")
_REQUIRED = ("cpu", "memory")


class TierUnavailable(ValueError):
    """A forced tier this host can't offer (or an unknown tier name)."""


def offered(info: EnforcementInfo, euid: int | None = None) -> list[str]:
    """The tiers this host can run, best first (psutil always). systemd needs the agent to be root:
    creating a system unit is running anything as anyone, so no narrower grant exists (docs/jobs.md)."""
    has = all(c in info.controllers for c in _REQUIRED)
    root = (os.geteuid() if euid is None else euid) == 0
    out = []
    if info.systemd_pid1 and root:
        out.append("systemd")
    if info.cgroup_version == 2 and info.writable and has:
        out.append("cgroup-v2")
    if info.cgroup_version == 1 and info.writable and has:
        out.append("cgroup-v1")
    out.append("psutil")
    return out


def build(name: str, jobs_root: str = "watchkeeper.jobs", run_as: str | None = None) -> Tier:
    """Construct tier `name` (imports lazily: a host only loads the tier it uses). `run_as`: the account
    of jobs' units under systemd (the other tiers' wrapper switches to it itself)."""
    if name == "systemd":
        from agent.jobs.tiers.systemd_tier import SystemdTier

        return SystemdTier(user=run_as)
    if name == "cgroup-v2":
        from agent.jobs.tiers.cgroup_v2 import CgroupV2Tier

        return CgroupV2Tier()
    if name == "cgroup-v1":
        from agent.jobs.tiers.cgroup_v1 import CgroupV1Tier

        return CgroupV1Tier(jobs_root=jobs_root)
    if name == "psutil":
        from agent.jobs.tiers.psutil_tier import PsutilTier

        return PsutilTier()
    raise TierUnavailable(f"unknown jobs tier {name!r}: one of {', '.join(TIERS)}")


def select_tier(
    info: EnforcementInfo, jobs_root: str = "watchkeeper.jobs", force: str | None = None, run_as: str | None = None
) -> Tier:
    """The tier jobs run under. `force` ("psutil", "cgroup-v1", ...; the `[jobs] tier` key, and tests)
    picks one; TierUnavailable if this host can't offer it, with what the host does offer and why.
    A cgroup-v2 tier still needs `prepare()` before its first launch."""
    can = offered(info)
    if force:
        if force not in TIERS:
            raise TierUnavailable(f"unknown jobs tier {force!r}: one of {', '.join(TIERS)}")
        if force not in can:
            why = info.detail
            if force == "systemd" and info.systemd_pid1:
                why = "the systemd tier needs the agent to run as root (see docs/jobs.md, Enforcement tiers)"
            raise TierUnavailable(
                f"jobs tier {force!r} is not available on this host (it offers {', '.join(can)}): {why}"
            )
        try:
            return build(force, jobs_root, run_as)
        except (OSError, ValueError) as exc:
            raise TierUnavailable(f"jobs tier {force!r} could not be set up: {exc}") from exc
    skipped: list[str] = []
    for name in can:
        try:
            tier = build(name, jobs_root, run_as)
        except (OSError, ValueError) as exc:
            skipped.append(f"{name}: {exc}")
            continue
        if skipped:
            tier.detail = f"{tier.detail} (not {'; '.join(skipped)})"
        return tier
    raise AssertionError("unreachable: the psutil tier always builds")
