"""Smoke run of bench/timeline.py: it fills a store, queries through the route's code, renders, prints its table."""

from __future__ import annotations

import re

import pytest

from tests.bench.test_bench_smoke import run


@pytest.mark.timeout(120)
def test_timeline_bench_prints_its_table():
    out = run("timeline.py", "--rows", "20000", "--runs", "1", timeout=120)
    assert re.search(r"^24 h: 289 buckets of 300 s, \d+ items", out, re.M), out
    names = ("24 h timeline answer (query + JSON)", "render 24 h at 80x24 (chart)", "render 24 h at 200x50 (chart)")
    for name in names:
        assert re.search(rf"^{re.escape(name)}\s+[\d.]+\s+<= \d+\s+(PASS|MISS)$", out, re.M), out
