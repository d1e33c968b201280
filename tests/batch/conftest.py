"""Helpers for the batch tests: a real agent serving the shipped flights model, input files made from its
reference data, and waiting on a batch."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import numpy as np
import polars as pl
import pyarrow.dataset as ds
import pytest

from tests.jobs.conftest import _no_job_left  # noqa: F401 (autouse: jobs outlive their agent)
from tests.serving.test_serving_agent import FEATURES, FLIGHTS, serving_delays

FINAL = {"succeeded", "failed", "cancelled"}
CONFIG = 'flush_interval = 0.2\n[jobs]\ntier = "psutil"\n'


def flights(n: int, offset: int = 0) -> pl.DataFrame:
    """n rows of the reference data (repeated when n is larger), with a unique `row_id` from offset."""
    ref = pl.read_parquet(FLIGHTS / "reference.parquet").select(FEATURES)
    reps = -(-n // ref.height)
    df = pl.concat([ref] * reps).head(n)
    return df.with_columns(pl.Series("row_id", np.arange(offset, offset + n, dtype=np.int64)))


def wait_batch(c: httpx.Client, bid: str, states: set[str] | None = None, timeout: float = 90.0,
               rows_done: int | None = None) -> dict:  # fmt: skip
    """Poll a batch until it is in one of `states` (default: final) or has `rows_done` rows done."""
    want = states or FINAL
    deadline = time.monotonic() + timeout
    b: dict = {}
    while time.monotonic() < deadline:
        b = c.get(f"/api/v1/batch/{bid}").json()
        if rows_done is not None and b["progress"]["rows_done"] >= rows_done and b["state"] == "running":
            return b
        if rows_done is None and b.get("state") in want:
            return b
        time.sleep(0.1)
    raise AssertionError(f"batch {bid} not in {want} after {timeout}s: {b}")


def read_output(path: str | Path) -> pl.DataFrame:
    return pl.from_arrow(ds.dataset(str(path), format="parquet", exclude_invalid_files=False).to_table())


def read_rejects(path: str | Path) -> pl.DataFrame:
    files = sorted(Path(path, "_rejects").glob("*.parquet"))
    return pl.concat([pl.read_parquet(f) for f in files]) if files else pl.DataFrame()


@pytest.fixture
def served(agent_factory):
    with serving_delays(agent_factory, "batch", CONFIG) as served:
        yield served
