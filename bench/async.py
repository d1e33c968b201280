"""Asynchronous inference: what a 202 costs, how fast a backlog drains beside the real-time path, and what a
draining backlog does to real time's latency. One agent process (as deployed: `agent.cli run`), the
flights model on endpoint `delays`, bodies of `--rows` real reference rows; the client is this process
(httpx, asyncio), on the same cores: read the figures as relative to each other.

1. commit: the durable commit a 202 waits for, in-process: a record appended to the queue's record file
   (agent/asyncinf/records.py) beside a DuckDB commit through the store writer (`StoreWriter.call`).
2. 202 latency: `--requests` submissions at `--concurrency` while the worker drains them.
3. drain: `--requests` queued while paused, then unpaused; requests/s and rows/s until the queue is empty,
   beside the real-time path at the same concurrency and the same bodies (closed loop, `--seconds`).
   The client shares the cores: agent CPU per request is the figure that does not depend on it.
4. real time: one caller, 4-row requests, `--seconds`: p50/p99 alone, then while a backlog of
   `--requests` drains (and how much of it drained meanwhile).

    .venv/bin/python bench/async.py [--requests 5000] [--rows 16] [--concurrency 16] [--seconds 5]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import orjson

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.serving import Procs, free_port, sample_records, serve_flights, tree_cpu_seconds, wait_ready  # noqa: E402

EP = "/api/v1/endpoints/delays"


def pct(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, int(q * len(s)))] if s else float("nan")


def commit_costs(n: int = 2000) -> dict[str, tuple[float, float]]:
    """(p50, p99) in ms of one durable commit: the record file vs the store writer."""
    import duckdb

    from agent.asyncinf.records import RecordFile
    from agent.store.writer import StoreWriter

    d = Path(tempfile.mkdtemp())
    rf = RecordFile(d / "queue.log")
    rec = ["s", "0123456789abcdef01234567", "delays", 0, 1, time.time(), "admin", None, 2048, 16]
    lat = []
    for i in range(n):
        rec[4] = i
        t = time.perf_counter()
        rf.append(rec)
        lat.append((time.perf_counter() - t) * 1000)
    rf.close()
    con = duckdb.connect(str(d / "x.duckdb"))
    con.execute("CREATE TABLE q (id VARCHAR, ep VARCHAR, prio INT, seq BIGINT, ts DOUBLE)")
    w = StoreWriter(con, flush_interval=5.0)
    w.start()
    wl = []
    for i in range(n // 4):
        t = time.perf_counter()
        w.call(lambda c, i=i: c.execute("INSERT INTO q VALUES (?, ?, ?, ?, ?)", [str(i), "delays", 0, i, 0.0]))
        wl.append((time.perf_counter() - t) * 1000)
    w.stop()
    return {"record file append": (pct(lat, 0.5), pct(lat, 0.99)), "StoreWriter.call": (pct(wl, 0.5), pct(wl, 0.99))}


async def submit_all(c: httpx.AsyncClient, body: bytes, n: int, conc: int, prefix: str) -> list[float]:
    lat: list[float] = []
    it = iter(range(n))

    async def one() -> None:
        for i in it:
            t = time.perf_counter()
            r = await c.post(f"{EP}/async", content=body, headers={"x-request-id": f"{prefix}{i}"})
            lat.append(time.perf_counter() - t)
            if r.status_code != 202:
                raise RuntimeError(f"submit: {r.status_code} {r.text[:200]}")

    await asyncio.gather(*(one() for _ in range(conc)))
    return lat


async def queue_stats(c: httpx.AsyncClient) -> dict[str, Any]:
    return (await c.get("/api/v1/serving")).json()["async_queues"].get("delays", {})


async def set_async(c: httpx.AsyncClient, **cfg: Any) -> None:
    cur = (await c.get(EP)).json()["config"]
    cur["asynchronous"] = {**cur["asynchronous"], **cfg}
    r = await c.put(EP, json=cur)
    if r.status_code != 200:
        raise RuntimeError(r.text)


async def drain(c: httpx.AsyncClient, done_before: int, n: int) -> float:
    t = time.perf_counter()
    while True:
        st = await queue_stats(c)
        if st.get("succeeded", 0) - done_before >= n and not st.get("queued") and not st.get("running"):
            return time.perf_counter() - t
        await asyncio.sleep(0.02)


async def realtime(c: httpx.AsyncClient, body: bytes, seconds: float, conc: int) -> list[float]:
    lat: list[float] = []
    end = time.perf_counter() + seconds

    async def one() -> None:
        while time.perf_counter() < end:
            t = time.perf_counter()
            r = await c.post(f"{EP}/predict", content=body)
            lat.append(time.perf_counter() - t)
            if r.status_code != 200:
                raise RuntimeError(f"predict: {r.status_code} {r.text[:200]}")

    await asyncio.gather(*(one() for _ in range(conc)))
    return lat


async def run(base: str, token: str, a: argparse.Namespace, pid: int) -> list[tuple[str, str]]:
    body = orjson.dumps({"records": sample_records(a.rows)})
    small = orjson.dumps({"records": sample_records(4)})
    hdr = {"Authorization": f"Bearer {token}", "content-type": "application/json"}
    limits = httpx.Limits(max_connections=a.concurrency + 4)
    out: list[tuple[str, str]] = []
    async with httpx.AsyncClient(base_url=base, headers=hdr, timeout=120, limits=limits) as c:
        await realtime(c, small, 1.0, 1)  # warm up
        # 2. 202 latency while draining
        done0 = (await queue_stats(c)).get("succeeded", 0)
        t = time.perf_counter()
        lat = await submit_all(c, body, a.requests, a.concurrency, "s")
        took = time.perf_counter() - t
        out.append((f"202 latency, {a.concurrency} callers, worker draining", f"p50 {pct(lat, .5) * 1e3:.2f} ms, "
                    f"p99 {pct(lat, .99) * 1e3:.2f} ms, {a.requests / took:,.0f} submissions/s"))  # fmt: skip
        await drain(c, done0, a.requests)
        # 2b. submissions alone (paused): what a 202 costs the agent
        await set_async(c, paused=True)
        cpu = tree_cpu_seconds(pid)
        t = time.perf_counter()
        lat = await submit_all(c, body, a.requests, a.concurrency, "p")
        took = time.perf_counter() - t
        cpu = (tree_cpu_seconds(pid) - cpu) / a.requests * 1000
        out.append((f"202 latency, {a.concurrency} callers, worker paused", f"p50 {pct(lat, .5) * 1e3:.2f} ms, "
                    f"p99 {pct(lat, .99) * 1e3:.2f} ms, {a.requests / took:,.0f} submissions/s; "
                    f"agent CPU {cpu:.2f} ms/submission"))  # fmt: skip
        done0 = (await queue_stats(c)).get("succeeded", 0)
        await set_async(c, paused=False)
        await drain(c, done0, a.requests)
        # 3. drain rate vs the real-time path
        await set_async(c, paused=True)
        await submit_all(c, body, a.requests, a.concurrency, "d")
        done0 = (await queue_stats(c)).get("succeeded", 0)
        cpu = tree_cpu_seconds(pid)
        await set_async(c, paused=False)
        took = await drain(c, done0, a.requests)
        cpu = (tree_cpu_seconds(pid) - cpu) / a.requests * 1000
        out.append((f"async drain, {a.rows} rows/request, idle agent",
                    f"{a.requests / took:,.0f} requests/s ({a.requests * a.rows / took:,.0f} rows/s); "
                    f"agent CPU {cpu:.2f} ms/request"))  # fmt: skip
        cpu = tree_cpu_seconds(pid)
        lat = await realtime(c, body, a.seconds, a.concurrency)
        n = len(lat)
        cpu = (tree_cpu_seconds(pid) - cpu) / n * 1000
        out.append((f"real-time predict, same bodies, {a.concurrency} callers",
                    f"{n / a.seconds:,.0f} requests/s ({n * a.rows / a.seconds:,.0f} rows/s); "
                    f"agent CPU {cpu:.2f} ms/request"))  # fmt: skip
        # 4. real time alone, then beside a draining backlog
        lat = await realtime(c, small, a.seconds, 1)
        out.append(("real time alone, 1 caller, 4 rows",
                    f"p50 {pct(lat, .5) * 1e3:.2f} ms, p99 {pct(lat, .99) * 1e3:.2f} ms"))  # fmt: skip
        await set_async(c, paused=True)
        await submit_all(c, body, a.requests, a.concurrency, "b")
        done0 = (await queue_stats(c)).get("succeeded", 0)
        await set_async(c, paused=False)
        lat = await realtime(c, small, a.seconds, 1)
        st = await queue_stats(c)
        drained = st.get("succeeded", 0) - done0
        out.append((f"real time beside a {a.requests:,}-request backlog", f"p50 {pct(lat, .5) * 1e3:.2f} ms, "
                    f"p99 {pct(lat, .99) * 1e3:.2f} ms; backlog drained meanwhile {drained / a.seconds:,.0f} "
                    f"requests/s, {st.get('queued', 0):,} still queued"))  # fmt: skip
        m = (await c.get("/metrics")).text
        yields = next((ln.split()[-1] for ln in m.splitlines() if ln.startswith("watchkeeper_async_yields_total")), "?")
        out.append(("worker yields to real time (whole run)", yields))
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=5000)
    ap.add_argument("--rows", type=int, default=16)
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--seconds", type=float, default=5.0)
    a = ap.parse_args()
    costs = commit_costs()
    procs = Procs()
    with tempfile.TemporaryDirectory() as tmp_s:
        tmp = Path(tmp_s)
        port = free_port()
        log = tmp / "agent.log"
        p = procs.start(
            [sys.executable, "-m", "agent.cli", "run", "--data-dir", str(tmp / "data"), "--listen",
             f"127.0.0.1:{port}", "--listen", f"unix:{tmp / 's.sock'}"],
            log, cwd=ROOT,
        )  # fmt: skip
        try:
            base = f"http://127.0.0.1:{port}"
            wait_ready(f"{base}/readyz", p, log)
            token = (tmp / "data" / "admin.token").read_text().strip()
            with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {token}"}, timeout=30) as c:
                serve_flights(c, {"asynchronous": {"capacity": 1_000_000, "batch_rows": 512}})
            rows = asyncio.run(run(base, token, a, p.pid))
        finally:
            procs.stop(p)
    print(f"\nasync inference, {os.cpu_count()} cores, flights model, {a.requests:,} requests x {a.rows} rows")
    table = [(f"durable commit: {k}", f"p50 {v[0]:.3f} ms, p99 {v[1]:.3f} ms") for k, v in costs.items()] + rows
    w = max(len(k) for k, _ in table)
    print(f"| {'measure'.ljust(w)} | result |\n| {'-' * w} | --- |")
    for k, v in table:
        print(f"| {k.ljust(w)} | {v} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
