"""Batch transform: the flights model over 1M (and, with --large, 10M) rows of Parquet — rows/s and peak RSS of

    ort-limit   in-process ONNX Runtime on pre-encoded float32 arrays, 65,536 rows a call: the physical limit
    worker      `python -m agent.batch.worker` (what a batch job runs): Arrow ranges, vectorised encode, ORT,
                one Parquet part per range
    pandas      pd.read_parquet of the file, then per chunk: encode (get_dummies over the signature's categories),
                ORT, scores collected and written as one Parquet file — the way a user would otherwise do it
    polars      pl.scan_parquet(...).map_batches(encode + ORT, streamable=True).sink_parquet(...)

Every method runs in its own process with one ONNX Runtime thread (a batch job's default `cpu = 1`); peak RSS
is that process's maximum resident set (wait4). The data is the shipped sample resampled with replacement
into a temp dir (one file, 262,144-row row groups) with a `row_id` column.

    .venv/bin/python bench/batch.py [--rows 1000000] [--large] [--rows-per-batch 65536]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
FLIGHTS = ROOT / "sample_data" / "flights"
CALL_ROWS = 65536


def signature():
    from agent.schemas import Signature

    return Signature.model_validate(json.loads((FLIGHTS / "metadata.json").read_text())["signature"])


def generate(path: Path, rows: int) -> None:
    """Resample the reference rows (with replacement) into one Parquet file, written in 1M-row chunks."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    names = [f.name for f in signature().features]
    ref = pq.read_table(FLIGHTS / "reference.parquet", columns=names)
    rng = np.random.default_rng(7)
    with pq.ParquetWriter(path, ref.schema.append(pa.field("row_id", pa.int64()))) as w:
        for start in range(0, rows, 1_000_000):
            n = min(1_000_000, rows - start)
            t = ref.take(pa.array(rng.integers(0, ref.num_rows, n)))
            w.write_table(t.append_column("row_id", pa.array(np.arange(start, start + n))), row_group_size=262_144)


# --------------------------------------------------------------------------- the methods (each in its own process)


def run_ort_limit(data: Path, out: Path) -> tuple[int, float]:
    """Only the model calls are timed (one batch encoded once, scored over and over)."""
    import pyarrow.parquet as pq

    from agent.batch.columns import ArrowEncoder
    from agent.serving.runtimes import load_onnx

    rows = pq.ParquetFile(data).metadata.num_rows
    batch = next(pq.ParquetFile(data).iter_batches(batch_size=CALL_ROWS))
    x = ArrowEncoder(signature(), "impute").encode(batch).matrix
    rt = load_onnx(FLIGHTS / "model.onnx", 1)
    done = 0
    t0 = time.perf_counter()
    while done < rows:
        n = min(CALL_ROWS, rows - done)
        rt.run(x[:n])
        done += n
    return done, time.perf_counter() - t0


def _pandas_encode(df, sig):
    import numpy as np
    import pandas as pd

    blocks = []
    for f in sig.features:
        if f.dtype == "category":
            cat = pd.Categorical(df[f.name].fillna(f.impute), categories=f.categories)
            blocks.append(pd.get_dummies(cat).to_numpy(np.float32))
        else:
            blocks.append(df[f.name].fillna(f.impute).to_numpy(np.float32)[:, None])
    return np.hstack(blocks)


def run_pandas(data: Path, out: Path) -> int:
    import numpy as np
    import pandas as pd

    from agent.serving.runtimes import load_onnx

    sig = signature()
    rt = load_onnx(FLIGHTS / "model.onnx", 1)
    df = pd.read_parquet(data)
    scores = []
    for start in range(0, len(df), CALL_ROWS):
        chunk = df.iloc[start : start + CALL_ROWS]
        scores.append(rt.run(_pandas_encode(chunk, sig))[:, -1])
    s = np.concatenate(scores)
    res = pd.DataFrame({"row_id": df["row_id"].to_numpy(), "score": s})
    res["label"] = np.where(s >= sig.output.threshold, sig.output.labels[1], sig.output.labels[0])
    res.to_parquet(out / "scores.parquet")
    return len(res)


def run_polars(data: Path, out: Path) -> int:
    import numpy as np
    import polars as pl

    from agent.serving.runtimes import load_onnx

    sig = signature()
    rt = load_onnx(FLIGHTS / "model.onnx", 1)
    exprs = []
    for f in sig.features:
        if f.dtype == "category":
            col = pl.col(f.name).fill_null(f.impute)
            exprs += [(col == c).cast(pl.Float32).alias(f"{f.name}={c}") for c in f.categories or []]
        else:
            exprs.append(pl.col(f.name).fill_null(f.impute).cast(pl.Float32))
    lab = sig.output.labels or ["0", "1"]

    def score(df: pl.DataFrame) -> pl.DataFrame:
        x = np.ascontiguousarray(df.select(exprs).to_numpy())
        s = rt.run(x)[:, -1].astype(np.float64)
        return pl.DataFrame({"row_id": df["row_id"], "score": s,
                             "label": np.where(s >= sig.output.threshold, lab[1], lab[0])})  # fmt: skip

    schema = {"row_id": pl.Int64, "score": pl.Float64, "label": pl.String}
    pl.scan_parquet(data).map_batches(score, schema=schema, streamable=True).sink_parquet(out / "scores.parquet")
    return pl.scan_parquet(out / "scores.parquet").select(pl.len()).collect().item()


def run_worker(data: Path, out: Path) -> int:
    """What a batch job runs (`agent.batch.worker`), on the spec `worker_spec` wrote."""
    from agent.batch.worker import Worker

    w = Worker(out / "state")
    if w.run() != 0:
        raise SystemExit("worker failed")
    return w.progress["rows_done"]


def worker_spec(data: Path, out: Path, rows_per_batch: int) -> None:
    """Write the spec a batch job would get."""
    import pyarrow.parquet as pq

    from agent.batch.state import BatchSpec, InputFile

    sig = signature()
    d = out / "state"
    d.mkdir()
    spec = BatchSpec(
        id="b-bench", model="flights", version=1, endpoint=None, artifact=str(FLIGHTS / "model.onnx"), format="onnx",
        signature=sig.model_dump(mode="json"), missing_policy="impute", input=str(data), output=str(out / "parts"),
        files=[InputFile(str(data), "parquet", pq.ParquetFile(data).metadata.num_rows, data.stat().st_size)],
        id_column="row_id", rows_per_batch=rows_per_batch, log_sample_rate=0.001, threads=1,
    )  # fmt: skip
    (d / "spec.json").write_text(spec.to_json())


METHODS = {"ort-limit": run_ort_limit, "worker": run_worker, "pandas": run_pandas, "polars": run_polars}
PRELOAD = {"pandas": "pandas", "polars": "polars"}


def measure(argv: list[str]) -> tuple[float, float, float, int, int | None]:
    """(seconds of work, seconds of the process, CPU seconds of the process, peak RSS bytes, rows reported)."""
    t0 = time.perf_counter()
    p = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    _, status, ru = os.wait4(p.pid, 0)
    took = time.perf_counter() - t0
    out = p.stdout.read().decode() if p.stdout else ""
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{argv} failed ({status}):\n{out}")
    rows, work = None, took
    for line in out.splitlines():
        if line.startswith("ROWS "):
            rows, work = int(line.split()[1]), float(line.split()[2])
    return work, took, ru.ru_utime + ru.ru_stime, ru.ru_maxrss * 1024, rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--large", action="store_true", help="also 10M rows")
    ap.add_argument("--rows-per-batch", type=int, default=CALL_ROWS)
    ap.add_argument("--only", default="ort-limit,worker,pandas,polars")
    ap.add_argument("--method", help=argparse.SUPPRESS)
    ap.add_argument("--data", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.method:  # a child: run one method and report its rows and the seconds it took, imports excepted
        import importlib

        for mod in ("numpy", "pyarrow.parquet", "onnxruntime", "agent.batch.worker", PRELOAD.get(args.method)):
            if mod:
                importlib.import_module(mod)
        t0 = time.perf_counter()
        got = METHODS[args.method](Path(args.data), Path(args.out))
        rows, took = got if isinstance(got, tuple) else (got, time.perf_counter() - t0)
        print("ROWS", rows, took, flush=True)
        return 0
    sizes = [args.rows] + ([10_000_000] if args.large else [])
    methods = args.only.split(",")
    results = []
    with tempfile.TemporaryDirectory(prefix="wk-bench-batch-") as tmp:
        for rows in sizes:
            data = Path(tmp) / f"flights-{rows}.parquet"
            t0 = time.perf_counter()
            generate(data, rows)
            mib = data.stat().st_size / 2**20
            print(f"generated {rows:,} rows ({mib:.0f} MiB) in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
            for m in methods:
                out = Path(tempfile.mkdtemp(dir=tmp))
                if m == "worker":
                    worker_spec(data, out, args.rows_per_batch)
                argv = [sys.executable, __file__, "--method", m, "--data", str(data), "--out", str(out)]
                work, took, cpu, rss, got = measure(argv)
                if m == "worker":
                    import pyarrow.dataset as ds

                    got = ds.dataset(str(out / "parts"), format="parquet").count_rows()
                assert got == rows, (m, got, rows)
                results.append((rows, m, rows / work, took, cpu, rss))
                line = f"{rows / work:>12,.0f} rows/s  {took:6.1f} s  {cpu:6.1f} cpu s  {rss / 2**20:>7.0f} MiB"
                print(f"  {m:<10} {line}", file=sys.stderr)
                subprocess.run(["rm", "-rf", str(out)], check=False)
            data.unlink()
    print(f"\nbatch transform, flights model (13 features -> 30 floats), 1 ORT thread, {os.cpu_count()} cores")
    print("rows/s: rows / seconds of work (after imports); wall, cpu: the whole process, interpreter start included")
    print(f"{'rows':>11}  {'method':<10} {'rows/s':>12} {'vs limit':>9} {'vs pandas':>10} {'wall s':>7} {'cpu s':>6} "
          f"{'peak RSS':>10}")  # fmt: skip
    for rows, m, rate, took, cpu, rss in results:
        limit = next((r[2] for r in results if r[0] == rows and r[1] == "ort-limit"), None)
        pandas = next((r[2] for r in results if r[0] == rows and r[1] == "pandas"), None)
        vl = f"{rate / limit * 100:.0f} %" if limit else "-"
        vp = f"{rate / pandas:.2f}x" if pandas else "-"
        print(f"{rows:>11,}  {m:<10} {rate:>12,.0f} {vl:>9} {vp:>10} {took:>7.1f} {cpu:>6.1f} {rss / 2**20:>7.0f} MiB")
    targets(results, max(sizes))
    return 0


def targets(results: list[tuple], rows: int) -> None:
    """Issue 15's targets, judged at the largest size run (the RSS one only at 10M rows)."""
    got = {r[1]: r for r in results if r[0] == rows}
    w, limit, pandas = got.get("worker"), got.get("ort-limit"), got.get("pandas")
    if w is None:
        return
    print()
    if limit is not None:
        share = w[2] / limit[2]
        print(f"{'PASS' if share >= 0.7 else 'MISS'}  worker >= 70 % of the in-process limit: {share * 100:.0f} %")
    if pandas is not None:
        x, xcpu = w[2] / pandas[2], pandas[4] / w[4]
        print(f"{'PASS' if x >= 3 else 'MISS'}  worker >= 3x the pandas way: {x:.2f}x in rows/s ({xcpu:.2f}x in CPU s)")
    if rows >= 10_000_000:
        mib = w[5] / 2**20
        print(f"{'PASS' if mib <= 500 else 'MISS'}  worker peak RSS <= 500 MiB at {rows:,} rows: {mib:.0f} MiB")


if __name__ == "__main__":
    sys.exit(main())
