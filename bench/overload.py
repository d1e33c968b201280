"""Overload: what the agent's predict path gives callers at 1x, 4x and 10x of its capacity, and its memory.

The agent runs as deployed (`agent.cli run`, its own process), serving sample_data/flights/model.onnx on
endpoint `delays` (imputation, stats and the prediction log on; `timeout_ms` 1000 by default; no fallback,
so a shed request is a 429 - `--fallback` configures one, then sheds are marked fallback answers). The
client is a separate process: an asyncio HTTP/1.1 client on raw sockets (uvloop when installed) sending
single-row requests built from real reference rows.

1. Capacity: closed loop, `--capacity-conns` connections (default 32), `--capacity-seconds`: 200s/s.
2. Each level offers a multiple of that rate, open loop, for `--seconds` (default 10): requests are due at
   fixed intervals whether or not earlier ones were answered (so a stall is charged to every request due
   during it - no coordinated omission). A due request takes an idle connection, or opens one (up to
   `--max-conns`, default 512); beyond that it waits in the client, its clock running. A caller gives up
   `--patience` x timeout after it was due (default 5 s) and closes the connection.
3. `--conns N`: a closed-loop level of N connections with no think time (the issue's 256-connection case).
4. `--large`: 32 connections sending ~1 MiB bodies (5,000 rows) in a closed loop: memory with large bodies.

Columns: offered/s (and what the client managed to send), goodput/s = 200 answers with a model prediction
received within timeout_ms of being due, p99 of those answers from when they were due (late ones included)
and from when they were written to the socket ("wire": the part the agent could see), the agent's own p99
over the level (it must see the queueing the client saw), shed = 429 or a fallback answer, late = answered
after timeout_ms of being due or not at all, peak RSS of the agent (sampled every 50 ms), and how late the
client's own loop ran (a busy client would blame the agent). The machine's cores are shared by the agent
and the client: read the figures beside the client lag.

Target: at every level the agent's answers come within the caller's timeout once it has the request (p99
wire <= timeout_ms; the 1 MiB level counts for memory only: one such request takes about the timeout here) and
peak RSS stays under 512 MiB (deploy/watchkeeper-agent.service MemoryMax).

    .venv/bin/python bench/overload.py [--seconds 10] [--levels 1,4,10] [--conns 256] [--large] [--fallback]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from pathlib import Path
from typing import Any

import httpx
import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.serving import Procs, free_port, sample_records, serve_flights, wait_ready  # noqa: E402

PATH = "/api/v1/endpoints/delays/predict"
MEMORY_MAX_MIB = 512


# --------------------------------------------------------------------------- the client (child process)


class _Conn(asyncio.Protocol):
    """One keep-alive connection; one request at a time; calls `done(status, fallback)` per answer."""

    def __init__(self, client: _Client) -> None:
        self.client = client
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.busy: tuple[float, float] | None = None  # (due, sent) of the request in flight
        self.fresh = True  # no answer yet on this connection: its first request also waited for the accept
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.client.connected(self)

    def data_received(self, data: bytes) -> None:
        self.buf += data
        end = self.buf.find(b"\r\n\r\n")
        if end < 0:
            return
        head = bytes(self.buf[:end]).lower()
        length = 0
        for line in head.split(b"\r\n")[1:]:
            if line.startswith(b"content-length:"):
                length = int(line[15:])
        if len(self.buf) < end + 4 + length:
            return
        status = int(head[9:12])
        del self.buf[: end + 4 + length]
        due, sent = self.busy or (time.perf_counter(),) * 2
        self.busy = None
        self.client.answered(self, due, sent, status, b"x-watchkeeper-fallback" in head)
        self.fresh = False

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.client.lost(self)


class _Client:
    def __init__(self, port: int, bodies: list[bytes], token: str, timeout_s: float, patience_s: float) -> None:
        self.port = port
        self.reqs = [
            (f"POST {PATH} HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\n"
             f"Content-Length: {len(b)}\r\n\r\n").encode() + b
            for b in bodies
        ]  # fmt: skip
        self.timeout_s, self.patience_s = timeout_s, patience_s
        self.i = 0
        self.idle: list[_Conn] = []
        self.conns: set[_Conn] = set()
        self.opening = 0
        self.waiting: deque[float] = deque()  # due times of requests with no connection yet (oldest first)
        self.lat: list[float] = []  # every 200 answer's latency (s) from when it was due, late ones included
        self.wire: list[float] = []  # the same from when it was written to the socket (what the agent could see)
        self.counts = {"sent": 0, "good": 0, "ok_late": 0, "shed": 0, "other": 0, "gave_up": 0, "conn_errors": 0,
                       "slow_first": 0, "slow_reused": 0}  # fmt: skip
        self.closed_loop = False

    def send(self, conn: _Conn, due: float) -> None:
        self.i = (self.i + 1) % len(self.reqs)
        conn.busy = (due, time.perf_counter())
        assert conn.transport is not None
        conn.transport.write(self.reqs[self.i])
        self.counts["sent"] += 1

    def connected(self, conn: _Conn) -> None:
        self.opening -= 1
        self.conns.add(conn)
        self.free(conn)

    def free(self, conn: _Conn) -> None:
        if self.closed_loop:
            self.send(conn, time.perf_counter())
        elif self.waiting:
            self.send(conn, self.waiting.popleft())
        else:
            self.idle.append(conn)

    def answered(self, conn: _Conn, due: float, sent: float, status: int, fallback: bool) -> None:
        now = time.perf_counter()
        lat = now - due
        if status == 200 and not fallback:
            self.lat.append(lat)
            self.wire.append(now - sent)
            if now - sent > self.timeout_s:  # where the wait was: a new connection's first request, or not
                self.counts["slow_first" if conn.fresh else "slow_reused"] += 1
            self.counts["good" if lat <= self.timeout_s else "ok_late"] += 1
        elif status == 429 or (status == 200 and fallback):
            self.counts["shed"] += 1
        else:
            self.counts["other"] += 1
        self.free(conn)

    def lost(self, conn: _Conn) -> None:
        self.conns.discard(conn)
        if conn in self.idle:
            self.idle.remove(conn)
        if conn.busy is not None:
            self.counts["gave_up"] += 1

    async def open(self) -> None:
        self.opening += 1
        try:
            await asyncio.get_running_loop().create_connection(lambda: _Conn(self), "127.0.0.1", self.port)
        except OSError:
            self.opening -= 1
            self.counts["conn_errors"] += 1

    def reap(self, now: float) -> None:
        """Callers give up `patience` after their request was due: the connection is closed."""
        cut = now - self.patience_s
        while self.waiting and self.waiting[0] < cut:
            self.waiting.popleft()
            self.counts["gave_up"] += 1
        for c in list(self.conns):
            if c.busy is not None and c.busy[0] < cut and c.transport is not None:
                c.transport.abort()


async def _client_main(a: dict) -> dict:
    cl = _Client(a["port"], [b.encode() for b in a["bodies"]], a["token"], a["timeout_s"], a["patience_s"])
    loop = asyncio.get_running_loop()
    t_end = time.perf_counter() + a["seconds"]
    lags: list[float] = []  # how late the client's own loop ran: a busy client would blame the agent
    if a["mode"] == "closed":
        cl.closed_loop = True
        await asyncio.gather(*(cl.open() for _ in range(a["conns"])))
        while time.perf_counter() < t_end:
            await asyncio.sleep(0.05)
            cl.reap(time.perf_counter())
        cl.closed_loop = False
    else:
        rate, max_conns = a["rate"], a["max_conns"]
        opening: set[asyncio.Task] = set()
        t_start = time.perf_counter()
        issued = 0
        while (now := time.perf_counter()) < t_end:
            due_n = int((now - t_start) * rate)
            while issued < due_n:
                due = t_start + issued / rate
                issued += 1
                if cl.idle:
                    cl.send(cl.idle.pop(), due)
                else:
                    cl.waiting.append(due)
                    if len(cl.conns) + cl.opening < max_conns:
                        task = loop.create_task(cl.open())
                        opening.add(task)
                        task.add_done_callback(opening.discard)
            cl.reap(now)
            await asyncio.sleep(0.0005)
            lags.append(time.perf_counter() - now - 0.0005)
        cl.counts["offered"] = issued
    # Answers still on their way count for the requests already sent; then whatever is left gave up.
    wait_end = time.perf_counter() + a["patience_s"]
    while any(c.busy for c in cl.conns) and time.perf_counter() < wait_end:
        await asyncio.sleep(0.02)
        cl.reap(time.perf_counter())
    cl.counts["gave_up"] += len(cl.waiting) + sum(1 for c in cl.conns if c.busy)
    for c in list(cl.conns):
        if c.transport is not None:
            c.transport.abort()
    cl.counts.setdefault("offered", cl.counts["sent"])
    lags.sort()
    lag99 = lags[int(0.99 * len(lags))] if lags else None
    return {"counts": cl.counts, "lat": sorted(cl.lat), "wire": sorted(cl.wire), "client_lag_p99": lag99}


def client_child(arg: str) -> int:
    a = json.loads(Path(arg).read_text())
    try:
        import uvloop

        res = uvloop.run(_client_main(a))
    except ImportError:
        res = asyncio.run(_client_main(a))
    Path(a["out"]).write_text(json.dumps(res))
    return 0


# --------------------------------------------------------------------------- the bench (parent)


class RssPeak:
    """The agent's resident memory, sampled every 50 ms on a thread; `peak()` since the last `reset()`."""

    def __init__(self, pid: int) -> None:
        self.proc = psutil.Process(pid)
        self._peak = 0
        self._stop = threading.Event()
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            try:
                self._peak = max(self._peak, self.proc.memory_info().rss)
            except psutil.Error:
                return

    def reset(self) -> None:
        self._peak = self.proc.memory_info().rss

    def peak_mib(self) -> float:
        return max(self._peak, self.proc.memory_info().rss) / 2**20

    def stop(self) -> None:
        self._stop.set()


def run_client(tmp: Path, args: dict) -> dict:
    f = tmp / "client.json"
    res = tmp / "client.out.json"
    res.unlink(missing_ok=True)
    f.write_text(json.dumps({**args, "out": str(res)}))
    out = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), "--child-client", str(f)],
        capture_output=True, text=True, timeout=args["seconds"] + 3 * args["patience_s"] + 60, cwd=ROOT,
    )  # fmt: skip
    if out.returncode != 0:
        raise RuntimeError(f"client failed: {out.stderr[-600:]}")
    return json.loads(res.read_text())


def pct(xs: list[float], q: float) -> float:
    return xs[min(len(xs) - 1, int(q * len(xs)))] if xs else float("nan")


_BUCKET = re.compile(r"^bentoml_service_request_duration_seconds_bucket\{(.*?)\} (\S+)$", re.M)


def latency_buckets(c: httpx.Client) -> dict[float, float]:
    """The agent's latency histogram of endpoint `delays` (cumulative count per upper bound, seconds)."""
    out: dict[float, float] = {}
    for labels, v in _BUCKET.findall(c.get("/metrics").text):
        if 'endpoint="delays"' in labels:
            le = re.search(r'le="([^"]+)"', labels).group(1)  # type: ignore[union-attr]
            out[float(le)] = out.get(float(le), 0.0) + float(v)
    return out


def agent_view(before: dict[float, float], after: dict[float, float], timeout_s: float) -> tuple[float | None, int]:
    """The agent's own p99 over a level (ms, the upper bound of its histogram bucket), and how many requests it
    recorded as slower than the timeout."""
    diff = sorted((le, after.get(le, 0.0) - before.get(le, 0.0)) for le in after)
    total = diff[-1][1] if diff else 0
    if not total:
        return None, 0
    within = max((n for le, n in diff if le <= timeout_s), default=0.0)
    return next(le * 1000 for le, n in diff if n >= 0.99 * total), int(total - within)


def setup_agent(
    procs: Procs, tmp: Path, fallback: bool, timeout_ms: float, log_rate: float = 1.0
) -> tuple[Any, int, str]:
    port = free_port()
    log = tmp / "agent.log"
    p = procs.start(
        [sys.executable, "-m", "agent.cli", "run", "--data-dir", str(tmp / "data"), "--listen", f"127.0.0.1:{port}",
         "--listen", f"unix:{tmp / 's.sock'}"],
        log, cwd=ROOT,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    wait_ready(f"{base}/readyz", p, log)
    token = (tmp / "data" / "admin.token").read_text().strip()
    with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {token}"}, timeout=30) as c:
        cfg: dict[str, Any] = {"timeout_ms": timeout_ms, "log_sample_rate": log_rate}
        if fallback:
            cfg["fallback"] = {"score": 0.2, "label": "on_time"}
        serve_flights(c, cfg)
    return p, port, token


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=float, default=10.0, help="per level")
    ap.add_argument("--levels", default="1,4,10", help="multiples of the measured capacity, open loop")
    ap.add_argument("--conns", default="256", help="closed-loop levels: connections (comma-separated; '' for none)")
    ap.add_argument("--large", action="store_true", help="also 32 connections sending ~1 MiB bodies")
    ap.add_argument("--fallback", action="store_true", help="the endpoint has a fallback (sheds answer it)")
    ap.add_argument("--log-sample-rate", type=float, default=1.0, help="the endpoint's prediction-log share")
    ap.add_argument("--timeout-ms", type=float, default=1000.0)
    ap.add_argument("--patience", type=float, default=5.0, help="callers give up after this x timeout")
    ap.add_argument("--capacity-conns", type=int, default=32)
    ap.add_argument("--capacity-seconds", type=float, default=4.0)
    ap.add_argument("--max-conns", type=int, default=512)
    ap.add_argument("--child-client", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child_client:
        return client_child(args.child_client)

    procs = Procs()
    timeout_s = args.timeout_ms / 1000
    bodies = [json.dumps({"records": [r]}) for r in sample_records(16)]
    # ~1 MiB bodies (the default max_payload_bytes is 1 MiB): as many real rows as fit.
    big = sample_records(200)
    n_big = int(1_000_000 / len(json.dumps(big)) * len(big))
    large = [json.dumps({"records": (big * (n_big // len(big) + 1))[:n_big]})] if args.large else []
    rows: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="wk-overload-") as td:
        tmp = Path(td)
        try:
            p, port, token = setup_agent(procs, tmp, args.fallback, args.timeout_ms, args.log_sample_rate)
            rss = RssPeak(p.pid)
            fresh = rss.peak_mib()
            common = {"port": port, "token": token, "timeout_s": timeout_s, "patience_s": args.patience * timeout_s}
            c = httpx.Client(base_url=f"http://127.0.0.1:{port}", headers={"Authorization": f"Bearer {token}"})
            run_client(tmp, {**common, "mode": "closed", "conns": 4, "seconds": 1.0, "bodies": bodies})  # warm-up
            print("measuring capacity ...", file=sys.stderr)
            cap = run_client(tmp, {**common, "mode": "closed", "conns": args.capacity_conns,
                                   "seconds": args.capacity_seconds, "bodies": bodies})  # fmt: skip
            capacity = cap["counts"]["good"] / args.capacity_seconds
            plan: list[tuple[str, dict]] = []
            for m in [float(x) for x in args.levels.split(",") if x]:
                plan.append((f"{m:g}x open", {"mode": "open", "rate": m * capacity, "max_conns": args.max_conns,
                                              "bodies": bodies, "mult": m}))  # fmt: skip
            for n in [int(x) for x in args.conns.split(",") if x]:
                plan.append((f"{n} conns", {"mode": "closed", "conns": n, "bodies": bodies}))
            if large:
                plan.append(("32 x 1 MiB", {"mode": "closed", "conns": 32, "bodies": large, "large": True}))
            for label, spec in plan:
                print(f"measuring {label} ...", file=sys.stderr)
                time.sleep(1.0)  # the previous level's stragglers leave; the agent's 60 s window moves on
                rss.reset()
                before = latency_buckets(c)
                res = run_client(tmp, {**common, **spec, "seconds": args.seconds})
                n = res["counts"]
                rows.append({"label": label, "spec": spec, **n, "lat": res["lat"], "wire": res["wire"],
                             "rss": rss.peak_mib(), "agent": agent_view(before, latency_buckets(c), timeout_s),
                             "client_lag": res["client_lag_p99"]})  # fmt: skip
            final_rss = rss.peak_mib()
            rss.stop()
            c.close()
        finally:
            procs.stop_all()

    print(
        f"\nOverload, agent serving flights on one endpoint (timeout_ms {args.timeout_ms:g}, "
        f"{'fallback' if args.fallback else 'no fallback: shed = 429'}), {args.seconds:g} s per level, "
        f"{os.cpu_count()} cores, client in its own process\n"
        f"capacity (closed loop, {args.capacity_conns} conns): {capacity:,.0f} req/s; agent RSS fresh {fresh:.0f} MiB\n"
    )
    hdr = (
        f"{'level':<12} {'offered/s':>10} {'sent/s':>9} {'goodput/s':>10} {'p99 ms':>8} {'p99 wire':>9} "
        f"{'max wire':>9} {'agent p99<=':>11} {'agent late':>10} {'shed %':>7} {'late %':>7} {'other':>6} "
        f"{'peak RSS MiB':>12} {'client lag':>10} {'wire>T new/reused':>17}"
    )
    print(hdr)
    print("-" * len(hdr))
    verdict = True
    for r in rows:
        secs = args.seconds
        offered = max(r["offered"], 1)
        late = r["ok_late"] + r["gave_up"]
        wire = r["wire"]
        p99w = pct(wire, 0.99) * 1000
        ap99, agent_late = r["agent"]
        lag = r["client_lag"]
        print(
            f"{r['label']:<12} {r['offered'] / secs:>10,.0f} {r['sent'] / secs:>9,.0f} {r['good'] / secs:>10,.0f} "
            f"{pct(r['lat'], 0.99) * 1000:>8.0f} {p99w:>9.0f} {(wire[-1] if wire else float('nan')) * 1000:>9.0f} "
            f"{ap99 if ap99 is not None else float('nan'):>11g} {agent_late:>10} {100 * r['shed'] / offered:>7.1f} "
            f"{100 * late / offered:>7.1f} {r['other'] + r['conn_errors']:>6} {r['rss']:>12.0f} "
            f"{'' if lag is None else format(lag * 1000, '.0f') + ' ms':>10} "
            f"{str(r['slow_first']) + '/' + str(r['slow_reused']):>17}"
        )
        # What the agent answers, it answers within the caller's timeout once it has the request; memory bounded.
        # (The 1 MiB level is there for memory: a 4,000-row request alone takes about the timeout here.)
        in_time = not wire or p99w <= args.timeout_ms or r["spec"].get("large", False)
        verdict = verdict and in_time and r["rss"] < MEMORY_MAX_MIB
    print(
        "\ngoodput = 200s with a model prediction within timeout_ms of being due; p99 = of those 200s from when they "
        "were due (the caller's wait, late ones included);\np99/max wire = the same from when the request was written "
        "to the socket; agent p99<= = the agent's own figure over the level (ms, its /metrics bucket);\nagent late = "
        "requests the agent itself saw take longer than timeout_ms; shed = 429 or fallback; late = answered after "
        "timeout_ms of being due, or never;\nother = other statuses and connection errors; client lag = p99 of how "
        "late the open-loop client's own loop ran (large: the client is the limit).\nRequests that find every "
        "connection busy wait in the client (up to --max-conns connections): that wait is in p99 and late %, not in "
        "p99 wire.\nwire>T new/reused = answers slower than timeout_ms on the wire: first request of a new connection "
        "(it also waited for the agent to accept it) / on a connection already in use."
    )
    print(f"agent peak RSS over the run: {final_rss:.0f} MiB (MemoryMax {MEMORY_MAX_MIB} MiB)")
    print(
        f"\ntarget: at every level the agent's answers come within timeout_ms (p99 wire <= {args.timeout_ms:g} ms; "
        f"the 1 MiB level: memory only) and peak RSS < {MEMORY_MAX_MIB} MiB -> {'PASS' if verdict else 'MISS'}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
