"""1-minute rollups and retention, run periodically on the writer thread.

Raw samples are kept `retention.raw` (default 24 h) and rolled up into 1-minute avg/max rows kept
`retention.rollup` (default 30 d), so the file stays bounded on a host that runs for years.
"""

from __future__ import annotations

import time

import duckdb

from agent.store.migrations import GPU_COLUMNS, HOST_COLUMNS
from agent.store.sqltime import ts_from_unix

WATERMARK_KEY = "rollup_watermark"


def _aggs(cols: tuple[str, ...]) -> str:
    return ", ".join(f"avg({c}), max({c})" for c in cols)


def run_rollup(con: duckdb.DuckDBPyConnection, settle_s: float) -> int:
    """Roll up every complete minute older than `settle_s` (rows still in flight are not missed)."""
    end = (int(time.time() - settle_s) // 60) * 60
    rows = con.execute("SELECT value FROM meta WHERE key = ?", [WATERMARK_KEY]).fetchall()
    row = rows[0] if rows else None
    if row:
        start = float(row[0])
    else:
        first = con.execute("SELECT min(epoch(ts)) FROM host_samples").fetchall()[0][0]
        if first is None:
            return 0
        start = (int(first) // 60) * 60
    if end <= start:
        return 0
    bounds = [start, end]
    where = f"ts >= {ts_from_unix('?')} AND ts < {ts_from_unix('?')}"
    con.execute("BEGIN TRANSACTION")
    try:
        n = con.execute(
            f"""INSERT INTO host_rollup_1m
                SELECT time_bucket(INTERVAL 1 minute, ts) AS b, count(*), {_aggs(HOST_COLUMNS)}
                FROM host_samples WHERE {where} GROUP BY b""",
            bounds,
        ).fetchall()[0][0]
        con.execute(
            f"""INSERT INTO gpu_rollup_1m
                SELECT time_bucket(INTERVAL 1 minute, ts) AS b, gpu_index, any_value(uuid), count(*),
                       {_aggs(GPU_COLUMNS)}
                FROM gpu_samples WHERE {where} GROUP BY b, gpu_index""",
            bounds,
        )
        con.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", [WATERMARK_KEY, str(end)])
        con.execute("COMMIT")
    except Exception:
        con.execute("ROLLBACK")
        raise
    return int(n)


def run_retention(
    con: duckdb.DuckDBPyConnection,
    raw_s: float,
    rollup_s: float,
    predictions_s: float | None = None,
    windows_s: float | None = None,
) -> None:
    """Delete raw samples, rollups, logged predictions (with their feedback) and drift windows past retention."""
    now = time.time()
    raw_cut, roll_cut = [now - raw_s], [now - rollup_s]
    for table in ("host_samples", "gpu_samples"):
        con.execute(f"DELETE FROM {table} WHERE ts < {ts_from_unix('?')}", raw_cut)
    for table in ("host_rollup_1m", "gpu_rollup_1m"):
        con.execute(f"DELETE FROM {table} WHERE bucket < {ts_from_unix('?')}", roll_cut)
    con.execute(f"DELETE FROM agent_alerts WHERE ts < {ts_from_unix('?')}", roll_cut)
    con.execute(f"DELETE FROM agent_events WHERE ts < {ts_from_unix('?')}", roll_cut)
    if predictions_s is not None:
        cut = [now - predictions_s]
        con.execute(f"DELETE FROM predictions WHERE ts < {ts_from_unix('?')}", cut)
        # Labels join to predictions: one kept without its prediction would join nothing.
        con.execute(f"DELETE FROM feedback WHERE ts < {ts_from_unix('?')}", cut)
    if windows_s is not None:
        cut = [now - windows_s]
        con.execute("DELETE FROM drift_windows WHERE window_end < ?", cut)
        con.execute("DELETE FROM drift_scores WHERE window_end < ?", cut)


def make_maintenance(
    raw_s: float, rollup_s: float, settle_s: float, predictions_s: float | None = None, windows_s: float | None = None
):
    """The writer's periodic job: rollup first (so nothing is deleted before it is summarised)."""

    def maintenance(con: duckdb.DuckDBPyConnection) -> None:
        run_rollup(con, settle_s)
        run_retention(con, raw_s, rollup_s, predictions_s, windows_s)

    return maintenance
