"""Smoke run of bench/jobs.py: the single-node Slurm half is measured for real, and the agent's column
either holds figures or says why it holds none (an agent without the jobs API), never a crash."""

from __future__ import annotations

import re

import pytest

from tests.bench.test_bench_smoke import run
from tests.slurmproc import unavailable_reason


@pytest.mark.timeout(300)
def test_jobs_bench_quick_prints_both_columns_and_verdicts():
    out = run("jobs.py", "--quick", timeout=300)
    assert re.search(r"^measure\s+agent\s+slurm(\s+agent\+slurm)?\s+target \(agent\)$", out, re.M), out
    row = r"^(submit -> RUNNING p50|submits/s \(1 client\))\s{2,}(.*)$"
    rows = {m.group(1): m.group(2) for m in re.finditer(row, out, re.M)}
    assert set(rows) == {"submit -> RUNNING p50", "submits/s (1 client)"}, out
    agent_failed = re.search(r"^agent: not measured: (.+)$", out, re.M)
    if agent_failed:
        # today's main has no executor: the bench says so in the agent's column instead of crashing
        assert rows["submit -> RUNNING p50"].split()[0] == "-", out
    else:
        assert re.match(r"[\d,.]+ ms", rows["submit -> RUNNING p50"]), out
    if unavailable_reason() is None:
        slurm_p50 = re.search(r"^submit -> RUNNING p50\s+\S+(?: ms)?\s+([\d,.]+) ms\s", out, re.M)
        assert slurm_p50 and float(slurm_p50.group(1).replace(",", "")) > 0, out
        rate = re.search(r"^submits/s \(1 client\)\s+\S+\s+([\d,]+)/s\s", out, re.M)
        assert rate and int(rate.group(1).replace(",", "")) > 0, out
        assert re.search(r"^CPU with 5 running\s+.*\(5 up\)", out, re.M), out
        assert "slurm: not measured" not in out, out
    else:
        assert "slurm: not measured: " in out, out
    assert len(re.findall(r"^target: .* -> (PASS|MISS)$", out, re.M)) == 3, out
