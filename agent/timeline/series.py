"""The timeline's series on one shared time axis, each aggregated in DuckDB with `time_bucket` (one query per
source table, no per-row Python): traffic and latency as callers saw it from the prediction log, the top
feature's drift score, the host and its GPUs, XID errors.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable

from agent.schemas import TIMELINE_SERIES, TimelineSeries

Reader = Callable[[str, list], list[tuple]]

# Bucket widths offered, seconds; the smallest that keeps a range within `max_points` wins.
STEPS = (1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200, 86400)
MAX_POINTS = 360
# Fallback reasons that are the model failing (not an operator's switch or load shedding).
ERROR_REASONS = ("model_error", "timeout", "model_unavailable", "breaker_open")


def pick_step(span_s: float, max_points: int = MAX_POINTS) -> float:
    """A bucket width that fits the range: 1 h -> 10 s, 24 h -> 300 s, 7 d -> 1800 s (at 360 points)."""
    for s in STEPS:
        if span_s / s <= max_points:
            return float(s)
    return float(math.ceil(span_s / max_points))


def axis(since: float, until: float, step: float) -> tuple[float, int]:
    """The first bucket's start (aligned to the step) and the number of buckets covering [since, until]."""
    t0 = math.floor(since / step) * step
    return t0, max(1, math.ceil((until - t0) / step))


def _bucket(col: str) -> str:
    # time_bucket with the axis' origin, as an index into the axis (0 .. n-1).
    return (
        f"CAST(round((epoch(time_bucket(to_microseconds($us), {col}, make_timestamp($t0us))) - $t0) / $step) AS BIGINT)"
    )


def _ts(p: str) -> str:
    return f"make_timestamp(CAST(${p} * 1000000 AS BIGINT))"


def _fill(n: int, rows: list[tuple], width: int) -> list[list[float | None]]:
    """Columns of `width` values per bucket index (rows are (i, v1, v2, ...)); missing buckets stay None."""
    cols: list[list[float | None]] = [[None] * n for _ in range(width)]
    for row in rows:
        i = row[0]
        if 0 <= i < n:
            for c in range(width):
                v = row[c + 1]
                cols[c][i] = None if v is None or (isinstance(v, float) and math.isnan(v)) else float(v)
    return cols


def build_series(
    q: Reader, endpoint: str, since: float, until: float, step: float
) -> tuple[list[float], list[TimelineSeries]]:
    """Every series of TIMELINE_SERIES for the endpoint and its host, on the axis [since, until] by `step`."""
    t0, n = axis(since, until, step)
    p = {"t0": t0, "t0us": round(t0 * 1e6), "us": round(step * 1e6), "step": step, "a": since, "b": until}

    def qp(sql: str, extra: dict | None = None) -> list[tuple]:
        # DuckDB takes exactly the named parameters a statement uses.
        given = {**p, **(extra or {})}
        return q(sql, {k: given[k] for k in set(re.findall(r"\$(\w+)", sql))})

    values: dict[str, list[float | None]] = {}
    labels: dict[str, str] = {}

    # Callers' view: one row per request (row 0 carries its latency), mirrored shadow calls left out.
    # Exact percentiles: one quantile_cont with a list sorts each bucket once (3x cheaper than two
    # approx_quantile t-digests here, bench/timeline.py).
    rows = qp(
        f"""
        SELECT i, n / $step, q[1], q[2], err / n, fb / n FROM (
            SELECT {_bucket("ts")} AS i, count(*) AS n, quantile_cont(latency_ms, [0.5, 0.99]) AS q,
                   sum(CASE WHEN fallback_reason IN {ERROR_REASONS} THEN 1 ELSE 0 END) AS err,
                   sum(CASE WHEN status = 'fallback' THEN 1 ELSE 0 END) AS fb
            FROM predictions
            WHERE endpoint = $ep AND row_idx = 0 AND status <> 'shadow' AND ts >= {_ts("a")} AND ts <= {_ts("b")}
            GROUP BY i)""",
        {"ep": endpoint},
    )
    (values["requests_per_s"], values["p50_ms"], values["p99_ms"], values["error_share"],
     values["fallback_share"]) = _fill(n, rows, 5)  # fmt: skip

    # The feature that drifted most in the range, its score per bucket (windows by their end).
    top = qp(
        """SELECT feature FROM drift_scores WHERE endpoint = $ep AND baseline = 'reference'
           AND window_end >= $a AND window_end <= $b AND score IS NOT NULL
           GROUP BY feature ORDER BY max(score) DESC, feature LIMIT 1""",
        {"ep": endpoint},
    )
    if top:
        labels["drift_score"] = top[0][0]
        rows = qp(
            f"""SELECT {_bucket(_ts_expr("window_end"))} AS i, max(score) FROM drift_scores
                WHERE endpoint = $ep AND baseline = 'reference' AND feature = $f
                  AND window_end >= $a AND window_end <= $b GROUP BY i""",
            {"ep": endpoint, "f": top[0][0]},
        )
        (values["drift_score"],) = _fill(n, rows, 1)
    else:
        values["drift_score"] = [None] * n

    # The host: raw samples where they are kept, the 1-minute rollup before the oldest raw one.
    rows = qp(
        f"""
        WITH raw AS (SELECT ts, cpu_percent AS c, memory_percent AS m FROM host_samples
                     WHERE ts >= {_ts("a")} AND ts <= {_ts("b")}),
             cut AS (SELECT coalesce(min(ts), {_ts("b")}) AS t FROM raw),
             u AS (SELECT * FROM raw UNION ALL
                   SELECT bucket, cpu_percent, memory_percent FROM host_rollup_1m, cut
                   WHERE bucket >= {_ts("a")} AND bucket < cut.t)
        SELECT {_bucket("ts")} AS i, avg(c), avg(m) FROM u GROUP BY i"""
    )
    values["host_cpu_percent"], values["host_memory_percent"] = _fill(n, rows, 2)

    rows = qp(
        f"""
        WITH raw AS (SELECT ts, utilization_percent AS u, memory_used_bytes AS mu, memory_total_bytes AS mt
                     FROM gpu_samples WHERE ts >= {_ts("a")} AND ts <= {_ts("b")}),
             cut AS (SELECT coalesce(min(ts), {_ts("b")}) AS t FROM raw),
             x AS (SELECT * FROM raw UNION ALL
                   SELECT bucket, utilization_percent, memory_used_bytes, memory_total_bytes FROM gpu_rollup_1m, cut
                   WHERE bucket >= {_ts("a")} AND bucket < cut.t)
        SELECT {_bucket("ts")} AS i, avg(u), 100 * sum(mu) / nullif(sum(mt), 0) FROM x GROUP BY i"""
    )
    values["gpu_utilization_percent"], values["gpu_memory_percent"] = _fill(n, rows, 2)

    rows = qp(
        f"""SELECT {_bucket("ts")} AS i, sum(CAST(json_extract(detail, '$.count') AS BIGINT)) FROM agent_events
            WHERE kind = 'gpu.xid' AND ts >= {_ts("a")} AND ts <= {_ts("b")} GROUP BY i"""
    )
    (values["xid_errors"],) = _fill(n, rows, 1)

    buckets = [t0 + i * step for i in range(n)]
    series = [TimelineSeries(name=k, unit=u, values=values[k], label=labels.get(k, "")) for k, u in TIMELINE_SERIES]
    return buckets, series


def _ts_expr(col: str) -> str:
    return f"make_timestamp(CAST({col} * 1000000 AS BIGINT))"
