"""Agent overhead beside Debian's prometheus-node-exporter, measured the same way in the same run.

Both run side by side for `--seconds` (default 60) and are scraped once a second (node_exporter only
collects when scraped; the agent samples on its own at 1 s and is scraped too, as Prometheus
would). CPU is user+system time from /proc over the measured window, as % of one core; peak RSS
is the kernel's VmHWM. Targets: agent <= 1 % of a core and <= 100 MiB.

    .venv/bin/python bench/agent_overhead.py [--seconds 60] [--gpus 0]
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import psutil

NODE_EXPORTER = "prometheus-node-exporter"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ensure_node_exporter() -> str | None:
    """Find Debian's node_exporter, installing the package if we may (root with apt)."""
    path = shutil.which(NODE_EXPORTER) or (
        f"/usr/bin/{NODE_EXPORTER}" if Path(f"/usr/bin/{NODE_EXPORTER}").exists() else None
    )
    if path or os.geteuid() != 0 or not shutil.which("apt-get"):
        return path
    print(f"installing {NODE_EXPORTER} from Debian ...", file=sys.stderr)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-qq"], env=env, check=False, capture_output=True)
    # --no-install-recommends and policy-rc.d: we only want the binary, not a started service.
    policy = Path("/usr/sbin/policy-rc.d")
    made_policy = not policy.exists()
    if made_policy:
        policy.write_text("#!/bin/sh\nexit 101\n")
        policy.chmod(0o755)
    try:
        subprocess.run(
            ["apt-get", "install", "-y", "-qq", "--no-install-recommends", NODE_EXPORTER],
            env=env,
            check=False,
            capture_output=True,
        )
    finally:
        if made_policy:
            policy.unlink()
    return shutil.which(NODE_EXPORTER)


@dataclass
class Measured:
    name: str
    cpu_percent: float
    peak_rss_mib: float
    end_rss_mib: float
    uss_mib: float
    scrapes_ok: int
    scrapes: int


def vm_hwm_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def cpu_seconds(p: psutil.Process) -> float:
    t = p.cpu_times()
    return t.user + t.system


def wait_http(url: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise TimeoutError(url)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=60)
    ap.add_argument("--warmup", type=float, default=5)
    ap.add_argument("--gpus", type=int, default=0, help="simulated GPUs for the agent (0: real NVML path)")
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="wk-bench-"))
    procs: dict[str, subprocess.Popen] = {}
    urls: dict[str, str] = {}
    try:
        port = free_port()
        cmd = [
            sys.executable,
            "-m",
            "agent.cli",
            "run",
            "--data-dir",
            str(tmp / "agent"),
            "--listen",
            f"127.0.0.1:{port}",
            "--listen",
            f"unix:{tmp / 'agent.sock'}",
            "--sample-interval",
            "1",
        ]
        if args.gpus:
            cmd += ["--simulate-gpus", str(args.gpus)]
        procs["watchkeeper-agent"] = subprocess.Popen(
            cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
        )
        urls["watchkeeper-agent"] = f"http://127.0.0.1:{port}/metrics"
        ne = ensure_node_exporter()
        if ne:
            ne_port = free_port()
            procs["node_exporter"] = subprocess.Popen(
                [ne, f"--web.listen-address=127.0.0.1:{ne_port}"],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
            )
            urls["node_exporter"] = f"http://127.0.0.1:{ne_port}/metrics"
        else:
            print(f"{NODE_EXPORTER} not available: measuring the agent alone", file=sys.stderr)
        for u in urls.values():
            wait_http(u)
        time.sleep(args.warmup)  # imports and first-sample costs are start-up, not steady state

        ps = {n: psutil.Process(p.pid) for n, p in procs.items()}
        cpu0 = {n: cpu_seconds(p) for n, p in ps.items()}
        ok = dict.fromkeys(procs, 0)
        total = dict.fromkeys(procs, 0)
        t0 = time.monotonic()
        with httpx.Client(timeout=5) as client:
            next_at = t0
            while time.monotonic() - t0 < args.seconds:
                for n, u in urls.items():
                    total[n] += 1
                    try:
                        ok[n] += client.get(u).status_code == 200
                    except httpx.HTTPError:
                        pass
                next_at += 1.0
                time.sleep(max(0.0, next_at - time.monotonic()))
        wall = time.monotonic() - t0
        results = [
            Measured(
                n,
                100 * (cpu_seconds(p) - cpu0[n]) / wall,
                vm_hwm_mib(p.pid),
                p.memory_info().rss / 2**20,
                p.memory_full_info().uss / 2**20,
                ok[n],
                total[n],
            )
            for n, p in ps.items()
        ]
    finally:
        for p in procs.values():
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)
        for p in procs.values():
            try:
                p.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
        shutil.rmtree(tmp, ignore_errors=True)

    print(
        f"\nAgent overhead, {args.seconds:.0f} s at 1 s sampling, scraped every 1 s "
        f"({os.cpu_count()} cores, {'simulated GPUs: ' + str(args.gpus) if args.gpus else 'no GPU'})\n"
    )
    hdr = (
        f"{'process':<22} {'CPU % of 1 core':>16} {'peak RSS MiB':>13} {'RSS MiB at end':>15} "
        f"{'private MiB':>12} {'scrapes ok':>11}"
    )
    print(hdr)
    print("-" * len(hdr))
    for m in results:
        print(
            f"{m.name:<22} {m.cpu_percent:>16.2f} {m.peak_rss_mib:>13.1f} {m.end_rss_mib:>15.1f} "
            f"{m.uss_mib:>12.1f} {m.scrapes_ok:>5}/{m.scrapes:<5}"
        )
    by = {m.name: m for m in results}
    if "node_exporter" in by:
        a, n = by["watchkeeper-agent"], by["node_exporter"]
        print(
            f"{'agent / node_exporter':<22} {a.cpu_percent / max(n.cpu_percent, 1e-9):>15.2f}x "
            f"{a.peak_rss_mib / n.peak_rss_mib:>12.2f}x {a.end_rss_mib / n.end_rss_mib:>14.2f}x "
            f"{a.uss_mib / n.uss_mib:>11.2f}x"
        )
    a = by["watchkeeper-agent"]
    verdict = "PASS" if a.cpu_percent <= 1.0 and a.peak_rss_mib <= 100 else "MISS"
    print(f"\ntarget: agent <= 1.00 % of a core and <= 100 MiB peak RSS -> {verdict}")
    print("(private = USS: memory only this process holds; RSS also counts shared library code pages)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
