"""Helpers for the jobs tests: real agents (tests/agentproc.py), real jobs, and no job left behind."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest

FINAL = {"COMPLETED", "FAILED", "OUT_OF_MEMORY", "TIMEOUT", "CANCELLED", "LOST"}


def wait_job(c: httpx.Client, job_id: str, states: set[str] | None = None, timeout: float = 30.0) -> dict:
    """Poll a job until it is in one of `states` (default: any final state)."""
    want = states or FINAL
    deadline = time.monotonic() + timeout
    job: dict = {}
    while time.monotonic() < deadline:
        job = c.get(f"/api/v1/jobs/{job_id}").json()
        if job.get("state") in want:
            return job
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} not in {want} after {timeout}s: {job}")


def submit(c: httpx.Client, **body) -> dict:
    r = c.post("/api/v1/jobs", json=body)
    assert r.status_code == 201, r.text
    return r.json()


def token(c: httpx.Client, name: str, role: str) -> str:
    r = c.post("/api/v1/tokens", json={"name": name, "role": role})
    assert r.status_code == 201, r.text
    return r.json()["token"]


@pytest.fixture(autouse=True)
def _no_job_left(tmp_path: Path) -> Iterator[None]:
    """Jobs outlive their agent by design: kill whatever a test's jobs left running."""
    yield
    for handle in tmp_path.glob("**/jobs/*/handle.json"):
        try:
            h = json.loads(handle.read_text())
            w = psutil.Process(h["pid"])
            if abs(w.create_time() - h["create_time"]) >= 0.05:
                continue
            for p in [*w.children(recursive=True), w]:
                p.kill()
        except (psutil.Error, OSError, ValueError, KeyError):
            continue


@pytest.fixture
def in_process_jobs(tmp_path: Path) -> Iterator:
    """`make(tier)`: a JobService over a real store in this process (not started); its writer stops at teardown."""
    from agent.config import load_config
    from agent.jobs.service import JobService
    from agent.jobs.store import JobStore
    from agent.store.db import open_store
    from agent.store.writer import StoreWriter

    writers: list[StoreWriter] = []

    def make(tier) -> JobService:
        cfg = load_config(None, {"data_dir": str(tmp_path / "data")})
        cfg.data_dir.mkdir(mode=0o700)
        opened = open_store(cfg.db_path)
        writer = StoreWriter(opened.con, flush_interval=1)
        writer.start()
        writers.append(writer)
        return JobService(cfg, JobStore(writer, opened.con), tier, lambda: None)

    yield make
    for w in writers:
        w.stop()
