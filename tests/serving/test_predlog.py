"""The prediction log queues one object per request and the writer turns batches into Arrow columns."""

from __future__ import annotations

import time

from agent.serving.predlog import PredictionLog
from agent.store.db import open_store
from agent.store.writer import CHUNK_ROWS, StoreWriter


def _log(plog: PredictionLog, rid: str, rows: int, width: int = 2, endpoint: str = "ep") -> None:
    num = [float(r * 10 + c) if (r + c) % 3 else None for r in range(rows) for c in range(width)]
    cat = [f"c{r}" if r % 2 else None for r in range(rows)]
    scores = [r / 100 for r in range(rows)]
    plog.log(rid, endpoint, "m", 3, num, width, cat, 1, scores, ["x"] * rows, 1.5, "ok", None)


def test_rows_come_back_per_row_with_their_request_fields(tmp_path):
    store = open_store(tmp_path / "wk.duckdb")
    w = StoreWriter(store.con, flush_interval=60)
    plog = PredictionLog(w)
    w.start()
    t0 = time.time()
    _log(plog, "a", 3)
    _log(plog, "b", 1, width=4, endpoint="other")  # another model shape in the same batch
    n_big = CHUNK_ROWS + 7  # spans conversion chunks
    _log(plog, "c", n_big)
    w.flush()
    rows = store.con.execute(
        "SELECT request_id, endpoint, model, version, row_idx, num, cat, score, label, latency_ms, status, epoch(ts) "
        "FROM predictions ORDER BY request_id, row_idx"
    ).fetchall()
    w.stop()
    assert len(rows) == 3 + 1 + n_big and plog.rows_committed == len(rows) and plog.rows_dropped == 0
    a = [r for r in rows if r[0] == "a"]
    assert [r[4] for r in a] == [0, 1, 2]
    assert a[0][5] == [None, 1.0] and a[1][5] == [10.0, 11.0] and a[2][5] == [20.0, None]
    assert [r[6] for r in a] == [[None], ["c1"], [None]]
    assert [r[7] for r in a] == [0.0, 0.01, 0.02] and {r[8] for r in a} == {"x"}
    assert a[0][1:4] == ("ep", "m", 3) and a[0][9] == 1.5 and a[0][10] == "ok"
    assert abs(a[0][11] - t0) < 5
    b = [r for r in rows if r[0] == "b"]
    assert b[0][1] == "other" and b[0][5] == [None, 1.0, 2.0, None]
    c = [r for r in rows if r[0] == "c"]
    assert [r[4] for r in c] == list(range(n_big))
    last = n_big - 1
    assert c[-1][5] == [float(last * 10 + k) if (last + k) % 3 else None for k in range(2)]


def test_a_full_queue_drops_the_oldest_requests_and_counts_them(tmp_path):
    store = open_store(tmp_path / "wk.duckdb")
    w = StoreWriter(store.con, flush_interval=60, flush_rows=10_000)
    plog = PredictionLog(w, max_pending_rows=10)
    w.start()
    for i in range(6):
        _log(plog, f"r{i}", 3)  # 18 rows offered against a bound of 10
    assert plog.pending_rows <= 10 and w.buffered_rows == plog.pending_rows
    w.flush()
    kept = [r[0] for r in store.con.execute("SELECT DISTINCT request_id FROM predictions ORDER BY 1").fetchall()]
    w.stop()
    assert kept == ["r3", "r4", "r5"]  # whole requests, newest kept
    assert plog.rows_dropped == 9 and w.stats.dropped_by_table["predictions"] == 9
    assert plog.rows_committed == 9 and plog.rows_logged == 18


def test_nan_from_the_columnar_encoder_is_stored_as_null(tmp_path):
    store = open_store(tmp_path / "wk.duckdb")
    w = StoreWriter(store.con, flush_interval=60)
    plog = PredictionLog(w)
    w.start()
    plog.log("n", "ep", "m", 1, [float("nan"), 2.0], 2, ["x"], 1, [0.5], ["y"], 1.0, "ok", None)
    w.flush()
    got = store.con.execute("SELECT num FROM predictions").fetchone()[0]
    w.stop()
    assert got == [None, 2.0]
