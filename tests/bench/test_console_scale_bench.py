"""Smoke run of bench/console_scale.py at a tiny fleet: it records a real agent, serves the fake fleet,
times `status --json` and the headless TUI, directly and (with the binary) through a real Prometheus,
and prints its table and verdicts."""

from __future__ import annotations

import re

import pytest

from tests.bench.test_bench_smoke import run


@pytest.mark.timeout(400)
def test_console_scale_bench_prints_a_row_per_size_and_mode_and_verdicts():
    from tests.promproc import prometheus_available

    modes = ["direct", "prom"] if prometheus_available() else ["direct"]
    extra = [] if "prom" in modes else ["--no-prometheus"]
    out = run("console_scale.py", "--sizes", "3,6", "--seconds", "2", *extra, timeout=400)
    for n in (3, 6):
        for mode in modes:
            # the row: agents, mode, first table, ..., up (TUI) n/n ... status rc 0 and n/n up, prom CPU
            row = re.search(rf"^\s+{n}\s+{mode}\s+([\d.]+)s\s.*\s{n}/{n}\s+([\d.]+)s\s+0\s+{n}/{n}\s+\S+%$", out, re.M)
            assert row and float(row.group(1)) > 0 and float(row.group(2)) > 0, out
            assert re.search(rf"^target: {n} agents {mode} all shown up \(TUI and status\) -> PASS$", out, re.M), out
    assert len(re.findall(r"^target: .* -> (PASS|MISS)$", out, re.M)) == 7 * 2 * len(modes), out
