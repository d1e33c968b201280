"""Smoke run of bench/overload.py: it measures capacity, offers the levels and prints its table and verdict."""

from __future__ import annotations

import re

import pytest

from tests.bench.test_bench_smoke import run


@pytest.mark.timeout(120)
def test_overload_bench_prints_every_level_and_a_verdict():
    out = run(
        "overload.py", "--seconds", "1", "--capacity-seconds", "1", "--levels", "1,4", "--conns", "16",
        timeout=120,
    )  # fmt: skip
    m = re.search(r"^capacity \(closed loop, \d+ conns\): ([\d,]+) req/s", out, re.M)
    assert m and int(m.group(1).replace(",", "")) > 0, out
    for level in ("1x open", "4x open", "16 conns"):
        # offered/s, sent/s, goodput/s, then the rest of the row
        row = re.search(rf"^{level}\s+([\d,]+)\s+([\d,]+)\s+([\d,]+)\s", out, re.M)
        assert row and int(row.group(1).replace(",", "")) > 0, f"no {level} row:\n{out}"
    rss = re.search(r"^agent peak RSS over the run: (\d+) MiB", out, re.M)
    assert rss and int(rss.group(1)) > 0, out
    assert re.search(r"^target: .* -> (PASS|MISS)$", out, re.M), out
