"""Which resource-enforcement tier this host can offer jobs: systemd, cgroup v2, cgroup v1 or psutil.

Only looks; creates nothing. `root` lets tests point it at a fake tree. Writability combines the
mount's rw/ro flag (Docker mounts /sys/fs/cgroup read-only) with access(2) on our own cgroup.
"""

from __future__ import annotations

import os

from agent.schemas import EnforcementInfo

CGROUP_MOUNT = "sys/fs/cgroup"
_REQUIRED = ("cpu", "memory")
_V1_CONTROLLERS = frozenset(
    {
        "blkio",
        "cpu",
        "cpuacct",
        "cpuset",
        "devices",
        "freezer",
        "hugetlb",
        "memory",
        "misc",
        "net_cls",
        "net_prio",
        "perf_event",
        "pids",
        "rdma",
    }
)


def detect_enforcement(root: str = "/") -> EnforcementInfo:
    """Describe the best enforcement tier available under `root`. Never raises."""
    try:
        return _detect(root)
    except Exception as exc:  # a detection bug must not keep the agent from starting
        return EnforcementInfo(tier="psutil", detail=f"detection failed: {exc!r}")


def _path(root: str, *parts: str) -> str:
    return os.path.join(root, *(p.lstrip("/") for p in parts))


def _read(path: str) -> str | None:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read()
    except OSError:
        return None


def _mounts(root: str) -> list[tuple[str, str, set[str]]]:
    """(mountpoint, fstype, options) for each line of the mount table."""
    text = _read(_path(root, "proc/self/mounts")) or _read(_path(root, "proc/mounts")) or ""
    out = []
    for line in text.splitlines():
        fields = line.split()
        if len(fields) >= 4:
            # The kernel escapes spaces in mount points as \040.
            out.append((fields[1].replace("\\040", " "), fields[2], set(fields[3].split(","))))
    return out


def _own_cgroups(root: str) -> dict[str, str]:
    """Our cgroup path per hierarchy: controller name (v1) or "" (v2) -> path."""
    out: dict[str, str] = {}
    for line in (_read(_path(root, "proc/self/cgroup")) or "").splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, path = parts
        if not controllers:
            out[""] = path
        for c in controllers.split(","):
            out[c.removeprefix("name=")] = path
    return out


def _writable_dir(path: str) -> bool:
    return os.path.isdir(path) and os.access(path, os.W_OK | os.X_OK)


def _detect(root: str) -> EnforcementInfo:
    comm = (_read(_path(root, "proc/1/comm")) or "").strip()
    systemd_pid1 = comm == "systemd" and os.path.isdir(_path(root, "run/systemd/system"))
    mounts = _mounts(root)
    own = _own_cgroups(root)

    cgroup_version = None
    controllers: list[str] = []
    writable = False
    detail = ""

    unified = _path(root, CGROUP_MOUNT, "cgroup.controllers")
    if os.path.isfile(unified):
        cgroup_version = 2
        mount_rw = any(mp == "/" + CGROUP_MOUNT and fs == "cgroup2" and "rw" in opts for mp, fs, opts in mounts)
        # Delegation shows in our own cgroup's cgroup.controllers: what we may hand to children.
        own_dir = _path(root, CGROUP_MOUNT, own.get("", "/"))
        listed = _read(os.path.join(own_dir, "cgroup.controllers"))
        if listed is None:
            own_dir = _path(root, CGROUP_MOUNT)
            listed = _read(unified) or ""
        controllers = sorted(listed.split())
        writable = (
            mount_rw and _writable_dir(own_dir) and os.access(os.path.join(own_dir, "cgroup.subtree_control"), os.W_OK)
        )
        detail = f"cgroup v2 at {own_dir.removeprefix(root.rstrip('/')) or '/'}"
    else:
        hierarchies: dict[str, tuple[str, bool]] = {}  # controller -> (mountpoint, rw)
        for mp, fs, opts in mounts:
            if fs != "cgroup":
                continue
            for c in opts & _V1_CONTROLLERS:
                hierarchies[c] = (mp, "rw" in opts)
        if hierarchies:
            cgroup_version = 1
            controllers = sorted(hierarchies)
            writable = all(c in hierarchies for c in _REQUIRED)
            for c in _REQUIRED:
                if c not in hierarchies:
                    continue
                mp, rw = hierarchies[c]
                own_dir = _path(root, mp, own.get(c, "/"))
                if not os.path.isdir(own_dir):  # cgroup namespace: our cgroup is the mount root
                    own_dir = _path(root, mp)
                writable = writable and rw and _writable_dir(own_dir)
            detail = "cgroup v1 (" + ", ".join(controllers) + ")"

    has_required = all(c in controllers for c in _REQUIRED)
    if systemd_pid1:
        tier = "systemd"
    elif cgroup_version == 2 and writable and has_required:
        tier = "cgroup-v2"
    elif cgroup_version == 1 and writable and has_required:
        tier = "cgroup-v1"
    else:
        tier = "psutil"

    notes = ["systemd is PID 1" if systemd_pid1 else f"PID 1 is {comm or 'unknown'}"]
    if cgroup_version is None:
        notes.append("no cgroup hierarchy found")
    else:
        missing = [c for c in _REQUIRED if c not in controllers]
        state = "writable" if writable else "not writable"
        notes.append(f"{detail}, {state}" + (f", missing {', '.join(missing)}" if missing else ""))
    return EnforcementInfo(
        tier=tier,
        cgroup_version=cgroup_version,
        systemd_pid1=systemd_pid1,
        controllers=controllers,
        writable=writable,
        detail="; ".join(notes),
    )
