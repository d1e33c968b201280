"""Read queries for the API. Each call takes its own cursor, so readers never touch the writer's.

DuckDB connections are not safe to share across threads; cursors of one database are.
"""

from __future__ import annotations

import json
import math
import time

import duckdb

from agent.schemas import (
    GPU_METRICS,
    HOST_METRICS,
    AgentAlert,
    AuditEntry,
    Series,
    SeriesPoint,
    SeriesResponse,
)
from agent.store.sqltime import ts_from_unix

# Wire metric name -> (table family, column)
_HOST_COL = {m: m for m in HOST_METRICS}
_GPU_COL = {
    "gpu_utilization_percent": "utilization_percent",
    "gpu_memory_used_bytes": "memory_used_bytes",
    "gpu_power_watts": "power_watts",
    "gpu_temperature_c": "temperature_c",
}
assert set(_GPU_COL) == set(GPU_METRICS)

MAX_POINTS = 2000


class UnknownMetric(ValueError):
    pass


class StoreReader:
    def __init__(self, con: duckdb.DuckDBPyConnection, raw_retention_s: float) -> None:
        self.con = con
        self._raw_retention_s = raw_retention_s

    def _cursor(self) -> duckdb.DuckDBPyConnection:
        return self.con.cursor()

    def series(self, metric: str, start: float, end: float, step: float | None) -> SeriesResponse:
        """Points of one metric bucketed by `step` seconds (avg per bucket) over [start, end]."""
        if metric in _HOST_COL:
            col, gpu = _HOST_COL[metric], False
        elif metric in _GPU_COL:
            col, gpu = _GPU_COL[metric], True
        else:
            raise UnknownMetric(metric)
        span = max(end - start, 1.0)
        # Older than raw retention, or too long to bucket from raw rows cheaply: use the rollup.
        use_rollup = start < time.time() - self._raw_retention_s or span > 6 * 3600
        if step is None:
            step = max(span / 300, 60.0 if use_rollup else 1.0)
        step = max(step, span / MAX_POINTS, 60.0 if use_rollup else 0.0)
        if use_rollup:
            table, ts = ("gpu_rollup_1m" if gpu else "host_rollup_1m"), "bucket"
        else:
            table, ts = ("gpu_samples" if gpu else "host_samples"), "ts"
        group = "gpu_index, " if gpu else ""
        sql = f"""
            SELECT {group}any_value({"uuid" if gpu else "NULL"}),
                   floor(epoch({ts}) / $step) * $step AS b, avg({col})
            FROM {table}
            WHERE {ts} >= {ts_from_unix("$start")} AND {ts} <= {ts_from_unix("$end")}
            GROUP BY {group}b ORDER BY {group}b"""
        cur = self._cursor()
        try:
            rows = cur.execute(sql, {"step": step, "start": start, "end": end}).fetchall()
        finally:
            cur.close()
        series: dict[str, Series] = {}
        for row in rows:
            if gpu:
                idx, uuid, b, v = row
                key = str(idx)
                labels = {"gpu": key, "uuid": uuid or ""}
            else:
                _, b, v = row
                key, labels = "", {}
            s = series.get(key)
            if s is None:
                s = series[key] = Series(metric=metric, labels=labels, points=[])
            s.points.append(SeriesPoint(ts=b, value=None if v is None or math.isnan(v) else v))
        return SeriesResponse(
            start=start,
            end=end,
            step_s=step,
            source="rollup_1m" if use_rollup else "raw",
            series=list(series.values()),
        )

    def audit(self, limit: int = 100, after_seq: int | None = None) -> list[AuditEntry]:
        """Newest-last audit entries; `after_seq` pages forward."""
        cur = self._cursor()
        try:
            if after_seq is None:
                rows = cur.execute(
                    "SELECT * FROM (SELECT * FROM audit_log ORDER BY seq DESC LIMIT ?) ORDER BY seq", [limit]
                ).fetchall()
            else:
                rows = cur.execute(
                    "SELECT * FROM audit_log WHERE seq > ? ORDER BY seq LIMIT ?", [after_seq, limit]
                ).fetchall()
        finally:
            cur.close()
        return [audit_row(r) for r in rows]

    def alerts(self, limit: int = 100) -> list[AgentAlert]:
        cur = self._cursor()
        try:
            rows = cur.execute(
                "SELECT epoch(ts), severity, kind, message FROM agent_alerts ORDER BY ts DESC LIMIT ?",
                [limit],
            ).fetchall()
        finally:
            cur.close()
        return [AgentAlert(ts=r[0], severity=r[1], kind=r[2], message=r[3]) for r in rows]

    def counts(self) -> dict[str, int]:
        """Row counts of the sample tables (for /metrics and tests)."""
        cur = self._cursor()
        try:
            out = {}
            for t in ("host_samples", "gpu_samples", "host_rollup_1m", "gpu_rollup_1m", "audit_log"):
                out[t] = cur.execute(f"SELECT count(*) FROM {t}").fetchone()[0]
            return out
        finally:
            cur.close()


def audit_row(r: tuple) -> AuditEntry:
    seq, ts, principal, role, via, action, target, detail, client, prev_hash, h = r
    return AuditEntry(
        seq=seq,
        ts=ts,
        principal=principal,
        role=role,
        via=via,
        action=action,
        target=target,
        detail=json.loads(detail),
        client=client,
        prev_hash=prev_hash,
        hash=h,
    )
