"""The job's command is the OOM killer's first choice, its wrapper is not (the wrapper writes the rc file)."""

from __future__ import annotations

import json
import subprocess
import sys

from agent.jobs.tiers.base import WRAPPER


def test_command_runs_with_a_higher_oom_score_adj_than_its_wrapper(tmp_path):
    rc = tmp_path / "rc"
    out = subprocess.run(
        [sys.executable, "-I", "-S", WRAPPER, "--rc", str(rc), "--", "sh", "-c", "cat /proc/self/oom_score_adj"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    with open("/proc/self/oom_score_adj") as f:
        ours = int(f.read())
    assert int(out.stdout.strip()) == min(1000, max(ours, 0) + 500)
    assert json.loads(rc.read_text())["exit_code"] == 0
