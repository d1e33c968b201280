"""Request formats: JSON records vs columns, per row, through parse + validate + encode (the predict path's
share before the model), on real rows of the flights sample, at several rows per request.

    records   {"records": [{feature: value, ...}, ...]}   validated value by value (exact per-row errors)
    columns   {"columns": {feature: [values...], ...}}    numpy a column at a time when the columns are clean
                                                          (VECTOR_MIN_ROWS and up); else transposed to records

Each cell is the median of 7 timed repeats of enough requests to take ~0.1 s.

    .venv/bin/python bench/encode.py [--rows 1,16,64,256,1024,4096]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> int:
    import orjson
    import polars as pl

    from agent.schemas import Signature
    from agent.serving.encode import VECTOR_MIN_ROWS, Encoder

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", default="1,16,64,256,1024,4096")
    args = ap.parse_args()
    sizes = [int(x) for x in args.rows.split(",")]
    meta = json.loads((ROOT / "sample_data" / "flights" / "metadata.json").read_text())
    sig = Signature.model_validate(meta["signature"])
    names = [f.name for f in sig.features]
    df = pl.read_parquet(ROOT / "sample_data" / "flights" / "reference.parquet").head(max(sizes)).select(names)
    enc = Encoder(sig, "impute")

    def per_row_us(body: bytes, n: int, key: str) -> float:
        def once() -> None:
            payload = orjson.loads(body)
            if key == "records":
                enc.encode_records(payload["records"])
            else:
                enc.encode_columns(payload["columns"])

        t0 = time.perf_counter()
        once()
        reps = max(1, int(0.1 / max(time.perf_counter() - t0, 1e-6)))
        runs = []
        for _ in range(7):
            t0 = time.perf_counter()
            for _ in range(reps):
                once()
            runs.append((time.perf_counter() - t0) / reps / n * 1e6)
        return statistics.median(runs)

    print(f"\nparse + validate + encode, flights signature ({len(names)} features), µs per row (median of 7)\n")
    hdr = (
        f"{'rows/request':>12} {'records µs/row':>15} {'columns µs/row':>15} {'columns speed-up':>17} "
        f"{'records KiB':>12} {'columns KiB':>12}"
    )
    print(hdr)
    print("-" * len(hdr))
    for n in sizes:
        part = df.head(n)
        rec_body = orjson.dumps({"records": part.to_dicts()})
        col_body = orjson.dumps({"columns": {k: part[k].to_list() for k in names}})
        r = per_row_us(rec_body, n, "records")
        c = per_row_us(col_body, n, "columns")
        kib = f"{len(rec_body) / 1024:>12.1f} {len(col_body) / 1024:>12.1f}"
        print(f"{n:>12,} {r:>15.2f} {c:>15.2f} {r / c:>16.2f}x {kib}")
    print(f"\ncolumns are encoded with numpy from {VECTOR_MIN_ROWS} rows per request; below that they are transposed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
