"""Job submission against a real agent: submit latency, submits/s, submit -> RUNNING, and the group commit.

Starts one agent (own data dir, psutil or whichever tier the host offers), then:

    submits/s     `--threads` client threads POST held jobs (hold=true: queued, committed, never launched) for
                  `--seconds`: every 201 is committed (the job row and its audit entry) before the answer.
    submit p50/p99  the latency of those POSTs as the client saw it.
    -> RUNNING    `--running` jobs (`sleep 5`, cpu 0.01), submitted one after another 50 ms apart:
                  the job's own started_at - submitted_at (the agent's clock: launch recorded, wrapper
                  spawned, handle committed) and the client's POST -> GET says RUNNING.
    commits       job-row commits against job rows committed (from /metrics): rows per commit is the
                  group commit's batching.
    agent CPU     the agent process's CPU over `--idle-seconds`, idle and with `--idle-jobs` jobs running
                  (`sleep`): what watching and sampling them costs.

    .venv/bin/python bench/jobs_submit.py [--seconds 5] [--threads 8] [--running 30] [--tier psutil]
"""

from __future__ import annotations

import argparse
import re
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.agentproc import make_agent


def _pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(p * len(xs)))] if xs else float("nan")


def _metric(text: str, name: str) -> float:
    m = re.search(rf"^{name} ([0-9.e+]+)$", text, re.M)
    return float(m.group(1)) if m else 0.0


def _cpu_over(proc: psutil.Process, seconds: float) -> float:
    """The agent's CPU over `seconds`, in cores."""
    c0 = sum(proc.cpu_times()[:2])
    time.sleep(seconds)
    return (sum(proc.cpu_times()[:2]) - c0) / seconds


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--threads", type=int, default=8)
    ap.add_argument("--running", type=int, default=30)
    ap.add_argument("--idle-jobs", type=int, default=50, help="jobs running while the agent's CPU is measured")
    ap.add_argument("--idle-seconds", type=float, default=10.0)
    ap.add_argument("--tier", default="auto", help="[jobs] tier: auto, or force one (psutil, cgroup-v1, ...)")
    args = ap.parse_args()
    base = Path(tempfile.mkdtemp(prefix="wk-jobs-bench-"))
    config = None if args.tier == "auto" else f'[jobs]\ntier = "{args.tier}"\n'
    agent = make_agent(base, name="bench", sample_interval=1.0, config=config).start()  # 1 s: the default
    try:
        lat: list[float] = []
        lock = threading.Lock()
        stop = time.monotonic() + args.seconds

        def worker() -> None:
            with agent.client() as c:
                while time.monotonic() < stop:
                    t0 = time.perf_counter()
                    r = c.post("/api/v1/jobs", json={"pipeline": "bench", "command": ["true"], "hold": True})
                    dt = time.perf_counter() - t0
                    if r.status_code != 201:
                        raise SystemExit(f"submit failed: {r.status_code} {r.text}")
                    with lock:
                        lat.append(dt)

        m0 = httpx.get(f"{agent.url}/metrics").text
        proc = psutil.Process(agent.proc.pid)
        cpu0 = sum(proc.cpu_times()[:2])
        t0 = time.perf_counter()
        threads = [threading.Thread(target=worker) for _ in range(args.threads)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.perf_counter() - t0
        agent_cpu = sum(proc.cpu_times()[:2]) - cpu0
        m1 = httpx.get(f"{agent.url}/metrics").text
        commits = _metric(m1, "watchkeeper_jobs_store_commits_total") - _metric(
            m0, "watchkeeper_jobs_store_commits_total"
        )
        rows = _metric(m1, "watchkeeper_jobs_store_rows_total") - _metric(m0, "watchkeeper_jobs_store_rows_total")

        agent_side: list[float] = []
        client_side: list[float] = []
        with agent.client() as c:
            for _ in range(args.running):
                t_sub = time.perf_counter()
                r = c.post("/api/v1/jobs", json={"pipeline": "run", "command": ["sleep", "5"], "cpu": 0.01,
                                                 "mem": "8M"})  # fmt: skip
                jid = r.json()["id"]
                while True:
                    j = c.get(f"/api/v1/jobs/{jid}").json()
                    if j["state"] != "PENDING":
                        break
                    time.sleep(0.01)  # polling harder would take the CPU the agent needs
                client_side.append(time.perf_counter() - t_sub)
                agent_side.append(j["started_at"] - j["submitted_at"])
                time.sleep(0.05)
            for j in c.get("/api/v1/jobs", params={"pipeline": "run", "limit": 1000}).json()["jobs"]:
                c.post(f"/api/v1/jobs/{j['id']}/cancel", json={})
            for j in c.get("/api/v1/jobs", params={"state": "PENDING", "limit": 10000}).json()["jobs"]:
                c.post(f"/api/v1/jobs/{j['id']}/cancel", json={})  # the held ones: the queue is empty again
            idle = _cpu_over(proc, args.idle_seconds)
            ids = []
            for _ in range(args.idle_jobs):
                r = c.post("/api/v1/jobs", json={"pipeline": "idle", "command": ["sleep", "600"], "cpu": 0.01,
                                                 "mem": "8M"})  # fmt: skip
                ids.append(r.json()["id"])
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                states = [c.get(f"/api/v1/jobs/{i}").json()["state"] for i in ids]
                if all(s == "RUNNING" for s in states):
                    break
                time.sleep(0.5)
            time.sleep(2)
            busy = _cpu_over(proc, args.idle_seconds)
            tier = c.get("/api/v1/quotas").json()["tier"]
            for i in ids:
                c.post(f"/api/v1/jobs/{i}/cancel", json={})
        print(f"{'measure':<34} {'value':>12}")
        print(f"{'submits/s (' + str(args.threads) + ' threads, held jobs)':<34} {len(lat) / wall:>12.0f}")
        print(f"{'submit p50 ms':<34} {statistics.median(lat) * 1e3:>12.1f}")
        print(f"{'submit p99 ms':<34} {_pct(lat, 0.99) * 1e3:>12.1f}")
        print(f"{'agent CPU ms per submit':<34} {agent_cpu / len(lat) * 1e3:>12.2f}")
        print(f"{'job rows per commit':<34} {rows / commits if commits else float('nan'):>12.2f}")
        print(f"{'commits/s':<34} {commits / wall:>12.0f}")
        print(f"{'submit->RUNNING p50 ms (agent)':<34} {statistics.median(agent_side) * 1e3:>12.1f}")
        print(f"{'submit->RUNNING p99 ms (agent)':<34} {_pct(agent_side, 0.99) * 1e3:>12.1f}")
        print(f"{'POST->sees RUNNING p50 ms (client)':<34} {statistics.median(client_side) * 1e3:>12.1f}")
        print(f"{'agent CPU idle, % of a core':<34} {100 * idle:>12.1f}")
        print(f"{f'agent CPU, {args.idle_jobs} jobs running ({tier}) %':<34} {100 * busy:>12.1f}")
    finally:
        agent.stop()


if __name__ == "__main__":
    main()
