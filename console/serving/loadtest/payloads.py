"""Request bodies built before the clock starts: from a data file or generated from the model's signature."""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.schemas import FeatureSpec
from console.serving.loadtest.options import LoadtestError

# Distinct request bodies built before the run (cycled through), and the most rows they may hold.
BODY_POOL = 256
BODY_POOL_ROWS = 2_000_000
DATA_ROWS_LIMIT = 200_000
# A numeric feature without min/max is drawn from this range.
DEFAULT_RANGE = (0.0, 100.0)


def feature_value(f: FeatureSpec, rng: random.Random) -> Any:
    """A valid random value for one feature of a signature."""
    if f.dtype == "bool":
        return rng.random() < 0.5
    if f.dtype == "category":
        return rng.choice(f.categories) if f.categories else "unknown"
    lo, hi = f.min, f.max
    if lo is None and hi is None:
        lo, hi = DEFAULT_RANGE
    elif lo is None:
        lo = hi - (DEFAULT_RANGE[1] - DEFAULT_RANGE[0])  # type: ignore[operator]
    elif hi is None:
        hi = lo + (DEFAULT_RANGE[1] - DEFAULT_RANGE[0])
    assert lo is not None and hi is not None
    if f.dtype == "int":
        a, b = math.ceil(lo), math.floor(hi)
        return rng.randint(a, b) if a <= b else round(lo)
    return round(rng.uniform(lo, hi), 6)


def generated_rows(features: Sequence[FeatureSpec]) -> Callable[[random.Random], dict[str, Any]]:
    """A row maker for a signature."""

    def make(rng: random.Random) -> dict[str, Any]:
        return {f.name: feature_value(f, rng) for f in features}

    return make


def sampled_rows(rows: Sequence[dict[str, Any]]) -> Callable[[random.Random], dict[str, Any]]:
    """A row maker that samples (with replacement) from rows read from a file."""
    if not rows:
        raise LoadtestError("the data file has no rows")

    def make(rng: random.Random) -> dict[str, Any]:
        return dict(rows[rng.randrange(len(rows))])

    return make


def read_data(path: Path, features: Sequence[str] | None, limit: int = DATA_ROWS_LIMIT) -> tuple[list[dict], list[str]]:
    """Rows of a parquet / CSV / JSON-lines file (first `limit`), restricted to `features` if known.

    Returns the rows and a list of warnings (e.g. features the file lacks).
    """
    import polars as pl

    suffix = path.suffix.lower()
    try:
        if suffix in (".parquet", ".pq"):
            frame = pl.scan_parquet(path).head(limit).collect()
        elif suffix in (".csv", ".tsv"):
            frame = pl.scan_csv(path, separator="\t" if suffix == ".tsv" else ",").head(limit).collect()
        elif suffix in (".jsonl", ".ndjson"):
            frame = pl.scan_ndjson(path).head(limit).collect()
        elif suffix == ".json":
            frame = pl.read_json(path).head(limit)
        else:
            raise LoadtestError(f"--data: unknown file type {suffix or '(none)'}: use .parquet, .csv or .jsonl")
    except LoadtestError:
        raise
    except Exception as exc:  # polars raises many kinds; all mean "cannot read this file"
        raise LoadtestError(f"--data: cannot read {path}: {type(exc).__name__}: {exc}") from None
    warnings: list[str] = []
    if features:
        absent = [f for f in features if f not in frame.columns]
        if len(absent) == len(features):
            raise LoadtestError(f"--data: {path} has none of the model's features ({', '.join(features)})")
        if absent:
            warnings.append(f"data file lacks feature(s) {', '.join(absent)}: they are sent as missing")
        frame = frame.select([c for c in features if c in frame.columns])
    # JSON has numbers, strings, booleans and null; anything else (dates, categoricals) goes as text.
    casts = [
        pl.col(name).cast(pl.String)
        for name, dtype in frame.schema.items()
        if not (dtype.is_numeric() or dtype == pl.Boolean or dtype == pl.String)
    ]
    if casts:
        frame = frame.with_columns(casts)
    rows = frame.to_dicts()
    if features:
        for row in rows:
            for f in features:
                row.setdefault(f, None)
    return rows, warnings


@dataclass(frozen=True)
class Body:
    content: bytes
    rows: int


def build_bodies(
    make_row: Callable[[random.Random], dict[str, Any]],
    rng: random.Random,
    *,
    rows: tuple[int, int],
    count: int,
    missing_rate: float = 0.0,
    columnar: bool = False,
) -> list[Body]:
    """`count` request bodies of `rows` (uniform MIN..MAX) rows each, values nulled at `missing_rate`."""
    import orjson

    bodies: list[Body] = []
    for _ in range(count):
        n = rng.randint(rows[0], rows[1])
        records = [make_row(rng) for _ in range(n)]
        if missing_rate > 0:
            for record in records:
                for key in record:
                    if rng.random() < missing_rate:
                        record[key] = None
        if columnar:
            names = list(dict.fromkeys(k for r in records for k in r))
            payload: dict[str, Any] = {"columns": {k: [r.get(k) for r in records] for k in names}}
        else:
            payload = {"records": records}
        bodies.append(Body(orjson.dumps(payload), n))
    return bodies


def pool_size(requests: int | None, max_rows: int) -> int:
    """How many distinct bodies to build: enough variety, bounded in memory."""
    size = max(1, min(BODY_POOL, BODY_POOL_ROWS // max(1, max_rows)))
    return min(size, requests) if requests is not None else size
