"""The store: batched writer, bounded buffer, rollups/retention, series queries, WAL recovery."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from agent.store.db import open_store
from agent.store.reader import StoreReader, UnknownMetric
from agent.store.rollup import run_retention, run_rollup
from agent.store.sqltime import ts_from_unix
from agent.store.writer import StoreWriter
from agent.telemetry.sampler import GPU_ROW, HOST_ROW


def host_rows(t0: float, n: int, step: float = 1.0) -> list[tuple]:
    return [(t0 + i * step, float(i % 100), 0.5, 1e9 + i, 40.0, 0.0, 1.0, 2.0, 3.0, 4.0) for i in range(n)]


@pytest.fixture
def store(tmp_path):
    opened = open_store(tmp_path / "wk.duckdb")
    w = StoreWriter(opened.con, flush_interval=60)
    w.start()
    yield opened, w
    w.stop()
    opened.con.close()


def test_migrations_are_idempotent(tmp_path):
    a = open_store(tmp_path / "x.duckdb")
    a.con.close()
    b = open_store(tmp_path / "x.duckdb")
    from agent.store.migrations import LATEST_VERSION, MIGRATIONS

    assert b.schema_version == LATEST_VERSION
    # Each migration applied once (numbers may skip one another branch holds: issue 13's jobs take 5).
    assert b.con.execute("SELECT count(*) FROM schema_migrations").fetchone()[0] == len(MIGRATIONS)
    b.con.close()


def test_writer_batches_and_flush_commits(store):
    opened, w = store
    t0 = time.time() - 100
    w.append("host_samples", HOST_ROW, host_rows(t0, 50))
    w.append("host_samples", HOST_ROW, host_rows(t0 + 50, 50))
    # Nothing is written until the flush (flush_interval is 60 s): producers never wait on disk.
    assert opened.con.cursor().execute("SELECT count(*) FROM host_samples").fetchone()[0] == 0
    w.flush()
    cur = opened.con.cursor()
    assert cur.execute("SELECT count(*) FROM host_samples").fetchone()[0] == 100
    assert w.stats.flushes == 1 and w.stats.rows_written == 100
    # unix seconds round-trip through TIMESTAMP to the microsecond
    got = cur.execute("SELECT epoch(min(ts)) FROM host_samples").fetchone()[0]
    assert abs(got - t0) < 1e-5


def test_bounded_buffer_drops_oldest(tmp_path):
    opened = open_store(tmp_path / "wk.duckdb")
    w = StoreWriter(opened.con, flush_interval=60, max_buffered_rows=30)
    w.start()
    t0 = time.time()
    w.append("host_samples", HOST_ROW, host_rows(t0, 50))
    assert w.stats.rows_dropped == 20 and w.buffered_rows == 30
    w.flush()
    first = opened.con.cursor().execute("SELECT epoch(min(ts)) FROM host_samples").fetchone()[0]
    assert abs(first - (t0 + 20)) < 1e-5  # the oldest 20 went, the newest stayed
    w.stop()


def test_bad_batch_does_not_wedge_writer(store):
    _, w = store
    w.append("host_samples", ("ts", "no_such_column"), [(time.time(), 1.0)])
    w.append("host_samples", HOST_ROW, host_rows(time.time(), 3))
    w.flush()
    assert w.stats.flush_errors == 1 and w.stats.rows_written == 3
    assert w.running


def test_call_runs_on_writer_and_propagates_errors(store):
    _, w = store
    assert w.call(lambda con: con.execute("SELECT 41 + 1").fetchone()[0]) == 42
    with pytest.raises(Exception, match="no_such_table"):
        w.call(lambda con: con.execute("SELECT * FROM no_such_table"))
    assert w.running


def test_stop_checkpoints_so_no_wal_remains(tmp_path):
    path = tmp_path / "wk.duckdb"
    opened = open_store(path)
    w = StoreWriter(opened.con, flush_interval=60)
    w.start()
    w.append("host_samples", HOST_ROW, host_rows(time.time(), 10))
    w.stop()
    opened.con.close()
    wal = Path(str(path) + ".wal")
    assert not wal.exists() or wal.stat().st_size == 0


def test_rollup_and_retention(store):
    opened, w = store
    now = time.time()
    start = (int(now) // 60) * 60 - 600  # ten complete minutes ago
    rows = host_rows(start, 600)
    w.append("host_samples", HOST_ROW, rows)
    gpu = [(start + i, 0, "GPU-x", 50.0, 1e9, 8e9, 100.0, 60.0, 1400.0) for i in range(600)]
    w.append("gpu_samples", GPU_ROW, gpu)
    w.flush()
    n = w.call(lambda con: run_rollup(con, settle_s=0))
    assert n == 10
    cur = opened.con.cursor()
    avg, mx, samples = cur.execute(
        "SELECT cpu_percent, cpu_percent_max, samples FROM host_rollup_1m ORDER BY bucket LIMIT 1"
    ).fetchone()
    expected = [r[1] for r in rows[:60]]
    assert samples == 60 and mx == max(expected) and abs(avg - sum(expected) / 60) < 1e-9
    assert cur.execute("SELECT count(*) FROM gpu_rollup_1m").fetchone()[0] == 10
    # a second run adds nothing: the watermark moved
    assert w.call(lambda con: run_rollup(con, settle_s=0)) == 0
    # retention: raw kept 5 minutes, rollups 30 days
    w.call(lambda con: run_retention(con, raw_s=300, rollup_s=30 * 86400))
    left = cur.execute("SELECT epoch(min(ts)) FROM host_samples").fetchone()[0]
    assert left >= now - 301
    assert cur.execute("SELECT count(*) FROM host_rollup_1m").fetchone()[0] == 10


def test_series_raw_and_rollup(store):
    opened, w = store
    now = time.time()
    w.append("host_samples", HOST_ROW, host_rows(now - 120, 120))
    w.append(
        "gpu_samples",
        GPU_ROW,
        [(now - 60 + i, g, f"GPU-{g}", 10.0 * g, 1.0, 2.0, 3.0, 4.0, 5.0) for i in range(60) for g in (0, 1)],
    )
    w.flush()
    r = StoreReader(opened.con, raw_retention_s=86400)
    res = r.series("cpu_percent", now - 130, now, step=10)
    assert res.source == "raw" and len(res.series) == 1
    pts = res.series[0].points
    assert 12 <= len(pts) <= 14 and all(p.ts % 10 == 0 for p in pts)
    g = r.series("gpu_utilization_percent", now - 130, now, step=30)
    assert sorted(s.labels["gpu"] for s in g.series) == ["0", "1"]
    assert {s.labels["gpu"]: s.points[0].value for s in g.series} == {"0": 0.0, "1": 10.0}
    old = r.series("cpu_percent", now - 7 * 86400, now, step=None)
    assert old.source == "rollup_1m" and old.step_s >= 60
    with pytest.raises(UnknownMetric):
        r.series("rm -rf", now - 10, now, None)


CRASH_WRITER = """
import os, signal, sys, time
from pathlib import Path
from agent.store.db import open_store
from agent.store.writer import StoreWriter
from agent.telemetry.sampler import HOST_ROW
opened = open_store(Path(sys.argv[1]))
w = StoreWriter(opened.con, flush_interval=0.05)
w.start()
opened.con.execute("CHECKPOINT")
t0 = time.time()
for i in range(int(sys.argv[2])):
    w.append("host_samples", HOST_ROW, [(t0 + i, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0)])
w.flush()
print(w.stats.rows_written, flush=True)
os.kill(os.getpid(), signal.SIGKILL)
"""


def _crash(path: Path, n: int) -> int:
    r = subprocess.run(
        [sys.executable, "-c", CRASH_WRITER, str(path), str(n)], capture_output=True, text=True, timeout=60
    )
    assert r.returncode == -9, r.stderr
    return int(r.stdout.strip())


def test_kill9_keeps_every_flushed_row(tmp_path):
    path = tmp_path / "wk.duckdb"
    acknowledged = _crash(path, 500)
    assert acknowledged == 500
    assert Path(str(path) + ".wal").exists()  # the crash left a WAL to replay
    opened = open_store(path)
    assert opened.startup_alerts == []
    assert opened.con.execute("SELECT count(*) FROM host_samples").fetchone()[0] == 500
    opened.con.close()


def test_corrupt_wal_is_moved_aside_with_an_alert(tmp_path):
    path = tmp_path / "wk.duckdb"
    _crash(path, 500)
    wal = Path(str(path) + ".wal")
    data = bytearray(wal.read_bytes())
    for i in range(64, len(data), 7):
        data[i] ^= 0xFF
    wal.write_bytes(bytes(data))
    opened = open_store(path)
    assert [a[1] for a in opened.startup_alerts] == ["store.wal_replay_failed"]
    assert not wal.exists()
    assert any(p.name.startswith("wk.duckdb.wal.failed-") for p in tmp_path.iterdir())
    # the store is usable: schema there, writes work
    opened.con.execute("INSERT INTO agent_alerts VALUES (TIMESTAMP '2026-01-01', 'info', 'k', 'm')")
    opened.con.close()
    assert os.path.exists(path)


def test_large_batches_take_the_arrow_path_with_identical_results(tmp_path):
    from agent.serving.predlog import COLUMNS
    from agent.store.writer import ARROW_MIN_ROWS, insert_columns

    opened = open_store(tmp_path / "wk.duckdb")
    t0 = 1_700_000_000.25
    rows = [
        (t0 + i, f"r{i}", "ep", "m", 1, i, [float(i), None], ["JFK", None], 0.5, "x", 1.0, "ok", None)
        for i in range(ARROW_MIN_ROWS + 10)
    ]
    insert_columns(opened.con, "predictions", COLUMNS, rows[:5])  # unnest path
    insert_columns(opened.con, "predictions", COLUMNS, rows)  # arrow path
    got = opened.con.execute(
        "SELECT epoch(ts), num, cat FROM predictions WHERE request_id = 'r3' ORDER BY ts"
    ).fetchall()
    assert got[0] == got[1] == (t0 + 3, [3.0, None], ["JFK", None])
    assert opened.con.execute("SELECT count(*) FROM predictions").fetchone()[0] == len(rows) + 5
    opened.con.close()


def test_retention_prunes_old_predictions_their_feedback_and_drift_windows(store):
    opened, w = store
    now = time.time()

    def seed(con) -> None:
        for age, rid in ((10 * 86400, "old"), (3600, "new")):
            con.execute(
                f"INSERT INTO predictions (ts, request_id, endpoint, model, version, row_idx, latency_ms, status) "
                f"VALUES ({ts_from_unix('?')}, ?, 'ep', 'm', 1, 0, 1.0, 'ok')",
                [now - age, rid],
            )
            con.execute(
                f"INSERT INTO feedback VALUES ({ts_from_unix('?')}, ?, 'ep', ?, 0, 'x', NULL, 'p')",
                [now - age, now, rid],
            )
            con.execute(
                "INSERT INTO drift_windows VALUES ('ep', 'm', 1, ?, ?, 1, '{}')", [now - age * 5 - 60, now - age * 5]
            )

    w.call(seed)
    w.call(lambda con: run_retention(con, raw_s=300, rollup_s=30 * 86400, predictions_s=7 * 86400,
                                     windows_s=30 * 86400))  # fmt: skip
    cur = opened.con.cursor()
    assert [r[0] for r in cur.execute("SELECT request_id FROM predictions").fetchall()] == ["new"]
    assert [r[0] for r in cur.execute("SELECT request_id FROM feedback").fetchall()] == ["new"]
    assert cur.execute("SELECT count(*) FROM drift_windows").fetchone()[0] == 1  # 50 days old went, 5 h stayed
