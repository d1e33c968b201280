"""What import-linter (`just lint`, [tool.importlinter] in pyproject.toml) does not check: load-time import
circles, and what the idle daemon pulls in at start-up."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_every_module_imports_first_without_a_circle():
    # Each module of agent/ and console/ imported first, as if it were the entry point: a circle that only
    # bites in one import order (a partly initialised module) fails here, whichever module starts it.
    code = r"""
import importlib, pathlib, sys, traceback
mods = []
for pkg in ("agent", "console"):
    for p in sorted(pathlib.Path(pkg).rglob("*.py")):
        parts = p.with_suffix("").parts
        mods.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
failed = []
for m in mods:
    for k in [k for k in sys.modules if k.split(".")[0] in ("agent", "console")]:
        del sys.modules[k]
    try:
        importlib.import_module(m)
    except Exception:
        failed.append(m + ": " + traceback.format_exc().strip().splitlines()[-1])
print(len(mods))
print("\n".join(failed))
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    count, *failed = r.stdout.strip().splitlines()
    assert int(count) > 100
    assert failed == []


def test_idle_agent_imports_stay_light():
    # What the daemon imports at start-up must not pull heavy libraries (RSS budget: 100 MiB).
    code = (
        "import sys, agent.daemon, agent.telemetry.host, agent.telemetry.gpu; "
        "print(','.join(m for m in ('numpy', 'polars', 'pyarrow', 'pandas', 'onnxruntime', 'torch', 'textual') "
        "if m in sys.modules))"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == ""
