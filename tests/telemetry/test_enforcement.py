"""detect_enforcement() against fake /proc and /sys trees."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from agent.telemetry import enforcement
from agent.telemetry.enforcement import detect_enforcement

V1_ALL = ["blkio", "cpu,cpuacct", "cpuset", "devices", "freezer", "memory", "pids"]


def build(
    root: Path,
    *,
    pid1: str = "bash",
    systemd_dir: bool = False,
    mounts: list[str] = (),
    cgroup: str = "0::/\n",
    files: dict[str, str] | None = None,
) -> str:
    (root / "proc/1").mkdir(parents=True)
    (root / "proc/self").mkdir(parents=True)
    (root / "proc/1/comm").write_text(pid1 + "\n")
    (root / "proc/self/mounts").write_text("".join(m + "\n" for m in mounts))
    (root / "proc/self/cgroup").write_text(cgroup)
    if systemd_dir:
        (root / "run/systemd/system").mkdir(parents=True)
    for rel, text in (files or {}).items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return str(root)


def v2_tree(
    root: Path, *, rw: str = "rw", own: str = "/agent.service", delegated: str = "cpu memory pids", **kw
) -> str:
    return build(
        root,
        mounts=[f"cgroup2 /sys/fs/cgroup cgroup2 {rw},nosuid,nodev,noexec,relatime 0 0"],
        cgroup=f"0::{own}\n",
        files={
            "sys/fs/cgroup/cgroup.controllers": "cpuset cpu io memory hugetlb pids rdma misc\n",
            f"sys/fs/cgroup{own}/cgroup.controllers": delegated + "\n",
            f"sys/fs/cgroup{own}/cgroup.subtree_control": "",
        },
        **kw,
    )


def v1_tree(
    root: Path, *, controllers: list[str] = V1_ALL, ro: set[str] = frozenset(), cgroup: str | None = None, **kw
) -> str:
    mounts = ["tmpfs /sys/fs/cgroup tmpfs rw,nosuid,nodev,noexec,mode=755 0 0"]
    files = {}
    for c in controllers:
        flag = "ro" if c in ro else "rw"
        mounts.append(f"cgroup /sys/fs/cgroup/{c} cgroup {flag},nosuid,nodev,noexec,relatime,{c} 0 0")
        files[f"sys/fs/cgroup/{c}/tasks"] = ""
    # A hybrid host also has a controller-less cgroup2 for systemd's bookkeeping.
    mounts.append("cgroup2 /sys/fs/cgroup/unified cgroup2 rw,nosuid,nodev,noexec,relatime 0 0")
    files["sys/fs/cgroup/unified/cgroup.controllers"] = ""
    if cgroup is None:
        cgroup = "".join(f"{i}:{c}:/\n" for i, c in enumerate(controllers))
    return build(root, mounts=mounts, cgroup=cgroup, files=files, **kw)


def test_systemd_as_pid1_wins(tmp_path: Path) -> None:
    info = detect_enforcement(v2_tree(tmp_path, pid1="systemd", systemd_dir=True))
    assert info.tier == "systemd" and info.systemd_pid1 is True
    assert info.cgroup_version == 2 and info.writable is True
    assert "systemd is PID 1" in info.detail


def test_systemd_binary_without_run_dir_is_not_systemd(tmp_path: Path) -> None:
    # e.g. a container whose init is called "systemd" but never booted it
    info = detect_enforcement(v2_tree(tmp_path, pid1="systemd", systemd_dir=False))
    assert info.systemd_pid1 is False and info.tier == "cgroup-v2"


def test_cgroup_v2_with_delegated_controllers(tmp_path: Path) -> None:
    info = detect_enforcement(v2_tree(tmp_path))
    assert info.tier == "cgroup-v2" and info.cgroup_version == 2
    # What our own cgroup may use, not everything the root has.
    assert info.controllers == ["cpu", "memory", "pids"]
    assert info.writable is True
    assert "/agent.service" in info.detail


def test_cgroup_v2_read_only_mount_falls_back_to_psutil(tmp_path: Path) -> None:
    info = detect_enforcement(v2_tree(tmp_path, rw="ro"))  # Docker's default
    assert info.tier == "psutil" and info.cgroup_version == 2 and info.writable is False
    assert "not writable" in info.detail


def test_cgroup_v2_without_memory_delegated(tmp_path: Path) -> None:
    info = detect_enforcement(v2_tree(tmp_path, delegated="cpu pids"))
    assert info.tier == "psutil" and info.writable is True
    assert "missing memory" in info.detail


def test_cgroup_v2_not_writable_by_permissions(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = v2_tree(tmp_path)
    # Tests may run as root, for whom every mode bit is writable; stand in for an unprivileged user.
    monkeypatch.setattr(enforcement.os, "access", lambda path, mode: not str(path).startswith(root))
    info = detect_enforcement(root)
    assert info.tier == "psutil" and info.writable is False


def test_cgroup_v1_with_cpu_and_memory(tmp_path: Path) -> None:
    info = detect_enforcement(v1_tree(tmp_path))
    assert info.tier == "cgroup-v1" and info.cgroup_version == 1 and info.writable is True
    # "cpu,cpuacct" co-mounted counts as both controllers.
    assert {"cpu", "cpuacct", "memory", "pids"} <= set(info.controllers)
    assert "unified" not in info.controllers


def test_cgroup_v1_memory_read_only(tmp_path: Path) -> None:
    info = detect_enforcement(v1_tree(tmp_path, ro={"memory"}))
    assert info.tier == "psutil" and info.cgroup_version == 1 and info.writable is False


def test_cgroup_v1_without_memory_controller(tmp_path: Path) -> None:
    info = detect_enforcement(v1_tree(tmp_path, controllers=["cpu,cpuacct", "pids"]))
    assert info.tier == "psutil" and "memory" not in info.controllers
    assert "missing memory" in info.detail


@pytest.mark.parametrize("denied", ["memory", "cpu,cpuacct"])
def test_cgroup_v1_own_cgroup_path_is_checked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, denied: str) -> None:
    root = v1_tree(tmp_path, cgroup="4:memory:/jobs/agent\n1:cpu,cpuacct:/jobs/agent\n")
    for c in ("memory", "cpu,cpuacct"):
        os.makedirs(os.path.join(root, "sys/fs/cgroup", c, "jobs/agent"))
    assert detect_enforcement(root).tier == "cgroup-v1"
    # Only our own cgroup's directory is off limits, not the hierarchy's root.
    own = os.path.join(root, "sys/fs/cgroup", denied, "jobs/agent")
    monkeypatch.setattr(enforcement.os, "access", lambda path, mode: path != own)
    info = detect_enforcement(root)
    assert info.tier == "psutil" and info.writable is False


def test_nothing_mounted_is_psutil(tmp_path: Path) -> None:
    info = detect_enforcement(build(tmp_path))
    assert info.tier == "psutil" and info.cgroup_version is None and info.controllers == []
    assert "no cgroup hierarchy" in info.detail


def test_empty_root_is_psutil(tmp_path: Path) -> None:
    info = detect_enforcement(str(tmp_path / "missing"))
    assert info.tier == "psutil" and info.systemd_pid1 is False


def test_detection_bug_does_not_raise(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(root: str) -> list:
        raise RuntimeError("parser bug")

    monkeypatch.setattr(enforcement, "_mounts", boom)
    info = detect_enforcement(v1_tree(tmp_path))
    assert info.tier == "psutil" and "parser bug" in info.detail


def test_this_machine() -> None:
    # The CI machine: cgroup v1 with writable memory and cpu, systemd not PID 1.
    if os.path.exists("/sys/fs/cgroup/cgroup.controllers") or not os.access("/sys/fs/cgroup/memory", os.W_OK):
        pytest.skip("not the cgroup-v1 CI machine")
    with open("/proc/1/comm") as f:
        if f.read().strip() == "systemd":
            pytest.skip("systemd is PID 1 here")
    info = detect_enforcement()
    assert info.tier == "cgroup-v1" and info.cgroup_version == 1 and info.writable
    assert {"cpu", "memory"} <= set(info.controllers)
