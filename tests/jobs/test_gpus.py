"""GPUs for jobs, through the fake pynvml (tests/telemetry/fake_pynvml.py) and the real sampler: allocation by
UUID into CUDA_VISIBLE_DEVICES (MIG UUIDs under MIG), never shared across pipelines unless the quotas say so,
and a job over its gpu_mem stopped with the reason said. Real subprocesses, a real DuckDB file."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from agent.config import load_config
from agent.jobs.service import JobService
from agent.jobs.store import JobStore
from agent.jobs.tiers.psutil_tier import PsutilTier
from agent.schemas.jobs import JobSubmit, QuotaSpec
from agent.store.db import open_store
from agent.store.writer import StoreWriter
from agent.telemetry.gpu import NvmlGpuSource
from agent.telemetry.host import HostCollector
from agent.telemetry.sampler import Sampler
from tests.telemetry.fake_pynvml import FakeGpu, FakeMig, FakeNvml

GIB = 2**30


@pytest.fixture
def gpu_jobs(tmp_path: Path):
    nvml = FakeNvml(
        [
            FakeGpu(uuid="GPU-aaaa", bus_id=b"00000000:07:00.0"),
            FakeGpu(uuid="GPU-bbbb", bus_id=b"00000000:08:00.0"),
            FakeGpu(uuid="GPU-mmmm", bus_id=b"00000000:09:00.0", mig_mode=(1, 1),
                    mig_devices={0: FakeMig(uuid="MIG-one"), 1: FakeMig(uuid="MIG-two")}),
        ]
    )  # fmt: skip
    cfg = load_config(None, {"data_dir": str(tmp_path / "data"), "jobs.usage_interval": 0.2})
    cfg.data_dir.mkdir(mode=0o700)
    opened = open_store(cfg.db_path)
    writer = StoreWriter(opened.con, flush_interval=1)
    writer.start()
    sampler = Sampler(HostCollector(), NvmlGpuSource(nvml=nvml), None, "t", interval=0.1, jitter=0)
    sampler.sample_once()
    sampler.start()
    svc = JobService(cfg, JobStore(writer, opened.con), PsutilTier(), lambda: sampler.latest)
    svc.restore()
    svc.start()
    yield svc, nvml, writer, opened.con
    for r in list(svc.jobs.values()):
        if r.state == "RUNNING":
            svc.cancel(r.id, "test", wait_s=5)
    svc.stop()
    sampler.stop()
    writer.stop()


def _wait(svc: JobService, job_id: str, states: set[str], timeout: float = 20.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        j = svc.get(job_id)
        if j.state in states:
            return j
        time.sleep(0.05)
    raise AssertionError(f"{job_id} not in {states}: {svc.get(job_id)}")


def test_gpus_by_uuid_exclusive_across_pipelines_and_mig(gpu_jobs, tmp_path) -> None:
    svc = gpu_jobs[0]
    out = tmp_path / "cvd"
    cmd = f'echo "$CUDA_VISIBLE_DEVICES" > {out}-$WATCHKEEPER_JOB_ID; sleep 30'
    a = svc.submit(JobSubmit(pipeline="train", command=[cmd], shell=True, gpus=2, cpu=0.1, mem=64 * 2**20), "t")
    a = _wait(svc, a.id, {"RUNNING"})
    assert a.gpus == ["GPU-aaaa", "GPU-bbbb"]  # MIG-enabled GPU: its MIG devices are the units
    b = svc.submit(JobSubmit(pipeline="eval", command=[cmd], shell=True, gpus=2, cpu=0.1, mem=64 * 2**20), "t")
    b = _wait(svc, b.id, {"RUNNING"})
    assert b.gpus == ["MIG-one", "MIG-two"]
    c = svc.submit(JobSubmit(pipeline="other", command=["true"], gpus=1, cpu=0.1, mem=64 * 2**20), "t")
    deadline = time.monotonic() + 10
    while (got := svc.get(c.id)).reason != "Resources" and time.monotonic() < deadline:
        time.sleep(0.05)
    assert got.state == "PENDING" and got.reason == "Resources", got
    deadline = time.monotonic() + 10
    while not Path(f"{out}-{a.id}").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert Path(f"{out}-{a.id}").read_text().strip() == "GPU-aaaa,GPU-bbbb"
    # Pipelines whose quotas both share GPUs may be given the same one.
    svc.put_quota("train", QuotaSpec(share_gpus=True), "t")
    svc.put_quota("shared", QuotaSpec(share_gpus=True), "t")
    d = svc.submit(
        JobSubmit(pipeline="shared", command=["sleep", "30"], gpus=["GPU-aaaa"], cpu=0.1, mem=64 * 2**20), "t"
    )
    assert _wait(svc, d.id, {"RUNNING"}).gpus == ["GPU-aaaa"]
    assert svc.get(c.id).state == "PENDING"  # "other" does not share
    # A job given no GPU sees none.
    e = svc.submit(JobSubmit(pipeline="cpu", command=[f'echo "[$CUDA_VISIBLE_DEVICES]" > {out}-none'], shell=True,
                             cpu=0.1, mem=64 * 2**20), "t")  # fmt: skip
    _wait(svc, e.id, {"COMPLETED"})
    assert Path(f"{out}-none").read_text().strip() == "[]"


def test_job_over_gpu_memory_is_stopped_with_the_reason(gpu_jobs) -> None:
    svc, nvml, writer, con = gpu_jobs
    j = svc.submit(
        JobSubmit(pipeline="train", command=["sleep", "30"], gpus=1, gpu_mem="2G", cpu=0.1, mem=64 * 2**20), "t"
    )
    j = _wait(svc, j.id, {"RUNNING"})
    gpu = next(g for g in nvml.gpus if g.uuid == j.gpus[0])
    deadline = time.monotonic() + 10
    kids: tuple[int, ...] = ()
    while time.monotonic() < deadline:  # the wrapper forks the command just after it starts
        kids = tuple(p for p in svc.tier.usage(svc.jobs[j.id].handle).pids if p != j.pid)
        if kids:
            break
        time.sleep(0.02)
    child = kids[0]
    gpu.processes = [(child, 1 * GIB)]  # under the limit: runs on, and its peak is recorded
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:  # a GPU sample, then a usage sample, take it there
        running = svc.get(j.id)
        if running.gpu_use and running.gpu_use[0].peak_mem_bytes == GIB:
            break
        time.sleep(0.05)
    assert running.state == "RUNNING" and running.gpu_use[0].peak_mem_bytes == GIB
    gpu.processes = [(child, 3 * GIB)]
    done = _wait(svc, j.id, {"FAILED"})
    assert "GPU memory" in done.reason and j.gpus[0] in done.reason and str(2 * GIB) in done.reason, done.reason
    assert done.gpu_use[0].peak_mem_bytes == 3 * GIB and done.gpu_use[0].seconds
    # Each second's usage is a row in job_usage (after the writer's next flush).
    writer.flush()
    rows = con.execute(
        "SELECT count(*), max(gpu_mem_bytes), max(rss_bytes) FROM job_usage WHERE job_id = ?", [j.id]
    ).fetchone()
    assert rows[0] >= 2 and rows[1] == 3 * GIB and rows[2] > 0, rows
    quota_rows = con.execute("SELECT count(*) FROM quota_usage WHERE pipeline = 'train'").fetchone()[0]
    assert quota_rows > 0
