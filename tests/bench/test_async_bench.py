"""Smoke run of bench/async.py: every row of its table is printed with figures."""

from __future__ import annotations

import re

import pytest

from tests.bench.test_bench_smoke import run


@pytest.mark.timeout(180)
def test_async_bench_prints_its_table():
    out = run("async.py", "--requests", "200", "--seconds", "1", "--concurrency", "4", timeout=180)
    for row in ("durable commit: record file append", "durable commit: StoreWriter.call", "202 latency",
                "async drain", "real-time predict, same bodies", "real time alone", "real time beside"):  # fmt: skip
        assert re.search(rf"^\| {re.escape(row)}.*\| .*\d", out, re.M), f"no {row!r} row:\n{out}"
