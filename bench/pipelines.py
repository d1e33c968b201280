"""Pipelines: per-step overhead of a 50-step chain of trivial steps, a fully cached re-run, beside Prefect 3.

Both run on this machine in the same run:

- **watchkeeper**: a real agent (`agent.cli run`, own data dir) over HTTP with its admin token.
  1. in-process: a 50-step chain of `isolation = "none"` steps calling `bench.pipeline_steps:step`
     (reads the previous step's output, writes one number); registered, run once with `no_cache`,
     wall time from `POST …/runs` to the first poll (every 20 ms) that sees the run final, / 50.
  2. isolated: the same chain as jobs (`command` steps, each `sh -c` writing its output); per step
     as above, and the median job start (the step's job `started_at - submitted_at`) beside it: the
     target is per-step time minus that start.
  3. cached: a 10-step chain run once, then again; the second run's wall time, and its cache hits
     (all 10 must be hits, or it does not count).
- **prefect**: Prefect 3 in its own venv (`~/.cache/watchkeeper-bench/prefect-venv`, installed the
  first time, ~1 min), local: no server started by us, no `PREFECT_API_URL`, so Prefect runs its own
  temporary local server and SQLite under a temp `PREFECT_HOME`, as a user's laptop does; console
  logging at WARNING (less terminal output, in Prefect's favour). The same 50-step chain: 50 `@task`
  calls, each taking the previous result, in one `@flow`; one warm-up flow first (the temporary server
  starts there, not in the measured run); per task = median flow wall time of `--repeats` / 50.

Prints one table with issue 14's targets (<= 10 ms per in-process step, <= 60 ms per isolated step
plus the job start, fully cached 10-step re-run <= 1 s, >= 10x faster per step than Prefect) and
PASS/MISS. A system that can't be measured (an agent without the pipelines API, Prefect not
installable) says why in its rows; a figure not measured is a MISS.

    .venv/bin/python bench/pipelines.py [--steps 50] [--cached-steps 10] [--repeats 3] [--systems watchkeeper,prefect]
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.agentproc import make_agent  # noqa: E402

PREFECT_VENV = Path.home() / ".cache" / "watchkeeper-bench" / "prefect-venv"
PREFECT_PACKAGES = ["prefect>=3,<4"]
FINAL = {"COMPLETED", "FAILED", "CANCELLED"}
TARGET_INPROC_MS = 10.0
TARGET_ISOLATED_MS = 60.0
TARGET_CACHED_S = 1.0
TARGET_SPEEDUP = 10.0

# Run inside Prefect's venv: prints one JSON line {"version", "warmup_s", "empty_s", "runs_s": [...]}.
PREFECT_SCRIPT = r"""
import json, sys, time
import prefect
from prefect import flow, task

N, REPEATS = int(sys.argv[1]), int(sys.argv[2])

@task
def step(x: int) -> int:
    return x + 1

@flow
def chain(n: int) -> int:
    x = 0
    for _ in range(n):
        x = step(x)
    return x

@flow
def empty() -> int:
    return 0

t = time.perf_counter(); assert chain(2) == 2; warmup = time.perf_counter() - t
empty()  # the first run of a flow registers it with the server
t = time.perf_counter(); empty(); empty_s = time.perf_counter() - t
runs = []
for _ in range(REPEATS):
    t = time.perf_counter()
    assert chain(N) == N
    runs.append(time.perf_counter() - t)
print(json.dumps({"version": prefect.__version__, "warmup_s": warmup, "empty_s": empty_s, "runs_s": runs}))
"""


class NotMeasured(Exception):
    """This half can't be measured here; the message says why, in its rows."""


@dataclass
class Figures:
    inproc_step_ms: float | None = None
    isolated_step_ms: float | None = None
    job_start_ms: float | None = None
    cached_s: float | None = None
    cached_hits: str = ""
    prefect_task_ms: float | None = None
    prefect_flow_ms: float | None = None
    prefect_version: str = ""
    # Where a chain's time goes, from the run's own record: mean step duration, mean gap from one
    # step's end to the next one's start (the runner's scheduling), per chain kind.
    breakdown: dict[str, tuple[float, float]] = field(default_factory=dict)
    job_phases: dict[str, float] = field(default_factory=dict)  # medians, ms (see job_phases_ms)
    why: dict[str, str] = field(default_factory=dict)  # row -> why it is missing


# --------------------------------------------------------------------------- pipeline files


def chain_toml(name: str, steps: int, isolated: bool, link: str = "inputs") -> str:
    """A chain s00 -> s01 -> ... : each step reads the previous one's `out` (link "inputs") or just waits
    for it (link "after"), and writes its own."""
    lines = [f'name = "{name}"', 'description = "bench/pipelines.py: a chain of trivial steps"',
             f"workdir = {json.dumps(str(ROOT))}", ""]  # fmt: skip
    for i in range(steps):
        lines += [f"[steps.s{i:02d}]", 'outputs = ["out"]']
        if isolated:
            lines += ['command = ["sh", "-c", "echo 1 > {outputs.out}"]', 'isolation = "job"']
        else:
            lines += ['call = "bench.pipeline_steps:step"', 'isolation = "none"']
        if i and link == "inputs":
            lines += [f'inputs = {{ prev = "s{i - 1:02d}.out" }}']
        elif i:
            lines += [f'after = ["s{i - 1:02d}"]']
        if isolated:
            lines += [f"[steps.s{i:02d}.resources]", "cpu = 0.1"]
        lines.append("")
    return "\n".join(lines)


# --------------------------------------------------------------------------- watchkeeper


class Pipelines:
    """The agent's pipelines API, as the bench uses it."""

    def __init__(self, client, workdir: Path) -> None:
        self.c = client
        self.workdir = workdir

    def register(self, name: str, text: str) -> None:
        path = self.workdir / f"{name}.toml"
        path.write_text(text)
        r = self.c.post("/api/v1/pipelines", json={"content": text, "path": str(path)})
        if r.status_code in (404, 405):
            raise NotMeasured(f"agent has no pipelines API (POST /api/v1/pipelines: {r.status_code})")
        if r.status_code != 201:
            raise NotMeasured(f"register {name}: {r.status_code} {r.text[:160]}")

    def run(self, name: str, no_cache: bool, timeout: float = 600.0) -> tuple[float, dict]:
        """Start a run and wait for it: (wall seconds from the POST to seeing it final, the run)."""
        t0 = time.perf_counter()
        r = self.c.post(f"/api/v1/pipelines/{name}/runs", json={"no_cache": no_cache, "reason": "bench"})
        if r.status_code != 202:
            raise NotMeasured(f"run {name}: {r.status_code} {r.text[:160]}")
        run_id = r.json()["id"]
        while True:
            run = self.c.get(f"/api/v1/pipelines/runs/{run_id}").json()
            if run.get("state") in FINAL:
                wall = time.perf_counter() - t0
                break
            if time.perf_counter() - t0 > timeout:
                raise NotMeasured(f"run {name} not over after {timeout:.0f} s ({run.get('state')})")
            time.sleep(0.02)
        if run["state"] != "COMPLETED":
            raise NotMeasured(f"run {name} {run['state']}: {run.get('reason', '')[:160]}")
        return wall, run

    def job_phases_ms(self, run: dict) -> dict[str, list[float]]:
        """Per isolated step, from its job's record: submit -> started ("start"), started -> ended
        ("job"), and the job's end -> the step's end ("after": the runner noticing and collecting)."""
        phases: dict[str, list[float]] = {"start": [], "job": [], "after": []}
        for step in run.get("steps", []):
            if not step.get("job_id"):
                continue
            job = self.c.get(f"/api/v1/jobs/{step['job_id']}").json()
            sub, start, end = job.get("submitted_at"), job.get("started_at"), job.get("ended_at")
            if sub and start:
                phases["start"].append(1000.0 * (start - sub))
            if start and end:
                phases["job"].append(1000.0 * (end - start))
            if end and step.get("ended_at"):
                phases["after"].append(1000.0 * (step["ended_at"] - end))
        return phases


def breakdown_ms(run: dict) -> tuple[float, float] | None:
    """(mean step duration, mean gap between a step's end and the next one's start) in ms."""
    steps = sorted((s for s in run.get("steps", []) if s.get("started_at") and s.get("ended_at")),
                   key=lambda s: s["started_at"])  # fmt: skip
    if len(steps) < 2:
        return None
    took = statistics.mean(s["ended_at"] - s["started_at"] for s in steps)
    gaps = statistics.mean(b["started_at"] - a["ended_at"] for a, b in itertools.pairwise(steps))
    return 1000.0 * took, 1000.0 * gaps


def bench_watchkeeper(args: argparse.Namespace, tmp: Path, fig: Figures) -> None:
    agent = make_agent(tmp, name="bench-pipelines", sample_interval=1.0, env={"PYTHONPATH": str(ROOT)})
    try:
        agent.start(timeout=60)
    except (RuntimeError, TimeoutError, OSError) as e:
        agent.kill()
        raise NotMeasured(f"agent did not start: {str(e).splitlines()[0]}") from None
    try:
        c = agent.client()
        c.timeout = 30
        api = Pipelines(c, tmp)
        # The chain's jobs must not wait on the quota: raise it first (as bench/jobs.py does).
        c.put("/api/v1/quotas/bench-isolated", json={"cpu": 64.0, "max_running_jobs": 1000})
        rows = (
            ("inproc", "bench-inproc", args.steps, False),
            ("isolated", "bench-isolated", args.steps, True),
        )
        for row, name, n, isolated in rows:
            try:
                api.register(name, chain_toml(name, n, isolated, args.link))
                wall, run = api.run(name, no_cache=True)
                parts = breakdown_ms(run)
                if parts is not None:
                    fig.breakdown[row] = parts
                if isolated:
                    fig.isolated_step_ms = 1000.0 * wall / n
                    phases = api.job_phases_ms(run)
                    fig.job_start_ms = statistics.median(phases["start"]) if phases["start"] else None
                    fig.job_phases = {k: statistics.median(v) for k, v in phases.items() if v}
                else:
                    fig.inproc_step_ms = 1000.0 * wall / n
            except NotMeasured as e:
                fig.why[row] = str(e)
        try:
            name = "bench-cached"
            api.register(name, chain_toml(name, args.cached_steps, False, args.link))
            api.run(name, no_cache=False)
            wall, run = api.run(name, no_cache=False)
            hits = sum(1 for s in run.get("steps", []) if s.get("cache_hit"))
            fig.cached_hits = f"{hits}/{args.cached_steps} cache hits"
            if hits == args.cached_steps:
                fig.cached_s = wall
            else:
                fig.why["cached"] = f"re-run was not fully cached ({fig.cached_hits})"
        except NotMeasured as e:
            fig.why["cached"] = str(e)
    finally:
        agent.stop()


# --------------------------------------------------------------------------- prefect


def ensure_prefect() -> tuple[Path | None, str]:
    """Prefect 3 in its own venv (its pins must not touch ours). Returns (python, version or why not)."""
    py = PREFECT_VENV / "bin" / "python"
    if not py.exists():
        print(f"installing Prefect 3 into {PREFECT_VENV} (once; ~1 min) ...", file=sys.stderr)
        PREFECT_VENV.parent.mkdir(parents=True, exist_ok=True)
        base_py = shutil.which("python3") or sys.executable
        try:
            subprocess.run([base_py, "-m", "venv", str(PREFECT_VENV)], check=True, capture_output=True, timeout=300)
            r = subprocess.run(
                [str(py), "-m", "pip", "install", "-q", "--disable-pip-version-check", *PREFECT_PACKAGES],
                capture_output=True,
                text=True,
                timeout=900,
            )
        except (subprocess.SubprocessError, OSError) as e:
            shutil.rmtree(PREFECT_VENV, ignore_errors=True)
            return None, f"venv/pip failed: {e}"
        if r.returncode != 0:
            errs = [ln for ln in r.stderr.splitlines() if ln.startswith("ERROR")] or r.stderr.splitlines()[-2:]
            shutil.rmtree(PREFECT_VENV, ignore_errors=True)
            return None, "pip install prefect failed: " + " ".join(errs)[:200]
    r = subprocess.run([str(py), "-c", "import prefect; print(prefect.__version__)"], capture_output=True, text=True)
    if r.returncode != 0 or not r.stdout.strip().startswith("3."):
        return None, f"prefect 3 does not import: {(r.stderr.strip().splitlines() or [r.stdout.strip()])[-1]}"
    return py, r.stdout.strip()


def bench_prefect(args: argparse.Namespace, tmp: Path, fig: Figures) -> None:
    py, version = ensure_prefect()
    if py is None:
        raise NotMeasured(version)
    fig.prefect_version = version
    home = tmp / "prefect-home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    # The temporary server's start can pass Prefect's 20 s default on a loaded box (seen: 24 s here); no
    # telemetry (no internet here). Neither is in the measured runs.
    env.update(PREFECT_HOME=str(home), PREFECT_LOGGING_LEVEL="WARNING", PREFECT_SERVER_ANALYTICS_ENABLED="false",
               PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="180")  # fmt: skip
    script = tmp / "prefect_chain.py"
    script.write_text(PREFECT_SCRIPT)
    r = subprocess.run(
        [str(py), str(script), str(args.steps), str(args.repeats)],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp,
        timeout=900,
    )
    # The figures are printed before Prefect's shutdown, whose cancelled server services may still
    # print tracebacks and set the exit status: a printed result counts.
    last = [ln for ln in r.stdout.splitlines() if ln.startswith("{")]
    if not last:
        errors = [ln for ln in r.stderr.splitlines() if ln and not ln[0].isspace() and "Error" in ln.split(":")[0]]
        tail = (errors or r.stderr.strip().splitlines() or ["no output"])[-1]
        raise NotMeasured(f"prefect run failed ({r.returncode}): {tail[:160]}")
    doc = json.loads(last[-1])
    fig.prefect_task_ms = 1000.0 * statistics.median(doc["runs_s"]) / args.steps
    fig.prefect_flow_ms = 1000.0 * doc["empty_s"]


# --------------------------------------------------------------------------- the table


def verdict(value: float | None, ok: bool) -> str:
    return "MISS (not measured)" if value is None else ("PASS" if ok else "MISS")


def print_table(args: argparse.Namespace, fig: Figures) -> None:
    def ms(v: float | None, why_key: str) -> str:
        return f"{v:.1f} ms" if v is not None else f"- ({fig.why.get(why_key, 'not measured')})"

    n = args.steps
    iso_net = (
        fig.isolated_step_ms - fig.job_start_ms
        if fig.isolated_step_ms is not None and fig.job_start_ms is not None
        else None
    )
    speedup = (
        fig.prefect_task_ms / fig.inproc_step_ms
        if fig.prefect_task_ms is not None and fig.inproc_step_ms is not None
        else None
    )
    start = f"{fig.job_start_ms:.1f} ms" if fig.job_start_ms is not None else "-"
    cached = (
        f"{fig.cached_s * 1000:.0f} ms ({fig.cached_hits})"
        if fig.cached_s is not None
        else f"- ({fig.why.get('cached', 'not measured')})"
    )
    prefect = f"prefect {fig.prefect_version}" if fig.prefect_version else "prefect 3"
    rows = [
        (f"watchkeeper: in-process step ({n}-step chain)", ms(fig.inproc_step_ms, "inproc"), "<= 10 ms",
         verdict(fig.inproc_step_ms, (fig.inproc_step_ms or 0) <= TARGET_INPROC_MS)),
        (f"watchkeeper: isolated step ({n}-step chain)", ms(fig.isolated_step_ms, "isolated"), "-", "info"),
        ("watchkeeper: its job start (median)", start, "-", "info"),
        ("watchkeeper: isolated step minus job start", f"{iso_net:.1f} ms" if iso_net is not None else "-",
         "<= 60 ms", verdict(iso_net, (iso_net or 0) <= TARGET_ISOLATED_MS)),
        (f"watchkeeper: {args.cached_steps}-step re-run, fully cached", cached, "<= 1 s",
         verdict(fig.cached_s, (fig.cached_s or 0) <= TARGET_CACHED_S)),
        (f"{prefect}: task ({n}-task chain in one flow)", ms(fig.prefect_task_ms, "prefect"), "-", "info"),
        (f"{prefect}: empty flow run", ms(fig.prefect_flow_ms, "prefect"), "-", "info"),
        ("prefect per task / watchkeeper per in-process step", f"{speedup:.1f}x" if speedup is not None else "-",
         ">= 10x", verdict(speedup, (speedup or 0) >= TARGET_SPEEDUP)),
    ]  # fmt: skip
    widths = [max(len(r[i]) for r in [*rows, ("measure", "value", "target", "verdict")]) for i in range(4)]
    line = "  ".join(f"{{:<{w}}}" for w in widths)
    print(line.format("measure", "value", "target", "verdict"))
    print(line.format(*("-" * w for w in widths)))
    for r in rows:
        print(line.format(*r))
    for row, (took, gap) in fig.breakdown.items():
        print(
            f"where a {row} step's time goes (the run's record): {took:.1f} ms running, {gap:.1f} ms from the "
            f"previous step's end to its start"
        )
    if fig.job_phases:
        p = fig.job_phases
        print(
            f"an isolated step's job (medians): submit -> started {p.get('start', 0):.1f} ms, started -> ended "
            f"{p.get('job', 0):.1f} ms, job ended -> step ended {p.get('after', 0):.1f} ms"
        )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=50, help="steps in the chain (default 50)")
    p.add_argument("--cached-steps", type=int, default=10, help="steps in the cached re-run (default 10)")
    p.add_argument("--repeats", type=int, default=3, help="measured Prefect flow runs (median; default 3)")
    p.add_argument(
        "--link",
        choices=("inputs", "after"),
        default="inputs",
        help="chain steps by reading the previous output (default) or by order only (`after`)",
    )
    p.add_argument("--systems", default="watchkeeper,prefect", help="which halves to run")
    args = p.parse_args(argv)
    systems = {s.strip() for s in args.systems.split(",") if s.strip()}
    fig = Figures()
    with tempfile.TemporaryDirectory(prefix="wk-bench-pipelines-") as t:
        tmp = Path(t)
        if "prefect" in systems:
            try:
                bench_prefect(args, tmp, fig)
            except (NotMeasured, subprocess.TimeoutExpired) as e:
                fig.why["prefect"] = str(e)
        else:
            fig.why["prefect"] = "not asked (--systems)"
        if "watchkeeper" in systems:
            try:
                bench_watchkeeper(args, tmp, fig)
            except NotMeasured as e:
                for row in ("inproc", "isolated", "cached"):
                    fig.why.setdefault(row, str(e))
        else:
            for row in ("inproc", "isolated", "cached"):
                fig.why[row] = "not asked (--systems)"
    print_table(args, fig)
    return 0


if __name__ == "__main__":
    sys.exit(main())
