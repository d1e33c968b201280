"""Smoke runs of the benchmarks: they start, measure and print their tables (no machine-dependent numbers)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def run(script: str, *args: str, timeout: float) -> str:
    out = subprocess.run(
        [sys.executable, str(ROOT / "bench" / script), *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    return out.stdout


@pytest.mark.timeout(60)
def test_ingest_prints_a_table_with_a_positive_rate():
    out = run("ingest.py", "--seconds", "1", "--variants", "writer,paced,values", timeout=60)
    rows = {ln.split("  ")[0].strip(): ln for ln in out.splitlines() if ln.startswith(("writer", "VALUES"))}
    assert "writer" in rows and "VALUES" in rows, out
    m = re.match(r"writer\s+([\d,]+)\s+([\d,]+)", rows["writer"])
    assert m, rows["writer"]
    assert float(m.group(1).replace(",", "")) > 0 and int(m.group(2).replace(",", "")) > 0
    assert re.search(r"^target: .* -> (PASS|MISS)$", out, re.M), out


@pytest.mark.timeout(60)
@pytest.mark.skipif(shutil.which("wrk") is None and not Path("/usr/bin/wrk").exists(), reason="wrk is not installed")
def test_serving_quick_prints_every_system_and_level():
    out = run("serving.py", "--quick", "--systems", "agent,fastapi,inprocess", timeout=60)
    for system in ("agent", "fastapi"):
        for c in (1, 8, 32, 64):
            m = re.search(rf"^{system}\s+{c}\s+([\d,]+)\s+\S+\s+\S+\s+(\d+)\s+(\d+)", out, re.M)
            assert m, f"no {system} c={c} row:\n{out}"
            assert float(m.group(1).replace(",", "")) > 0
            assert int(m.group(2)) == 0 and int(m.group(3)) == 0, f"non-2xx or socket errors:\n{out}"
    assert len(re.findall(r"^in-process .*µs/call", out, re.M)) == 2, out
    assert "agent: same scores" in out and "fastapi: same scores" in out, out
    assert re.search(r"agent vs fastapi: .* -> (PASS|MISS)$", out, re.M), out
