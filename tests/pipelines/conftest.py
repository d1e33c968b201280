"""An in-process pipelines harness on real parts: a DuckDB file, the store writer, the JobService with
the psutil tier (real processes), the PipelineService; and pipeline files written into tmp dirs."""

from __future__ import annotations

import json
import textwrap
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest

from agent.config import load_config
from agent.jobs.service import JobService
from agent.jobs.store import JobStore
from agent.jobs.tiers.psutil_tier import PsutilTier
from agent.pipelines.service import PipelineService
from agent.pipelines.store import PipelineStore
from agent.schemas.pipelines import FINAL_RUN_STATES, Run, RunRequest
from agent.store.db import open_store
from agent.store.writer import StoreWriter


@dataclass
class Harness:
    root: Path
    svc: PipelineService
    jobs: JobService
    writer: StoreWriter

    def register(self, toml: str, name: str = "p.toml") -> str:
        path = self.root / "code" / name
        path.parent.mkdir(exist_ok=True)
        path.write_text(textwrap.dedent(toml))
        return self.svc.register(path.read_text(), str(path), "tester").name

    def run(self, name: str, timeout: float = 60.0, **req) -> Run:
        run = self.svc.start_run(name, RunRequest(**req), "tester")
        return self.wait(run.id, timeout)

    def wait(self, run_id: str, timeout: float = 60.0) -> Run:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            run = self.svc.get_run(run_id)
            if run.state in FINAL_RUN_STATES and run_id not in self.svc.executors:
                return run
            time.sleep(0.05)
        raise AssertionError(f"run {run_id} not over after {timeout}s: {self.svc.get_run(run_id)}")

    def code(self, rel: str, text: str) -> Path:
        p = self.root / "code" / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(textwrap.dedent(text))
        return p

    def executions(self, name: str) -> int:
        """How many times a step that appends to counter file `name` really ran."""
        p = self.root / "code" / f"{name}.count"
        return len(p.read_text().splitlines()) if p.exists() else 0


def steps_by_name(run: Run) -> dict:
    return {s.step: s for s in run.steps}


def open_harness(root: Path) -> Harness:
    cfg = load_config(None, {"data_dir": str(root / "d")})
    cfg.data_dir.mkdir(exist_ok=True)
    opened = open_store(cfg.db_path)
    writer = StoreWriter(opened.con, flush_interval=5)
    writer.start()
    jobs = JobService(cfg, JobStore(writer, opened.con), PsutilTier(), lambda: None)
    jobs.restore()
    jobs.start()
    svc = PipelineService(PipelineStore(writer, opened.con), cfg.data_dir, jobs, host="test-host")
    svc.restore()
    return Harness(root, svc, jobs, writer)


def close_harness(h: Harness) -> None:
    for ex in list(h.svc.executors.values()):
        ex.cancel("test", "teardown")
        ex.thread.join(timeout=10)
    h.jobs.stop()
    h.writer.stop()
    try:
        h.writer._con.close()  # type: ignore[attr-defined]
    except Exception:
        pass


@pytest.fixture
def harness(tmp_path: Path) -> Iterator[Harness]:
    h = open_harness(tmp_path)
    try:
        yield h
    finally:
        close_harness(h)
        for handle in tmp_path.glob("**/jobs/*/handle.json"):
            try:
                pid = json.loads(handle.read_text())["pid"]
                for p in [*psutil.Process(pid).children(recursive=True), psutil.Process(pid)]:
                    p.kill()
            except (psutil.Error, OSError, ValueError, KeyError):
                continue
