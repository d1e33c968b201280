"""`watchkeeper status`: one poll of the fleet, printed as a table or JSON, no TUI."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from typing import IO, Any

from console.client import AgentState, FleetPoller, FleetStatus
from console.config import AgentSpec
from console.rows import fleet_rows, render_table

EXIT_ALL_UP = 0
EXIT_NOT_ALL_UP = 1


async def poll_once(specs: Sequence[AgentSpec]) -> FleetStatus:
    """Poll every agent once and close the connections."""
    async with FleetPoller(specs) as poller:
        return await poller.poll()


def status_json(status: FleetStatus) -> dict[str, Any]:
    """The machine-readable document printed by `status --json`."""
    return {
        "polled_at": status.polled_at,
        "duration_s": round(status.duration_s, 3),
        "all_up": status.all_up,
        "counts": {s.value: status.count(s) for s in AgentState},
        "agents": [row.as_json() for row in fleet_rows(status)],
    }


def run_status(specs: Sequence[AgentSpec], *, as_json: bool, out: IO[str]) -> int:
    """Print the fleet's status; exit code 0 when every agent is up, else 1."""
    status = asyncio.run(poll_once(specs))
    if as_json:
        out.write(json.dumps(status_json(status), indent=2) + "\n")
    else:
        out.write(render_table(fleet_rows(status)) + "\n")
    return EXIT_ALL_UP if status.all_up else EXIT_NOT_ALL_UP
