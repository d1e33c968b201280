"""Console at fleet scale (issue 12): fake agents replaying a real agent's answers, 100 / 300 / 1,000 of them.

1. A real agent (simulated GPUs, 1 s samples) is started once and its answers recorded: summary,
   snapshot, host, serving, endpoints, alerting, rollouts, audit head and verify.
2. Per fleet size, a child process serves N fake agents on N loopback ports (asyncio, one listening
   socket each): every agent replays the recorded answers, with the sample's timestamp renewed every
   second as a real agent's would be, and ETag / 304 on the summary. The child stops when its stdin
   closes or after --max-seconds, whichever comes first.
3. `watchkeeper status --json` over the fleet is timed (wall, exit code, agents up).
4. Another child runs the TUI headless (Textual's run_test) with the real poller: time to the first
   full table, refresh (per agent, the time between two fresh answers reaching the screen; the old
   "poll" figure was one poll's duration, which hid the interval waited between polls), the longest
   stall of its event loop (a 20 ms ticker's worst lateness), CPU share, peak RSS and open files over
   a steady window.

5. Through Prometheus (unless --no-prometheus): a real Prometheus (`/usr/bin/prometheus`, started as
   tests/promproc.py does) scrapes every fake agent's /metrics (a real agent's, recorded, replayed
   with the agent's name and its sample time renewed) every refresh interval; once every target was
   scraped, steps 3 and 4 again with `--prometheus URL`, plus Prometheus's own CPU share.

Prints one table with the issue's targets and PASS/MISS per figure.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import hashlib
import json
import os
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

ROUTES = {
    "/api/v1/summary": "/api/v1/summary",
    "/api/v1/snapshot": "/api/v1/snapshot",
    "/api/v1/host": "/api/v1/host",
    "/api/v1/serving": "/api/v1/serving",
    "/api/v1/endpoints": "/api/v1/endpoints",
    "/api/v1/alerting": "/api/v1/alerting",
    "/api/v1/rollouts": "/api/v1/rollouts",
    "/api/v1/audit/head": "/api/v1/audit/head",
    "/api/v1/audit/verify": "/api/v1/audit/verify",
    "/healthz": "/healthz",
}
SAMPLE_TS = "watchkeeper_last_sample_timestamp_seconds"
TARGETS = {"first": 3.0, "refresh": 2.0, "stall_ms": 100.0, "cpu_pct": 25.0, "rss_mib": 300.0, "status": 3.0}


# --------------------------------------------------------------------------- recording a real agent


def record(workdir: Path) -> dict[str, Any]:
    """Start a real agent, record its answers to the routes the console polls, stop it."""
    import httpx

    with __import__("socket").socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    data = workdir / "recorded-agent"
    env = {k: v for k, v in os.environ.items() if k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHKEEPER_TOKEN")}
    args = ["--data-dir", str(data), "--name", "recorded", "--listen", f"127.0.0.1:{port}"]
    args += ["--sample-interval", "1", "--simulate-gpus", "2"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "agent.cli", "run", *args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    answers: dict[str, Any] = {}
    try:
        deadline = time.monotonic() + 60
        url = f"http://127.0.0.1:{port}"
        while True:
            try:
                token = (data / "admin.token").read_text().strip()
                if httpx.get(f"{url}/api/v1/snapshot", headers={"Authorization": f"Bearer {token}"}).is_success:
                    break
            except (OSError, httpx.HTTPError):
                pass
            if time.monotonic() > deadline or proc.poll() is not None:
                raise SystemExit("the real agent did not start")
            time.sleep(0.2)
        with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}) as c:
            for path in ROUTES:
                r = c.get(path)
                answers[path] = {"status": r.status_code, "body": r.json()}
            metrics = c.get("/metrics")  # what Prometheus scrapes, replayed per fake agent
            answers["/metrics"] = {"status": metrics.status_code, "text": metrics.text}
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
    return answers


# --------------------------------------------------------------------------- the fake fleet (child)


class Replayer:
    """The recorded answers as ready-to-send HTTP responses, the sample renewed every second."""

    def __init__(self, answers: dict[str, Any]) -> None:
        self.answers = answers
        self.responses: dict[bytes, bytes] = {}
        self.summary_etag = b""
        self.not_modified = b""
        self.renew()

    @staticmethod
    def _response(status: int, body: bytes, extra: bytes = b"") -> bytes:
        head = f"HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {len(body)}\r\n"
        return head.encode() + extra + b"\r\n" + body

    def renew(self) -> None:
        now = time.time()
        self._metrics: dict[int, bytes] = {}
        text = self.answers.get("/metrics", {}).get("text", "")
        # The agent's own name per fake agent, and its newest sample's time renewed like the summary's.
        self.metrics_text = (
            "\n".join(
                f"{SAMPLE_TS} {now}" if line.startswith(SAMPLE_TS + " ") else line for line in text.splitlines()
            ).replace('agent="recorded"', 'agent="{agent}"')
            + "\n"
        )
        for path, answer in self.answers.items():
            if "body" not in answer:
                continue
            body = answer["body"]
            if path == "/api/v1/snapshot":
                body = {**body, "ts": now}
            elif path == "/api/v1/summary" and body.get("snapshot"):
                body = {**body, "snapshot": {**body["snapshot"], "ts": now}}
            raw = json.dumps(body).encode()
            extra = b""
            if path == "/api/v1/summary":
                etag = b'"' + hashlib.blake2b(raw, digest_size=8).hexdigest().encode() + b'"'
                self.summary_etag = etag
                extra = b"etag: " + etag + b"\r\n"
                self.not_modified = b"HTTP/1.1 304 X\r\ncontent-length: 0\r\netag: " + etag + b"\r\n\r\n"
            self.responses[path.encode()] = self._response(answer["status"], raw, extra)
        self.missing = self._response(404, b'{"error":"not_found","detail":"no such route"}')

    def metrics(self, index: int) -> bytes:
        """Agent `index`'s /metrics (built when first scraped after each renewal)."""
        if index not in self._metrics:
            body = self.metrics_text.replace("{agent}", f"agent-{index:04d}").encode()
            head = f"HTTP/1.1 200 OK\r\ncontent-type: text/plain; version=0.0.4\r\ncontent-length: {len(body)}\r\n"
            self._metrics[index] = head.encode() + b"\r\n" + body
        return self._metrics[index]

    def answer(self, head: bytes, index: int = 0) -> bytes:
        line, _, headers = head.partition(b"\r\n")
        path = line.split(b" ", 2)[1].split(b"?", 1)[0]
        if path == b"/metrics":
            return self.metrics(index)
        if path == b"/api/v1/summary" and b"if-none-match: " + self.summary_etag in headers.lower():
            return self.not_modified
        return self.responses.get(path, self.missing)


class FakeAgentProtocol(asyncio.Protocol):
    def __init__(self, replayer: Replayer, index: int) -> None:
        self.replayer = replayer
        self.index = index
        self.buf = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while b"\r\n\r\n" in self.buf:  # the console only GETs: no request bodies
            head, _, self.buf = self.buf.partition(b"\r\n\r\n")
            self.transport.write(self.replayer.answer(head, self.index))  # type: ignore[attr-defined]


async def serve(n: int, answers: dict[str, Any], max_seconds: float) -> None:
    """Serve `n` fake agents; print their URLs as one JSON line; stop on stdin EOF or after `max_seconds`."""
    loop = asyncio.get_running_loop()
    replayer = Replayer(answers)
    servers = [
        await loop.create_server(functools.partial(FakeAgentProtocol, replayer, i), "127.0.0.1", 0) for i in range(n)
    ]
    urls = [f"http://127.0.0.1:{s.sockets[0].getsockname()[1]}" for s in servers]
    print(json.dumps(urls), flush=True)
    stop = asyncio.Event()
    loop.add_reader(sys.stdin.fileno(), lambda: stop.set() if not os.read(sys.stdin.fileno(), 4096) else None)
    deadline = time.monotonic() + max_seconds
    while not stop.is_set() and time.monotonic() < deadline:
        replayer.renew()
        try:
            await asyncio.wait_for(stop.wait(), 1.0)
        except TimeoutError:
            pass
    for s in servers:
        s.close()


# --------------------------------------------------------------------------- the TUI, headless (child)


async def measure_tui(
    urls: list[str], seconds: float, refresh_s: float, prometheus: str | None, settle_s: float = 0.0
) -> dict[str, Any]:
    import psutil

    from console.app import WatchkeeperApp
    from console.cli import settle_garbage_collector
    from console.core.audit_heads import HeadStore
    from console.core.config import AgentSpec
    from console.core.limits import fit_open_files
    from console.core.poll_thread import ThreadedSource
    from console.core.poller import AgentState
    from console.fleet.fleet_table import FleetTable
    from console.pipelines.client import PipelinesPoller
    from console.rollouts.client import RolloutsPoller

    me = psutil.Process()
    specs = [AgentSpec(name=f"agent-{i:04d}", url=u) for i, u in enumerate(urls)]
    refusal = fit_open_files(len(specs))
    if refusal:
        return {"error": refusal}
    # As `watchkeeper` (console/cli.py: run_tui) runs it.
    source: Any
    if prometheus:
        from console.prometheus.source import PrometheusSource

        heads = HeadStore()
        source = ThreadedSource(PrometheusSource(prometheus, [], agents=lambda s: RolloutsPoller(s, audit_heads=heads)))
    else:
        source = ThreadedSource(PipelinesPoller(specs, audit_heads=HeadStore(), first_spread_s=30.0))
    app = WatchkeeperApp(source, refresh_s=refresh_s)
    settle_garbage_collector()
    worst = {"lag": 0.0}
    peak = {"rss": 0, "fds": 0}

    async def ticker() -> None:
        # RSS and open files once a second, not every tick: listing /proc/self/fd with 2,000 sockets
        # open every 20 ms cost ~8 % of a core, which the CPU figure then charged to the console.
        # Both move slowly (the connections are kept alive), so the peak is still seen.
        tick = 0
        while True:
            t = time.perf_counter()
            await asyncio.sleep(0.02)
            worst["lag"] = max(worst["lag"], time.perf_counter() - t - 0.02)
            tick += 1
            if tick % 50 == 0:
                peak["rss"] = max(peak["rss"], me.memory_info().rss)
                peak["fds"] = max(peak["fds"], me.num_fds())

    t0 = time.perf_counter()
    first = None
    async with app.run_test(size=(160, 50)) as pilot:
        tick = asyncio.create_task(ticker())
        deadline = t0 + 120
        while time.perf_counter() < deadline:
            tables = app.screen.query(FleetTable)
            if tables and tables.first().row_count == len(specs) and app.polls_finished >= 1:
                first = time.perf_counter() - t0
                break
            await pilot.pause(0.02)
        settled = time.perf_counter()
        while time.perf_counter() - settled < settle_s:  # e.g. past the first 30 s (serving, audit checks spread)
            await pilot.pause(0.05)
        worst["lag"] = 0.0  # the stall that counts is the steady state's (start-up builds the screens)
        cpu0, w0, polls0 = me.cpu_times(), time.perf_counter(), app.polls_finished
        # Refresh as the person sees it: per agent, the time between two successive fresh answers
        # reaching the screen (a phased poll hands them over in batches, not once per poll).
        gaps: list[float] = []
        shown_at: dict[str, tuple[float | None, float]] = {}
        seen = app.fleet_status
        while time.perf_counter() - w0 < seconds:
            await pilot.pause(0.05)
            if app.fleet_status is not seen and app.fleet_status is not None:
                seen = app.fleet_status
                now = time.perf_counter()
                for a in seen.agents:
                    before = shown_at.get(a.name)
                    if before is None or before[0] != a.last_seen:
                        if before is not None:
                            gaps.append(now - before[1])
                        shown_at[a.name] = (a.last_seen, now)
        durations = gaps
        cpu1, w1 = me.cpu_times(), time.perf_counter()
        tick.cancel()
        peak["rss"] = max(peak["rss"], me.memory_info().rss)
        peak["fds"] = max(peak["fds"], me.num_fds())
        status = app.fleet_status
        up = status.count(AgentState.UP) if status else 0
        polls = app.polls_finished - polls0
    cpu = (cpu1.user + cpu1.system - cpu0.user - cpu0.system) / (w1 - w0) * 100
    return {
        "first": first,
        "refresh_med": statistics.median(durations) if durations else None,
        "refresh_max": max(durations) if durations else None,
        "polls": polls,
        "stall_ms": worst["lag"] * 1000,
        "cpu_pct": cpu,
        "rss_mib": peak["rss"] / 2**20,
        "fds": peak["fds"],
        "up": up,
    }


# --------------------------------------------------------------------------- the driver


def run_size(
    n: int, answers_file: Path, state_dir: Path, seconds: float, refresh_s: float, prometheus: bool
) -> list[dict[str, Any]]:
    """The figures of one fleet size: direct, then (with `prometheus`) through a real Prometheus."""
    env = {**os.environ, "WATCHKEEPER_STATE_DIR": str(state_dir), "PYTHONPATH": str(ROOT)}
    env.pop("WATCHKEEPER_FLEET", None)
    env.pop("WATCHKEEPER_TOKEN", None)
    me = [sys.executable, str(Path(__file__).resolve())]
    fleet = subprocess.Popen(
        [*me, "--serve", str(n), "--answers", str(answers_file), "--max-seconds", str(seconds * 8 + 600)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        urls = json.loads(fleet.stdout.readline())  # type: ignore[union-attr]
        urls_file = state_dir / f"urls-{n}.json"
        urls_file.write_text(json.dumps(urls))
        rows = [measure_mode(n, "direct", ["--agents", ",".join(urls)], urls_file, env, seconds, refresh_s)]
        if prometheus:
            rows.append(through_prometheus(n, urls, urls_file, state_dir, env, seconds, refresh_s))
        return rows
    finally:
        fleet.stdin.close()  # type: ignore[union-attr]
        try:
            fleet.wait(10)
        except subprocess.TimeoutExpired:
            fleet.kill()


def measure_mode(
    n: int, mode: str, where: list[str], urls_file: Path, env: dict[str, str], seconds: float, refresh_s: float
) -> dict[str, Any]:
    """`status --json` timed, then the TUI measured, reading the fleet from `where` (CLI options)."""
    me = [sys.executable, str(Path(__file__).resolve())]
    row: dict[str, Any] = {"n": n, "mode": mode}
    t = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "console.cli", "status", "--json", *where],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    row["status"] = time.perf_counter() - t
    row["status_rc"] = done.returncode
    try:
        row["status_up"] = json.loads(done.stdout)["counts"]["up"]
    except (ValueError, KeyError):
        row["status_up"] = f"? {done.stderr.strip()[-120:]}"
    prom = ["--prometheus", where[1]] if where[0] == "--prometheus" else []
    prom += ["--settle", os.environ.get("WK_BENCH_SETTLE", "0")]
    tui = subprocess.run(
        [*me, "--tui", str(urls_file), "--seconds", str(seconds), "--refresh", str(refresh_s), *prom],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=seconds + 300,
    )
    try:
        row.update(json.loads(tui.stdout.strip().splitlines()[-1]))
    except (ValueError, IndexError):
        row["error"] = (tui.stderr or tui.stdout).strip()[-300:]
    return row


def through_prometheus(
    n: int, urls: list[str], urls_file: Path, state_dir: Path, env: dict[str, str], seconds: float, refresh_s: float
) -> dict[str, Any]:
    """A real Prometheus scraping the fake agents' /metrics (a real agent's, replayed) every
    `refresh_s`; the console in `--prometheus` mode. Also its own CPU while the TUI is measured."""
    import httpx
    import psutil

    from tests.promproc import PromProc, prometheus_available

    if not prometheus_available():
        return {"n": n, "mode": "prom", "error": "no prometheus binary (apt-get install prometheus)"}
    interval = f"{refresh_s:g}s"
    prom = PromProc(state_dir / f"prometheus-{n}", [u.removeprefix("http://") for u in urls], scrape_interval=interval)
    prom.start()
    try:
        deadline = time.monotonic() + 180
        while True:  # every target scraped at least once
            r = httpx.get(f"{prom.url}/api/v1/query", params={"query": "count(up == 1)"}, timeout=10).json()
            result = r["data"]["result"]
            if result and int(float(result[0]["value"][1])) >= n:
                break
            if time.monotonic() > deadline:
                return {"n": n, "mode": "prom", "error": f"Prometheus scraped {result} of {n} targets in 180 s"}
            time.sleep(1)
        proc = psutil.Process(prom.proc.pid)  # type: ignore[union-attr]
        cpu0, t0 = proc.cpu_times(), time.perf_counter()
        row = measure_mode(n, "prom", ["--prometheus", prom.url], urls_file, env, seconds, refresh_s)
        cpu1, t1 = proc.cpu_times(), time.perf_counter()
        row["prom_cpu_pct"] = (cpu1.user + cpu1.system - cpu0.user - cpu0.system) / (t1 - t0) * 100
        return row
    finally:
        prom.stop()


def verdict(value: float | None, target: float) -> str:
    return "MISS" if value is None or value > target else "PASS"


def fmt(value: Any, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def print_table(rows: list[dict[str, Any]], refresh_s: float) -> None:
    t = TARGETS
    settle = os.environ.get("WK_BENCH_SETTLE", "0")
    print(f"steady window starts {settle} s after the first full table")
    print(
        f"console at fleet scale: fake agents replaying a real agent; TUI refresh every {refresh_s:g} s; "
        f"prom: a real Prometheus scraping them every {refresh_s:g} s, the console in --prometheus mode"
    )
    head = (
        f"{'agents':>6}  {'mode':>6}  {'first table':>11}  {'refresh med/max':>15}  {'max stall':>9}  {'CPU':>6}  "
        f"{'RSS':>8}  {'fds':>5}  {'up (TUI)':>9}  {'status --json':>13}  {'rc':>2}  {'up (status)':>11}  "
        f"{'prom CPU':>8}"
    )
    print(head)
    print("-" * len(head))
    for r in rows:
        mode = r.get("mode", "direct")
        if "error" in r:
            print(f"{r['n']:>6}  {mode:>6}  error: {r['error']}")
            continue
        print(
            f"{r['n']:>6}  {mode:>6}  {fmt(r['first'], '10.2f')}s  "
            f"{fmt(r['refresh_med'], '6.2f')}/{fmt(r['refresh_max'], '5.2f')} s  "
            f"{fmt(r['stall_ms'], '6.0f')} ms  {fmt(r['cpu_pct'], '5.1f')}%  {fmt(r['rss_mib'], '5.0f')} MiB  "
            f"{r['fds']:>5}  {r['up']:>4}/{r['n']:<4}  {fmt(r['status'], '12.2f')}s  {r['status_rc']:>2}  "
            f"{r['status_up']!s:>5}/{r['n']:<5}  {fmt(r.get('prom_cpu_pct'), '7.1f')}%"
        )
    print()
    for r in rows:
        what_n = f"{r['n']} agents {r.get('mode', 'direct')}"
        if "error" in r:
            print(f"target: {what_n} -> MISS ({r['error'][:80]})")
            continue
        checks = [
            ("first table", r["first"], t["first"], "s"),
            ("refresh (max per agent)", r["refresh_max"], t["refresh"], "s"),
            ("max UI stall", r["stall_ms"], t["stall_ms"], "ms"),
            ("CPU", r["cpu_pct"], t["cpu_pct"], "%"),
            ("RSS", r["rss_mib"], t["rss_mib"], "MiB"),
            ("status --json", r["status"], t["status"], "s"),
        ]
        for what, value, target, unit in checks:
            print(f"target: {what_n}, {what} <= {target:g} {unit}: {fmt(value, '.2f')} -> {verdict(value, target)}")
        all_up = r["up"] == r["n"] and r["status_up"] == r["n"] and r["status_rc"] == 0
        print(f"target: {what_n} all shown up (TUI and status) -> {'PASS' if all_up else 'MISS'}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="100,300,1000", help="fleet sizes, comma-separated")
    ap.add_argument("--seconds", type=float, default=10.0, help="steady window of the TUI per size")
    ap.add_argument("--refresh", type=float, default=2.0, help="the TUI's refresh interval")
    ap.add_argument("--no-prometheus", action="store_true", help="measure direct polling only")
    ap.add_argument(
        "--settle", type=float, default=0.0, help="seconds after the first table before the steady window starts"
    )
    ap.add_argument("--prometheus", help=argparse.SUPPRESS)
    ap.add_argument("--serve", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--answers", help=argparse.SUPPRESS)
    ap.add_argument("--max-seconds", type=float, default=600.0, help=argparse.SUPPRESS)
    ap.add_argument("--tui", help=argparse.SUPPRESS)
    args = ap.parse_args()
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if args.serve:
        asyncio.run(serve(args.serve, json.loads(Path(args.answers).read_text()), args.max_seconds))
        return 0
    if args.tui:
        urls = json.loads(Path(args.tui).read_text())
        result = asyncio.run(measure_tui(urls, args.seconds, args.refresh, args.prometheus, args.settle))
        print(json.dumps(result))
        return 0
    sizes = [int(x) for x in args.sizes.split(",")]
    os.environ["WK_BENCH_SETTLE"] = str(args.settle)  # handed to the TUI children
    work = Path(tempfile.mkdtemp(prefix="wk-console-scale-"))
    try:
        answers_file = work / "answers.json"
        answers_file.write_text(json.dumps(record(work)))
        rows = [
            row
            for n in sizes
            for row in run_size(n, answers_file, work, args.seconds, args.refresh, not args.no_prometheus)
        ]
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print_table(rows, args.refresh)
    return 0


if __name__ == "__main__":
    sys.exit(main())
