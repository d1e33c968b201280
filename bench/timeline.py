"""The incident timeline of one endpoint over 24 h: how long the agent takes to answer and the console to draw it.

A DuckDB file in a temp dir, opened and migrated as the agent does (`agent.store.db.open_store`), filled with
synthetic rows straight through SQL (seeded):

    predictions      1,000,000 rows of the endpoint `delays` over the 24 h (1-8 rows a request; 2 % fallbacks
                     for a model error, 1 % an operator's; shadow rows too, which the timeline leaves out),
                     plus 200,000 rows of another endpoint the query must skip
    host_samples     86,400 (one a second) and their 1,440 one-minute rollups
    gpu_samples      86,400 x 2 GPUs and their rollups
    drift_scores     1,440 windows x 13 features x 2 baselines
    events           endpoint configs and fallback switches, 20 rollouts with their events and audit entries,
                     300 alert events, breaker transitions, agent starts, 50 XID events

Then `TimelineService.timeline` (the code `GET /api/v1/endpoints/{name}/timeline` runs) over the 24 h, cold
(first call) and warm (median of `--runs`), the answer's JSON encoding, "what changed before" a moment, and
the console's `render` of the answer at 80x24 and 200x50 (median). Targets: the 24 h answer <= 300 ms
(query + JSON), the render <= 100 ms.

    .venv/bin/python bench/timeline.py [--runs 9] [--rows 1000000]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from agent.store.db import open_store
from agent.timeline.service import TimelineService
from console.timeline.render import render

DAY = 86400
FEATURES = [f"f{i:02d}" for i in range(13)]


def _ts(expr: str) -> str:
    return f"make_timestamp(CAST(({expr}) * 1000000 AS BIGINT))"


def fill(con, t0: float, rows: int) -> None:
    """Synthetic rows of 24 h from t0, all in SQL (setseed: the same data every run)."""
    con.execute("SELECT setseed(0.17)")
    con.execute(
        f"""
        INSERT INTO predictions
        SELECT {_ts(f"{t0} + i * {DAY}.0 / {rows}")}, 'r' || (i // 4), 'delays', 'flights',
               CASE WHEN i > {rows} * 0.6 THEN 4 ELSE 3 END, CAST(i % 4 AS INTEGER), [random(), random()], ['a'],
               random(), 'on_time', 2 + random() * 8 + CASE WHEN i % 1000 = 0 THEN 200 ELSE 0 END,
               CASE WHEN i % 100 < 2 THEN 'fallback' WHEN i % 100 = 2 THEN 'fallback'
                    WHEN i % 100 = 3 THEN 'shadow' ELSE 'ok' END,
               CASE WHEN i % 100 < 2 THEN 'model_error' WHEN i % 100 = 2 THEN 'operator' END, 'realtime'
        FROM range({rows}) t(i)"""
    )
    con.execute(
        f"""INSERT INTO predictions SELECT {_ts(f"{t0} + i * {DAY}.0 / 200000")}, 'o' || i, 'other', 'm', 1, 0,
            [1.0], ['a'], 0.5, 'x', 3.0, 'ok', NULL, 'realtime' FROM range(200000) t(i)"""
    )
    con.execute(
        f"""INSERT INTO host_samples (ts, cpu_percent, memory_percent, load1)
            SELECT {_ts(f"{t0} + i")}, 30 + 20 * random(), 50 + 5 * random(), 1.0 FROM range({DAY}) t(i)"""
    )
    con.execute(
        f"""INSERT INTO host_rollup_1m (bucket, samples, cpu_percent, memory_percent)
            SELECT {_ts(f"{t0} + i * 60")}, 60, 40, 52 FROM range(1440) t(i)"""
    )
    con.execute(
        f"""INSERT INTO gpu_samples (ts, gpu_index, uuid, utilization_percent, memory_used_bytes, memory_total_bytes)
            SELECT {_ts(f"{t0} + i // 2")}, CAST(i % 2 AS INTEGER), 'GPU-' || (i % 2), 100 * random(),
                   4e10 * random(), 8e10 FROM range({2 * DAY}) t(i)"""
    )
    con.execute(
        f"""INSERT INTO gpu_rollup_1m (bucket, gpu_index, uuid, samples, utilization_percent, memory_used_bytes,
                                       memory_total_bytes)
            SELECT {_ts(f"{t0} + (i // 2) * 60")}, CAST(i % 2 AS INTEGER), 'GPU-' || (i % 2), 60, 50, 2e10, 8e10
            FROM range(2880) t(i)"""
    )
    con.execute(
        f"""INSERT INTO drift_scores
            SELECT 'delays', 'flights', 3, {t0} + (w + 1) * 60.0, b, 'f' || lpad(CAST(f AS VARCHAR), 2, '0'), 'numeric',
                   'wasserstein', 0.09 * random() + CASE WHEN w > 1000 AND f = 3 THEN 1 ELSE 0 END,
                   w > 1000 AND f = 3,
                   'ok', 0.0, 0.0, 0.0
            FROM range(1440) a(w), range(13) c(f), (VALUES ('reference'), ('previous')) v(b)"""
    )
    for i in range(40):
        seq = i + 1
        body = {"model": "flights", "version": 3, "timeout_ms": 500 + i}
        con.execute(
            "INSERT INTO endpoint_events VALUES (?, ?, 'delays', ?, ?, ?)",
            [seq, t0 + i * 2000, "config" if i % 2 == 0 else "fallback",
             json.dumps(body if i % 2 == 0 else {"enabled": i % 4 == 1, "reason": "drill"}), "olga"],
        )  # fmt: skip
    aseq = rseq = 0
    for r in range(20):
        rid, start = f"r-{r:04d}", t0 + r * 4000 + 100
        for k, (kind, w, who) in enumerate([("created", 0, "olga"), ("step", 10, "olga"), ("approval", 50, "alice"),
                                            ("ended", 0, "watchkeeper-agent")]):  # fmt: skip
            rseq += 1
            body = {"snapshot": {"weight": w, "shadow": 0, "step_index": k}, "note": "started" if k == 1 else ""}
            con.execute(
                "INSERT INTO rollout_events VALUES (?, ?, ?, 'delays', ?, ?, ?)",
                [rseq, start + k * 60, rid, kind, json.dumps(body), who],
            )
        for k, (action, who) in enumerate([("rollout.start", "olga"), ("rollout.approve", "alice"),
                                           ("rollout.abort", "watchkeeper-agent")]):  # fmt: skip
            aseq += 1
            detail = {"rollout": rid, "endpoint": "delays", "step_index": k, "weight": 10, "reason": "because"}
            if who == "watchkeeper-agent":
                detail.update(automatic=True, on_behalf_of="alice", cause="alice approved step 1")
            target = "endpoint:delays" if k == 0 else f"rollout:{rid}"
            con.execute(
                "INSERT INTO audit_log VALUES (?, ?, ?, 'operator', 'token', ?, ?, ?, NULL, '', '')",
                [aseq, start + k * 60, who, action, target, json.dumps(detail)],
            )
    for a in range(30):
        fp = f"fp{a}"
        body = {"fingerprint": fp, "rule": "feature_drift", "kind": "feature_drift", "severity": "warning",
                "endpoint": "delays", "summary": "feature drift on f03", "state": "resolved"}  # fmt: skip
        con.execute("INSERT INTO alerts VALUES (?, ?, 'resolved', ?)", [fp, json.dumps(body), t0 + a * 2800])
        for k, ev in enumerate(["pending", "firing", "notified", "ack", "silence", "resolved", "notified"] + ["x"] * 3):
            con.execute(
                "INSERT INTO alert_events VALUES (?, ?, ?, ?)",
                [t0 + a * 2800 + k * 30, fp, ev, json.dumps({"principal": "olga", "comment": "looking"})],
            )
    con.execute(
        f"""INSERT INTO agent_events SELECT {_ts(f"{t0} + i * 1700")},
                CASE WHEN i % 5 = 0 THEN 'agent.start' WHEN i % 5 = 1 THEN 'gpu.xid' ELSE 'breaker.open' END,
                CASE WHEN i % 5 >= 2 THEN 'delays' END, 'event ' || i, '{{"count": 1}}' FROM range(50) t(i)"""
    )
    con.execute("CHECKPOINT")


def median_ms(fn, runs: int) -> tuple[float, object]:
    out, times = None, []
    for _ in range(runs):
        t = time.perf_counter()
        out = fn()
        times.append((time.perf_counter() - t) * 1000)
    return statistics.median(times), out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=9)
    ap.add_argument("--rows", type=int, default=1_000_000)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "watchkeeper.duckdb"
        opened = open_store(path)
        con = opened.con
        until = time.time()
        t0 = until - DAY
        t = time.perf_counter()
        fill(con, t0, args.rows)
        fill_s = time.perf_counter() - t
        svc = TimelineService(con, "bench-host")

        t = time.perf_counter()
        tl = svc.timeline("delays", t0, until)
        cold = (time.perf_counter() - t) * 1000
        warm, tl = median_ms(lambda: svc.timeline("delays", t0, until), args.runs)
        answer, body = median_ms(lambda: svc.timeline("delays", t0, until).model_dump_json(), args.runs)
        before, bef = median_ms(lambda: svc.before("delays", t0 + DAY * 0.7, 1800.0), args.runs)
        hour, _ = median_ms(lambda: svc.timeline("delays", until - 3600, until), args.runs)
        small, _ = median_ms(lambda: render(tl, 80, 16), args.runs)
        large, _ = median_ms(lambda: render(tl, 200, 40), args.runs)
        rows = con.execute("SELECT count(*) FROM predictions").fetchone()[0]
        con.close()

    print(f"bench/timeline.py  {os.cpu_count()} cores  {rows:,} logged rows ({args.rows:,} of the endpoint), "
          f"{DAY:,} host samples, {2 * DAY:,} GPU samples; fill {fill_s:.1f} s; median of {args.runs}")  # fmt: skip
    kib = len(body) / 1024
    print(f"24 h: {len(tl.buckets)} buckets of {tl.step_s:g} s, {len(tl.items)} items, answer {kib:.0f} KiB; "
          f"before: {len(bef.changes)} changes")  # fmt: skip
    table = [
        ("24 h timeline, first call (cold)", cold, None),
        ("24 h timeline (query)", warm, None),
        ("24 h timeline answer (query + JSON)", answer, 300.0),
        ("1 h timeline (query)", hour, None),
        ("what changed before (30 min + series)", before, None),
        ("render 24 h at 80x24 (chart)", small, 100.0),
        ("render 24 h at 200x50 (chart)", large, 100.0),
    ]
    print(f"{'measure':<42} {'ms':>9} {'target':>8} {'':>5}")
    for name, ms, target in table:
        verdict = "" if target is None else ("PASS" if ms <= target else "MISS")
        print(f"{name:<42} {ms:>9.1f} {'' if target is None else f'<= {target:g}':>8} {verdict:>5}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
