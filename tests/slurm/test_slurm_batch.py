"""Batch transform on Slurm: the input files split among the tasks of one job array, one shard killed and
resumed without a row twice or missing. A real agent serving the flights model, the real single-node Slurm
of test_slurm_backend.py's module setup."""

from __future__ import annotations

import time

import pytest

from tests.batch.conftest import flights, read_output, wait_batch
from tests.serving.test_serving_agent import serving_delays
from tests.slurm.agents import agent_config

pytestmark = pytest.mark.usefixtures("empty_queue")


def test_a_batch_in_four_shards_with_one_killed_and_resumed(agent_factory, cluster, tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    df = flights(6000)
    for k in range(4):
        df.slice(k * 1500, 1500).write_parquet(src / f"part{k}.parquet", row_group_size=500)
    with serving_delays(agent_factory, "slb", "flush_interval = 0.2\n" + agent_config(cluster)) as (a, c):
        # 300 rows/s a shard, two shards at once: each shard takes ~5 s, long enough to kill one mid-way
        r = c.post("/api/v1/batch", json={"endpoint": "delays", "input": str(src), "output": str(tmp_path / "out"),
                                          "id_column": "row_id", "rows_per_batch": 150, "max_rows_per_s": 300,
                                          "mem": "700M", "shards": 4, "parallel": 2, "log_sample_rate": 0})  # fmt: skip
        assert r.status_code == 201, r.text
        b = r.json()
        assert b["shards"] == 4
        job = c.get(f"/api/v1/jobs/{b['job_id']}").json()
        assert (job["backend"], job["array"], job["array_parallel"]) == ("slurm", 4, 2), job
        sid = job["slurm"]["job_id"]
        # once shard 2 has scored part of its file, kill it (as a node failure or an operator would)
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            b = c.get(f"/api/v1/batch/{b['id']}").json()
            if b["files"][2]["rows_done"] >= 300:
                break
            time.sleep(0.1)
        assert b["files"][2]["rows_done"] >= 300, b
        assert b["state"] == "running" and 0 < b["progress"]["rows_done"] < 6000
        cluster.run(["scancel", f"{sid}_2"])
        failed = wait_batch(c, b["id"], timeout=90)
        assert failed["state"] == "failed", failed
        assert "task 2 CANCELLED" in failed["reason"], failed["reason"]
        assert [f["state"] for f in failed["files"]] == ["done", "done", "pending", "done"], failed["files"]
        left = failed["files"][2]["rows_done"]
        assert 300 <= left < 1500
        # resume: only shard 2 runs again, and scores only what its killed run had not written
        r = c.post(f"/api/v1/batch/{b['id']}/resume", json={"reason": "shard 2 was killed"})
        assert r.status_code == 200, r.text
        job = c.get(f"/api/v1/jobs/{b['job_id']}").json()
        assert job["attempt"] == 2 and job["slurm"]["tasks"] == {"0": "COMPLETED", "1": "COMPLETED", "2": "PENDING",
                                                                  "3": "COMPLETED"}  # fmt: skip
        done = wait_batch(c, b["id"], timeout=90)
        assert done["state"] == "succeeded", done
        assert done["progress"]["rows_done"] == done["progress"]["rows_total"] == 6000
        out = read_output(done["output"]).sort("row_id")
        assert out["row_id"].to_list() == list(range(6000))  # no row twice, none missing
        # the resumed shard wrote only the ranges its first run had not: one part per range of 150 rows
        parts = sorted(p.name for p in (tmp_path / "out").glob("part-f00002-*.parquet"))
        assert len(parts) == 10, parts
        log = (a.data_dir / "jobs" / b["job_id"] / "stdout.2").read_text()
        assert log.count("batch: done") == 1, log
