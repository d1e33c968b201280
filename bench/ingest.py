"""Prediction-log ingest: rows/s the store writer commits, beside the naive ways to insert the same rows.

A producer thread logs requests of 1-64 rows each (uniform, seeded) built from real reference rows,
in the shape agent/serving/predlog.py writes (`PredictionLog.log`, the request path's own code), for
`--seconds` (default 10); then everything is flushed and `count(*)` of the table is what counts.
Each variant runs in its own process (fresh store in a temp dir, clean peak RSS):

    writer            agent.store.writer.StoreWriter as the agent runs it (small flush_interval, the
                      prediction journal attached: each request os.write-n to it before `log` returns),
                      the producer at full speed: the rate it commits when saturated, rows dropped past
                      its bounded buffer.
    writer @ 100k/s   the same, offered exactly the target rate: does it keep up without dropping?
    no journal @ 100k/s
                      `writer @ 100k/s` without the journal (the design before it), for its cost.
    row tuples @ 100k/s
                      the design before this one, offered the target rate too: the request path builds one
                      tuple per row and `StoreWriter.append`s them; the writer converts tuples to Arrow.
    executemany       each request's rows inserted in the request path, one parameterised row at a time.
    VALUES            each request's rows as one multi-row `INSERT ... VALUES (...), (...)` in the request path.
    what-if           not the agent as shipped: `writer @ 100k/s` with gc.freeze() + gc.set_threshold(100_000,
                      50, 100) and DuckDB checkpoint_threshold 64MB (the store opens with 4MB), to show
                      what those two settings are worth. Not counted in the verdict.

`request path` is what one log call costs the producer (for the writer: building the rows and the
append, plus any wait for the GIL while the writer thread converts a batch): the latency a predict
request would pay. Flush is one writer flush (buffer swap, conversion, INSERT, commit); for the naive
variants it is the request's INSERT. Target: >= 100k rows/s sustained, i.e. `writer @ 100k/s` commits
every row, drops none and has drained its backlog within 5 % of the run (the saturated run shows beside it
what a producer that never yields the GIL leaves the writer: the convoy a busy event loop causes).

Variants: writer, paced, no-journal, rows, executemany, values, what-if (all by default; ~90 s).

    .venv/bin/python bench/ingest.py [--seconds 10] [--flush-interval 0.2] [--variants writer,paced,...]
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

TARGET_ROWS_S = 100_000
VARIANTS = {
    "writer": "writer",
    "paced": f"writer @ {TARGET_ROWS_S // 1000}k/s",
    "no-journal": f"no journal @ {TARGET_ROWS_S // 1000}k/s",
    "rows": f"row tuples @ {TARGET_ROWS_S // 1000}k/s",
    "executemany": "executemany",
    "values": "VALUES",
    "what-if": "what-if, @ 100k/s",
}
PACED = ("paced", "no-journal", "rows", "what-if")
POOL_ROWS = 4096
WHAT_IF_CHECKPOINT = "64MB"


def vm_hwm_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def pct(xs: list[float], q: float) -> float:
    if not xs:
        return float("nan")
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


def request_pool(seed: int = 7) -> list[dict[str, Any]]:
    """Logged requests of 1-64 rows from real reference rows: the arguments of PredictionLog.log."""
    import polars as pl

    meta = json.loads((ROOT / "sample_data" / "flights" / "metadata.json").read_text())
    feats = meta["signature"]["features"]
    num_names = [f["name"] for f in feats if f["dtype"] != "category"]
    cat_names = [f["name"] for f in feats if f["dtype"] == "category"]
    df = pl.read_parquet(ROOT / "sample_data" / "flights" / "reference.parquet").head(POOL_ROWS)
    nums = [[None if v is None else float(v) for v in r] for r in df.select(num_names).rows()]
    cats = [list(r) for r in df.select(cat_names).rows()]
    scores = df["score"].to_list()
    rng = random.Random(seed)
    pool = []
    at = 0
    for k in range(1024):
        n = rng.randint(1, 64)
        if at + n > len(nums):
            at = 0
        sl = slice(at, at + n)
        at += n
        sc = scores[sl]
        pool.append(
            {
                "request_id": f"{k:016x}",
                "num": nums[sl],
                "cat": cats[sl],
                "num_flat": [v for r in nums[sl] for v in r],
                "cat_flat": [v for r in cats[sl] for v in r],
                "num_width": len(num_names),
                "cat_width": len(cat_names),
                "scores": sc,
                "labels": ["delayed" if s >= 0.22 else "on_time" for s in sc],
                "latency_ms": 0.3 + (k % 17) / 10,
            }
        )
    return pool


def _rows(req: dict[str, Any]) -> list[tuple]:
    """What PredictionLog.log appends (used where the naive variants insert themselves)."""
    ts = time.time()
    n = len(req["scores"])
    return [
        (ts, req["request_id"], "delays", "flights", 1, i, req["num"][i], req["cat"][i], req["scores"][i],
         req["labels"][i], req["latency_ms"], "ok", None)
        for i in range(n)
    ]  # fmt: skip


def child(variant: str, seconds: float, flush_interval: float, rate: float | None) -> dict[str, Any]:
    import agent.store.writer as writer_mod
    from agent.serving.predlog import COLUMNS, PredictionLog, replay_journal
    from agent.store.db import open_store
    from agent.store.sqltime import ts_from_unix

    pool = request_pool()
    tmp = Path(tempfile.mkdtemp(prefix="wk-ingest-"))
    store = open_store(tmp / "store.duckdb")
    con = store.con
    flushes: list[float] = []
    call_ms: list[float] = []
    insert_ms: list[float] = []
    offered = 0
    note = ""
    w = None
    if variant == "what-if":
        # Not the agent as shipped: what its GC and DuckDB settings would give (see the docstring).
        gc.freeze()
        gc.set_threshold(100_000, 50, 100)
        con.execute(f"SET checkpoint_threshold = '{WHAT_IF_CHECKPOINT}'")
    if variant in ("writer", "paced", "no-journal", "rows", "what-if"):
        w = writer_mod.StoreWriter(con, flush_interval=flush_interval)
        # Time every flush (the writer itself keeps only the last one).
        inner = getattr(w, "_flush_buffers", None)
        if inner is not None:

            def timed(_inner=inner, _w=w) -> None:
                n, t = _w.stats.flushes, time.perf_counter()
                _inner()
                if _w.stats.flushes != n:  # an empty buffer is no flush
                    flushes.append(time.perf_counter() - t)

            w._flush_buffers = timed  # type: ignore[method-assign]
        else:
            note = "flush timings unavailable"
        plog = PredictionLog(w)
        if variant != "no-journal":
            plog.attach_journal(replay_journal(con, tmp / "journal").journal)
        w.start()

        def log(req: dict[str, Any]) -> None:
            plog.log(req["request_id"], "delays", "flights", 1, req["num_flat"], req["num_width"], req["cat_flat"],
                     req["cat_width"], req["scores"], req["labels"], req["latency_ms"], "ok", None)  # fmt: skip

        if variant == "rows":

            def log(req: dict[str, Any]) -> None:
                w.append("predictions", COLUMNS, _rows(req))
    elif variant == "executemany":
        exprs = ", ".join(ts_from_unix("?") if c == "ts" else "?" for c in COLUMNS)
        sql = f"INSERT INTO predictions ({', '.join(COLUMNS)}) VALUES ({exprs})"

        def log(req: dict[str, Any]) -> None:
            rows = _rows(req)
            t = time.perf_counter()
            con.executemany(sql, rows)
            insert_ms.append(time.perf_counter() - t)
    elif variant == "values":
        one = "(" + ", ".join(ts_from_unix("?") if c == "ts" else "?" for c in COLUMNS) + ")"
        head = f"INSERT INTO predictions ({', '.join(COLUMNS)}) VALUES "

        def log(req: dict[str, Any]) -> None:
            rows = _rows(req)
            t = time.perf_counter()
            con.execute(head + ", ".join([one] * len(rows)), [v for r in rows for v in r])
            insert_ms.append(time.perf_counter() - t)
    else:
        raise SystemExit(f"unknown variant {variant}")

    def produce() -> None:
        nonlocal offered
        i = 0
        t0 = time.perf_counter()
        end = t0 + seconds
        while True:
            now = time.perf_counter()
            if now >= end:
                break
            if rate is not None:
                ahead = offered / rate - (now - t0)
                if ahead > 0:
                    time.sleep(ahead)
            req = pool[i % len(pool)]
            t = time.perf_counter()
            log(req)
            call_ms.append(time.perf_counter() - t)
            offered += len(req["scores"])
            i += 1

    t0 = time.perf_counter()
    th = threading.Thread(target=produce, name="producer")
    th.start()
    th.join()
    produced_s = time.perf_counter() - t0
    if w is not None:
        w.flush(timeout=120)
    elapsed = time.perf_counter() - t0
    committed = con.execute("SELECT count(*) FROM predictions").fetchone()[0]
    dropped = w.stats.rows_dropped if w is not None else 0
    if w is not None:
        w.stop()
        plog.close_journal()
    con.close()
    db_mib = sum(p.stat().st_size for p in tmp.iterdir() if p.is_file()) / 2**20
    shutil.rmtree(tmp)
    durations = flushes or insert_ms
    return {
        "offered": offered,
        "committed": committed,
        "dropped": dropped,
        "produce_s": produced_s,
        "elapsed_s": elapsed,
        "rate": committed / elapsed,
        "offered_rate": offered / produced_s,
        "flushes": len(durations),
        "flush_p50_ms": pct(durations, 0.5) * 1000,
        "flush_max_ms": max(durations, default=float("nan")) * 1000,
        "call_p99_ms": pct(call_ms, 0.99) * 1000,
        "call_max_ms": max(call_ms, default=float("nan")) * 1000,
        "peak_rss_mib": vm_hwm_mib(),
        "db_mib": db_mib,
        "note": note,
    }


def run_child(variant: str, args: argparse.Namespace) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--child", variant, "--seconds", str(args.seconds)]
    cmd += ["--flush-interval", str(args.flush_interval)]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=args.seconds * 3 + 180, cwd=ROOT)
    except subprocess.TimeoutExpired:
        return {"skipped": "timed out"}
    for line in out.stdout.splitlines():
        if line.startswith("INGESTJSON "):
            return json.loads(line[len("INGESTJSON ") :])
    return {"skipped": f"failed (rc {out.returncode}): {out.stderr.strip()[-300:]}"}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=10)
    ap.add_argument("--flush-interval", type=float, default=0.2)
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        rate = float(TARGET_ROWS_S) if args.child in PACED else None
        print("INGESTJSON " + json.dumps(child(args.child, args.seconds, args.flush_interval, rate)))
        return 0
    wanted = [v.strip() for v in args.variants.split(",") if v.strip()]
    bad = set(wanted) - set(VARIANTS)
    if bad:
        ap.error(f"unknown variants {sorted(bad)} (have {', '.join(VARIANTS)})")
    results = {}
    for v in wanted:
        print(f"measuring {VARIANTS[v]} ...", file=sys.stderr)
        results[v] = run_child(v, args)

    print(
        f"\nPrediction-log ingest, {args.seconds:g} s per variant, requests of 1-64 rows, flush_interval "
        f"{args.flush_interval:g} s ({os.cpu_count()} cores; each variant in a fresh process and store)\n"
    )
    hdr = (
        f"{'variant':<18} {'rows/s':>10} {'committed':>11} {'offered':>11} {'dropped':>10} {'flushes':>8} "
        f"{'flush p50 ms':>12} {'flush max ms':>12} {'req path p99 ms':>15} {'max ms':>8} {'peak RSS MiB':>12}"
    )
    print(hdr)
    print("-" * len(hdr))
    for v in wanted:
        r = results[v]
        if "skipped" in r:
            print(f"{VARIANTS[v]:<18} not measured: {r['skipped']}")
            continue
        print(
            f"{VARIANTS[v]:<18} {r['rate']:>10,.0f} {r['committed']:>11,} {r['offered']:>11,} {r['dropped']:>10,} "
            f"{r['flushes']:>8,} {r['flush_p50_ms']:>12.2f} {r['flush_max_ms']:>12.1f} {r['call_p99_ms']:>15.3f} "
            f"{r['call_max_ms']:>8.1f} {r['peak_rss_mib']:>12.0f}"
        )
    print(
        "\nrows/s = rows in the table / (producing + final flush); offered = rows handed over; "
        "flush = one writer flush, or for the naive variants one request's INSERT"
    )
    base = results.get("writer", {})
    paced = results.get("paced", {})
    if paced.get("rate") and results.get("rows", {}).get("rate"):
        r = results["rows"]
        print(
            f"offered {TARGET_ROWS_S:,} rows/s: {paced['rate']:,.0f} rows/s committed, {paced['dropped']:,} dropped "
            f"with one object per request; {r['rate']:,.0f} rows/s, {r['dropped']:,} dropped with row tuples"
        )
    best = max((x["rate"] for x in (base, paced) if x.get("rate")), default=None)
    for v in ("executemany", "values"):
        r = results.get(v, {})
        if best and r.get("rate"):
            print(f"writer (best of the two runs above) / {VARIANTS[v]}: {best / r['rate']:,.0f}x rows/s")
    verdicts = []
    if "rate" in base:
        verdicts.append(f"saturated {base['rate']:,.0f} rows/s")
    if "rate" in paced:
        verdicts.append(
            f"offered {paced['offered_rate']:,.0f} rows/s: {paced['committed']:,} of {paced['offered']:,} committed "
            f"at {paced['rate']:,.0f} rows/s, {paced['dropped']:,} dropped"
        )
    # Sustained = offered the target rate, everything committed, nothing dropped, and no backlog worth
    # more than 5 % of the run left to drain at the end. The saturated run is reported beside it.
    ok = (
        "rate" in paced
        and paced["dropped"] == 0
        and paced["committed"] == paced["offered"]
        and paced["offered_rate"] >= 0.98 * TARGET_ROWS_S
        and paced["rate"] >= 0.95 * TARGET_ROWS_S
    )
    measured = "; ".join(verdicts) or "writer not measured"
    print(f"\ntarget: >= {TARGET_ROWS_S:,} rows/s sustained ({measured}) -> {'PASS' if ok else 'MISS'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
