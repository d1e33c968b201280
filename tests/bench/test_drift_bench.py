"""Smoke run of bench/drift.py with tiny sizes, the watchkeeper variant only (no Evidently install): the
table prints, every injected drift and both quality cases are flagged, and no untouched column is."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

NUMERIC = [f"n{i:02d}" for i in range(20)]
CATEGORICAL = [f"c{i}" for i in range(5)]
DRIFT = {"n01", "n05", "n09", "n14", "c1"}  # mean shifts, sd x1.5, category frequencies
QUALITY = {"n12", "c3"}  # missing 0.5% -> 5%, 2% unseen category
UNTOUCHED = set(NUMERIC + CATEGORICAL) - DRIFT - QUALITY


def names(text: str) -> set[str]:
    return set() if text.strip() == "none" else {c.strip() for c in text.split(",")}


@pytest.mark.timeout(60)
def test_drift_bench_watchkeeper_flags_what_was_injected_and_nothing_else():
    out = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "drift.py"), "--ref-rows", "5000", "--cur-rows", "20000",
         "--variants", "watchkeeper"],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    text = out.stdout
    assert not re.search(r"^watchkeeper\s+not measured", text, re.M), text

    row = re.search(r"^watchkeeper\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)\s+.*?(\d+) / (\d+)", text, re.M)
    assert row, text
    assert float(row.group(1)) > 0

    # Per-column flags: "watchkeeper  drift: a, b | quality: c: ...; d: ..."
    m = re.search(r"^watchkeeper\s+drift: (.*?)(?: \| quality: (.*))?$", text, re.M)
    assert m, text
    drifted = names(m.group(1))
    quality = {part.split(":")[0].strip() for part in (m.group(2) or "").split("; ") if part.strip()}
    assert drifted >= DRIFT, f"missed drift {DRIFT - drifted}:\n{text}"
    assert quality | drifted >= QUALITY, f"missed quality cases {QUALITY - quality - drifted}:\n{text}"
    assert not (drifted | quality) & UNTOUCHED, f"false alarms {(drifted | quality) & UNTOUCHED}:\n{text}"
    assert (int(row.group(5)), int(row.group(6))) == (len(drifted), len(quality)), text

    recall = r"^recall watchkeeper\s+drift 5/5, quality 2/2 caught; missed: none; false alarms: none$"
    assert re.search(recall, text, re.M), text
    assert re.search(r"10k-row window update median [\d.]+ ms", text), text
    assert re.search(r"^target: .* -> (PASS|MISS)$", text, re.M), text
