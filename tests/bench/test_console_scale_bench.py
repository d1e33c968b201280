"""Smoke run of bench/console_scale.py at a tiny fleet: it records a real agent, serves the fake fleet,
times `status --json` and the headless TUI, and prints its table and verdicts."""

from __future__ import annotations

import re

import pytest

from tests.bench.test_bench_smoke import run


@pytest.mark.timeout(240)
def test_console_scale_bench_prints_a_row_per_size_and_verdicts():
    out = run("console_scale.py", "--sizes", "3,6", "--seconds", "2", timeout=240)
    for n in (3, 6):
        # the row: agents, first table, ..., up (TUI) n/n ... status rc 0 and n/n up
        row = re.search(rf"^\s+{n}\s+([\d.]+)s\s.*\s{n}/{n}\s+([\d.]+)s\s+0\s+{n}/{n}\s*$", out, re.M)
        assert row and float(row.group(1)) > 0 and float(row.group(2)) > 0, out
        assert re.search(rf"^target: {n} agents all shown up \(TUI and status\) -> PASS$", out, re.M), out
    assert len(re.findall(r"^target: .* -> (PASS|MISS)$", out, re.M)) == 14, out
