"""Batch transform against a real agent: real jobs running the worker, real files, real HTTP."""

from __future__ import annotations

import os
import signal
import time

import numpy as np
import polars as pl
import psutil

from tests.batch.conftest import flights, read_output, read_rejects, wait_batch
from tests.serving.test_serving_agent import FEATURES


def _realtime(c, df: pl.DataFrame) -> list[float]:
    scores: list[float] = []
    for i in range(0, df.height, 1000):
        part = df.slice(i, 1000).select(FEATURES)
        r = c.post("/api/v1/endpoints/delays/predict", json={"columns": part.to_dict(as_series=False)})
        assert r.status_code == 200, r.text
        scores += [p["score"] for p in r.json()["predictions"]]
    return scores


def test_directory_of_parquet_and_csv_scores_equal_realtime(served, tmp_path) -> None:
    _a, c = served
    src = tmp_path / "in"
    src.mkdir()
    df = flights(5000)
    df.slice(0, 2000).write_parquet(src / "a.parquet", row_group_size=700)
    df.slice(2000, 2000).write_csv(src / "b.csv")
    df.slice(4000, 1000).write_parquet(src / "c.parquet")
    r = c.post("/api/v1/batch", json={"endpoint": "delays", "input": str(src), "output": str(tmp_path / "out"),
                                      "id_column": "row_id", "keep": ["carrier"], "rows_per_batch": 900,
                                      "log_sample_rate": 1.0})  # fmt: skip
    assert r.status_code == 201, r.text
    b = wait_batch(c, r.json()["id"])
    assert b["state"] == "succeeded", b
    assert b["progress"]["rows_done"] == b["progress"]["rows_total"] == 5000
    assert [f["state"] for f in b["files"]] == ["done"] * 3
    out = read_output(b["output"]).sort("row_id")
    assert out.columns == ["row_id", "carrier", "score", "label"]
    assert out["row_id"].to_list() == list(range(5000))  # one output row per input row
    assert out["carrier"].to_list() == df["carrier"].to_list()
    want = np.array(_realtime(c, df))
    got = out["score"].to_numpy()
    assert np.abs(got - want).max() <= 1e-6, np.abs(got - want).max()
    labels = np.where(want >= 0.22, "delayed", "on_time")
    assert (out["label"].to_numpy() == labels).all()
    # the job carries the progress; sampled rows reach the prediction log (rate 1.0 here: every row)
    job = c.get(f"/api/v1/jobs/{b['job_id']}").json()
    assert job["pipeline"] == "batch" and job["state"] == "COMPLETED"
    assert job["progress"]["done"] == job["progress"]["total"] == 5000
    deadline = time.monotonic() + 30
    logged = 0
    while time.monotonic() < deadline and logged < 5000:
        rows = c.get("/api/v1/endpoints/delays/predictions", params={"limit": 10000}).json()
        logged = sum(1 for x in rows if x["request_id"].startswith(f"batch-{b['id']}"))
        time.sleep(0.3)
    assert logged == 5000


def test_rejects_file_and_an_unreadable_file_fails_only_itself(served, tmp_path) -> None:
    _a, c = served
    src = tmp_path / "in"
    src.mkdir()
    df = flights(1000)
    row = pl.col("row_id")
    csv = df.with_columns(
        pl.when(row == 5)
        .then(pl.lit("warm"))
        .when(row == 17)
        .then(pl.lit("1e39"))  # a word; beyond float32
        .otherwise(pl.col("temp").cast(pl.String))
        .alias("temp"),
        pl.when(row == 40).then(12.5).otherwise(pl.col("distance")).alias("distance"),  # not an integer
    )
    csv.write_csv(src / "a.csv")
    (src / "b.parquet").write_bytes(b"PAR1 this is not parquet at all PAR1")
    df.slice(0, 10).write_parquet(src / "c.parquet")
    r = c.post("/api/v1/batch", json={"model": "flights", "version": 1, "missing_policy": "impute",
                                      "input": str(src), "output": str(tmp_path / "out"), "id_column": "row_id",
                                      "rows_per_batch": 256})  # fmt: skip
    assert r.status_code == 201, r.text
    b = wait_batch(c, r.json()["id"])
    assert b["state"] == "failed" and b["failed_files"] == [str(src / "b.parquet")], b
    assert "b.parquet" in b["reason"]
    assert [f["state"] for f in b["files"]] == ["done", "failed", "done"]
    out = read_output(b["output"])
    rej = read_rejects(b["output"]).sort("_row")
    assert rej["row_id"].to_list() == [5, 17, 40]
    assert rej["_field"].to_list() == ["temp", "temp", "distance"]
    assert rej["_reason"][0] == "expected a number, got 'warm'" and "float32" in rej["_reason"][1]
    assert rej["_reason"][2] == "expected an integer"
    assert b["progress"]["rows_rejected"] == 3
    ids = sorted(out["row_id"].to_list())
    assert ids == sorted([i for i in range(1000) if i not in (5, 17, 40)] + list(range(10)))


def _worker_of(job: dict) -> psutil.Process:
    wrapper = psutil.Process(job["pid"])
    for p in wrapper.children(recursive=True):
        if "agent.batch.worker" in " ".join(p.cmdline()):
            return p
    raise AssertionError("no worker process")


def test_resume_after_kill9_of_the_worker_and_of_the_agent(served, tmp_path) -> None:
    a, c = served
    n = 30000
    flights(n).write_parquet(tmp_path / "in.parquet", row_group_size=4096)
    out_dir = tmp_path / "out"
    r = c.post("/api/v1/batch", json={"endpoint": "delays", "input": str(tmp_path / "in.parquet"),
                                      "output": str(out_dir), "id_column": "row_id", "rows_per_batch": 500,
                                      "max_rows_per_s": 4000})  # fmt: skip
    assert r.status_code == 201, r.text
    bid = r.json()["id"]
    b = wait_batch(c, bid, rows_done=3000)
    assert b["progress"]["rows_per_s"] and b["progress"]["eta_s"] is not None
    job = c.get(f"/api/v1/jobs/{b['job_id']}").json()
    os.kill(_worker_of(job).pid, signal.SIGKILL)
    b = wait_batch(c, bid)
    assert b["state"] == "failed" and 0 < b["progress"]["rows_done"] < n, b
    before = {p.name: p.stat().st_mtime_ns for p in out_dir.glob("part-*.parquet")}
    assert c.post(f"/api/v1/batch/{bid}/resume", json={"reason": "after the kill"}).status_code == 200
    b = wait_batch(c, bid, rows_done=len(before) * 500 + 3000)
    a.kill()  # the agent dies; the job (the worker) keeps running and is re-adopted
    a.start()
    b = wait_batch(c, bid, timeout=120)
    assert b["state"] == "succeeded" and b["attempt"] == 2, b
    ids = read_output(out_dir)["row_id"].to_numpy()
    assert len(ids) == n and (np.sort(ids) == np.arange(n)).all()  # no row twice, none missing
    after = {p.name: p.stat().st_mtime_ns for p in out_dir.glob("part-*.parquet")}
    assert all(after[k] == v for k, v in before.items())  # written parts were skipped, not redone
    audit = c.get("/api/v1/audit", params={"limit": 50}).json()
    actions = [e["action"] for e in (audit["entries"] if isinstance(audit, dict) else audit)]
    assert "batch.submit" in actions and "batch.resume" in actions


def test_cancel_then_resume(served, tmp_path) -> None:
    _a, c = served
    flights(20000).write_parquet(tmp_path / "in.parquet")
    r = c.post("/api/v1/batch", json={"endpoint": "delays", "input": str(tmp_path / "in.parquet"),
                                      "output": str(tmp_path / "out"), "id_column": "row_id",
                                      "rows_per_batch": 1000, "max_rows_per_s": 5000})  # fmt: skip
    bid = r.json()["id"]
    wait_batch(c, bid, rows_done=2000)
    r = c.post(f"/api/v1/batch/{bid}/cancel", json={})
    assert r.status_code == 200, r.text
    b = wait_batch(c, bid)
    assert b["state"] == "cancelled"
    assert c.post(f"/api/v1/batch/{bid}/cancel", json={}).status_code == 409
    assert c.post(f"/api/v1/batch/{bid}/resume", json={}).status_code == 200
    b = wait_batch(c, bid, timeout=60)
    assert b["state"] == "succeeded"
    ids = read_output(tmp_path / "out")["row_id"].to_numpy()
    assert len(ids) == 20000 and len(np.unique(ids)) == 20000
    assert c.post(f"/api/v1/batch/{bid}/resume", json={}).status_code == 409  # complete


def test_bad_requests_name_the_field(served, tmp_path) -> None:
    _a, c = served
    flights(10).write_parquet(tmp_path / "in.parquet")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    ok = {"endpoint": "delays", "input": str(tmp_path / "in.parquet"), "output": str(tmp_path / "o")}
    for change, status, field in [
        ({"input": str(tmp_path / "nope.parquet")}, 422, "input"),
        ({"endpoint": "nope"}, 404, "endpoint"),
        ({"endpoint": None}, 422, "endpoint"),
        ({"endpoint": None, "model": "flights"}, 422, "version"),
        ({"endpoint": None, "model": "flights", "version": 9}, 404, "version"),
        ({"keep": ["nope"]}, 422, "keep"),
        ({"id_column": "score"}, 422, "id_column"),
        ({"output": str(tmp_path / "full")}, 409, "output"),
        ({"rows_per_batch": 0}, 422, "rows_per_batch"),
        ({"log_sample_rate": 2}, 422, "log_sample_rate"),
        ({"colour": "red"}, 422, "colour"),
        ({"cpu": 200}, 409, "cpu"),  # the job can never fit: no batch is left behind
    ]:
        r = c.post("/api/v1/batch", json={k: v for k, v in {**ok, **change}.items() if v is not None})
        assert r.status_code == status, (change, r.text)
        assert r.json()["field"] == field, (change, r.json())
    assert c.get("/api/v1/batch/b-0000000000").status_code == 404
    assert c.get("/api/v1/batch").json()["batches"] == []
    assert not any((tmp_path / "o").iterdir())  # the refused submit left the output free
