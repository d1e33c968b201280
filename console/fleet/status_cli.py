"""`watchkeeper status`: one poll of the fleet, printed as a table or JSON, no TUI."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from typing import IO, Any

from console.core.audit_heads import HeadStore
from console.core.config import AgentSpec
from console.core.poller import AgentState, FleetPoller, FleetStatus
from console.fleet.rows import fleet_rows, render_table

EXIT_ALL_UP = 0
EXIT_NOT_ALL_UP = 1


async def poll_once(specs: Sequence[AgentSpec], audit_heads: HeadStore | None = None) -> FleetStatus:
    """Poll every agent once (and check its audit chain against `audit_heads`) and close the connections."""
    # No `/serving` and, from an agent with a summary, no `/host`: the table and the JSON show
    # nothing of them that the summary lacks (two requests less per agent).
    async with FleetPoller(specs, audit_heads=audit_heads, ask_serving=False, ask_host=False) as poller:
        return await poller.poll()


def status_json(status: FleetStatus) -> dict[str, Any]:
    """The machine-readable document printed by `status --json`."""
    return {
        "polled_at": status.polled_at,
        "duration_s": round(status.duration_s, 3),
        "all_up": status.all_up,
        "audit_ok": not any(a.audit is not None and a.audit.broken for a in status.agents),
        "counts": {s.value: status.count(s) for s in AgentState},
        "agents": [row.as_json() for row in fleet_rows(status)],
    }


def run_status(specs: Sequence[AgentSpec], *, as_json: bool, out: IO[str], audit_heads: HeadStore | None = None) -> int:
    """Print the fleet's status; exit code 0 when every agent is up and no audit chain is broken, else 1.

    Each agent's audit chain is checked against the head this console remembers (console/core/audit_heads.py);
    a chain that no longer extends it is a loud line under the table."""
    status = asyncio.run(poll_once(specs, audit_heads if audit_heads is not None else HeadStore()))
    broken = [a for a in status.agents if a.audit is not None and a.audit.broken]
    if as_json:
        doc = status_json(status)
        for row, a in zip(doc["agents"], status.agents, strict=True):
            row["audit"] = None if a.audit is None else {"state": a.audit.state, "message": a.audit.message}
        out.write(json.dumps(doc, indent=2) + "\n")
    else:
        out.write(render_table(fleet_rows(status)) + "\n")
        for a in broken:
            out.write(f"!!! {a.label}: {a.audit.message}\n")  # type: ignore[union-attr]
    return EXIT_ALL_UP if status.all_up and not broken else EXIT_NOT_ALL_UP
