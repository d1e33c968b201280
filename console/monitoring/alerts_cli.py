"""`watchkeeper alerts`: one poll of the fleet's alerts, printed as a table or JSON, no TUI.

Rows are those of the TUI's alerts screen (`console.monitoring.alert_rows`): firing first, and an agent that did
not answer is listed as a critical `agent_down` alert of its own. Exit codes: 0 every agent's alerts
were read; 1 some agent did not answer or its alerts could not be read (one line on stderr says
which); 2 usage or configuration (from `console.cli`).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from typing import IO, Any

from console.core.config import AgentSpec
from console.core.feeds import FeedState, is_outage
from console.core.poller import FleetStatus
from console.monitoring.alert_rows import STATES, alert_rows, render_alerts
from console.monitoring.client import MonitoringPoller

EXIT_OK = 0
EXIT_UNREAD = 1


async def poll_alerts(specs: Sequence[AgentSpec], state: str | None = None) -> FleetStatus:
    """Poll every agent once (snapshot and alerts) and close the connections."""
    async with MonitoringPoller(specs, alerts_state=state) as poller:
        return await poller.poll()


def unread(status: FleetStatus) -> list[str]:
    """'host (why)' for every agent whose alerts we could not read."""
    out = []
    for agent in status.agents:
        feed = agent.alerts
        if is_outage(agent):
            out.append(f"{agent.label} ({agent.reason})")
        elif feed is None or feed.state in (FeedState.ERROR, FeedState.UNKNOWN):
            out.append(f"{agent.label} ({feed.error if feed and feed.error else 'not asked'})")
    return out


def alerts_json(status: FleetStatus, state: str | None) -> dict[str, Any]:
    """The document printed by `alerts --json`."""
    rows = alert_rows(status, [state] if state else None)
    agents = []
    for agent in status.agents:
        feed = agent.alerts
        agents.append(
            {
                "name": agent.name,
                "label": agent.label,
                "state": agent.state.value,
                "reason": agent.reason,
                "alerting": feed.state.value if feed else FeedState.UNKNOWN.value,
                "error": feed.error if feed else None,
            }
        )
    return {
        "polled_at": status.polled_at,
        "state": state,
        "counts": {s: sum(1 for r in rows if r.state == s) for s in STATES},
        "alerts": [r.as_json() for r in rows],
        "agents": agents,
    }


def run_alerts(specs: Sequence[AgentSpec], *, state: str | None, as_json: bool, out: IO[str], err: IO[str]) -> int:
    """Print the fleet's alerts; exit 0 when every agent's alerts were read, else 1."""
    status = asyncio.run(poll_alerts(specs, state))
    if as_json:
        out.write(json.dumps(alerts_json(status, state), indent=2) + "\n")
    else:
        rows = alert_rows(status, [state] if state else None)
        out.write((render_alerts(rows) if rows else f"no {state + ' ' if state else ''}alerts") + "\n")
    without = [a.label for a in status.agents if a.alerts is not None and a.alerts.state is FeedState.NONE]
    if without:
        err.write(f"watchkeeper alerts: no alerting on {', '.join(without)} (older agent, or alerting off)\n")
    failed = unread(status)
    if failed:
        err.write(f"watchkeeper alerts: {len(failed)} of {len(status.agents)} agents not read: {', '.join(failed)}\n")
        return EXIT_UNREAD
    return EXIT_OK
