"""Import contracts: the agent never imports Textual; the console imports from agent/ only the wire schemas."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def imports_of(package: str) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for path in (ROOT / package).rglob("*.py"):
        names: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names.update(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names.add(node.module)
        out[str(path.relative_to(ROOT))] = names
    return out


def test_agent_does_not_import_textual():
    bad = {f: n for f, n in imports_of("agent").items() if any(m.split(".")[0] == "textual" for m in n)}
    assert bad == {}


def test_console_imports_only_the_wire_contract_from_agent():
    allowed = {"agent.api.schemas"}
    bad = {
        f: sorted(m for m in n if m.split(".")[0] == "agent" and m not in allowed)
        for f, n in imports_of("console").items()
    }
    assert {f: m for f, m in bad.items() if m} == {}


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
