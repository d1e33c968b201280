"""Demo jobs: real jobs on a demo agent, so the jobs and quotas screens have something true to show.

Submitted over the agent's HTTP API (as any client would), each kind again `every_s` after its last run
ended, while the demo runs:

- `train`: a short training run of the sample model's task (`train_flights.py`: torch when installed,
  else numpy; ~40 s) in the `training` pipeline, 1 core, 768 MiB;
- `validate`: the same script as a validation gate with a bar it cannot reach (`--min-auc 0.99`): it
  ends FAILED with exit code 2 and says why on stderr;
- `hog`: a greedy job (`greedy.py`) in the `batch` pipeline that asks for 272 MiB of the pipeline's
  288 MiB (94 %) and takes ~250 MiB of it, held for ten minutes: `batch` shows near its memory limit
  (`quota_near_limit`);
- `oom`: a greedy job in `etl` (no quota of its own: the default) that takes more than its 128 MiB:
  the agent stops it, OUT_OF_MEMORY.

The quotas they run under are the demo agents' `[[quotas]]` (console/demo/fleet.py, DEMO_CONFIG). What
the agent refuses is noted (`notes`, and `demo-jobs.log` in `state_dir`); the demo carries on.
"""

from __future__ import annotations

import collections
import logging
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

HERE = Path(__file__).resolve().parent
CHECK_S = 3.0
ACTIVE = ("PENDING", "RUNNING", "REQUEUED")
log = logging.getLogger("watchkeeper.demo")
log.addHandler(logging.NullHandler())


@dataclass(frozen=True)
class DemoJob:
    """One kind of demo job: its submit body, and how long after its last run ended it runs again."""

    kind: str
    body: dict[str, Any]
    every_s: float


def demo_jobs(python: str = sys.executable, train_s: float = 40.0) -> tuple[DemoJob, ...]:
    """The demo's jobs (see the module docstring)."""
    train = [python, str(HERE / "train_flights.py")]
    greedy = [python, str(HERE / "greedy.py")]
    return (
        DemoJob(
            "train",
            {
                "pipeline": "training",
                "name": "train-flights",
                "command": [*train, "--seconds", f"{train_s:g}"],
                "cpu": 1,
                "mem": "768M",
                "time_limit": "5m",
                "reason": "demo: retrain the sample model",
            },
            every_s=60,
        ),
        DemoJob(
            "validate",
            {
                "pipeline": "training",
                "name": "validate-flights",
                "command": [*train, "--seconds", "5", "--numpy", "--min-auc", "0.99"],
                "cpu": 0.5,
                "mem": "256M",
                "time_limit": "2m",
                "reason": "demo: a validation gate set too high",
            },
            every_s=240,
        ),
        DemoJob(
            "hog",
            {
                "pipeline": "batch",
                "name": "greedy-hold",
                "command": [*greedy, "--mib", "240"],
                "cpu": 0.25,
                "mem": "272M",
                "reason": "demo: a job held at its memory limit",
            },
            every_s=20,
        ),
        DemoJob(
            "oom",
            {
                "pipeline": "etl",
                "name": "greedy-oom",
                "command": [*greedy, "--mib", "400"],
                "cpu": 0.25,
                "mem": "128M",
                "time_limit": "2m",
                "reason": "demo: a job that outgrows its memory",
            },
            every_s=180,
        ),
    )


class DemoJobs:
    """Keeps the demo's jobs coming on one agent, from a background thread."""

    def __init__(
        self, base_url: str, token: str, *, jobs: tuple[DemoJob, ...] | None = None, state_dir: Path | None = None
    ) -> None:
        self.base_url = base_url
        self.headers = {"Authorization": f"Bearer {token}"}
        self.jobs = jobs if jobs is not None else demo_jobs()
        self.state_dir = state_dir
        self.submitted: dict[str, list[str]] = {j.kind: [] for j in self.jobs}
        self.notes: collections.deque[str] = collections.deque(maxlen=200)
        self._ended_at: dict[str, float] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def available(self) -> bool:
        """Whether the agent runs jobs (an older agent, or `[jobs] enabled = false`, does not)."""
        try:
            with httpx.Client(base_url=self.base_url, headers=self.headers, timeout=10, trust_env=False) as c:
                return c.get("/api/v1/quotas").status_code == 200
        except httpx.HTTPError:
            return False

    def tick(self, c: httpx.Client) -> None:
        """Submit each kind whose last run has ended (and waited its `every_s`), or that never ran."""
        now = time.monotonic()
        for job in self.jobs:
            ids = self.submitted[job.kind]
            if ids:
                r = c.get(f"/api/v1/jobs/{ids[-1]}")
                if r.status_code == 200 and r.json().get("state") in ACTIVE:
                    continue
                self._ended_at.setdefault(ids[-1], now)
                if now - self._ended_at[ids[-1]] < job.every_s:
                    continue
            r = c.post("/api/v1/jobs", json=job.body)
            if r.status_code == 201:
                ids.append(r.json()["id"])
            else:
                self._note(f"{job.kind}: not submitted: HTTP {r.status_code} {r.text[:200]}")

    def _run(self) -> None:
        with httpx.Client(base_url=self.base_url, headers=self.headers, timeout=10, trust_env=False) as c:
            while not self._stop.is_set():
                try:
                    self.tick(c)
                except Exception as exc:  # the agent went away or refused: try again later
                    self._note(f"jobs: {exc!r}")
                self._stop.wait(CHECK_S)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="demo-jobs", daemon=True)
        self._thread.start()

    def stop(self, wait_s: float = 10.0) -> None:
        """Stop submitting and cancel the demo's jobs still pending or running: jobs outlive their agent by
        design (restart safety), so stopping the demo's agents alone would leave them behind."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)
        ids = [i for kind in self.submitted.values() for i in kind]
        if not ids:
            return
        try:
            with httpx.Client(base_url=self.base_url, headers=self.headers, timeout=10, trust_env=False) as c:
                for job_id in ids:
                    c.post(f"/api/v1/jobs/{job_id}/cancel", json={"reason": "demo stopped"})
                deadline = time.monotonic() + wait_s
                while ids and time.monotonic() < deadline:
                    ids = [i for i in ids if c.get(f"/api/v1/jobs/{i}").json().get("state") in ACTIVE]
                    if ids:
                        time.sleep(0.2)
        except (httpx.HTTPError, ValueError) as exc:
            self._note(f"jobs: not all cancelled: {exc!r}")

    def _note(self, msg: str) -> None:
        self.notes.append(msg)
        log.info("%s", msg)
        if self.state_dir is not None:
            try:
                with open(self.state_dir / "demo-jobs.log", "a") as f:
                    f.write(f"{time.strftime('%H:%M:%S')} {msg}\n")
            except OSError:
                pass
