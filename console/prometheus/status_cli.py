"""`watchkeeper status --prometheus URL`: the fleet table from one round of PromQL, no TUI."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from typing import IO

from console.core.config import AgentSpec
from console.core.poller import FleetStatus
from console.fleet.rows import fleet_rows, render_table
from console.fleet.status_cli import status_json
from console.prometheus.client import PrometheusError
from console.prometheus.source import PrometheusSource

EXIT_ALL_UP = 0
EXIT_NOT_ALL_UP = 1


async def poll_prometheus(url: str, specs: Sequence[AgentSpec]) -> FleetStatus:
    """One poll of the fleet through Prometheus; PrometheusError if Prometheus did not answer."""
    async with PrometheusSource(url, specs) as source:
        status = await source.poll()
        if source.last_error is not None:
            raise PrometheusError(source.last_error)
        return status


def run_status(url: str, specs: Sequence[AgentSpec], *, as_json: bool, out: IO[str]) -> int:
    """Print the fleet's status as Prometheus sees it; 0 when every agent is up, else 1.

    An unreachable Prometheus raises PrometheusError (the CLI prints it as one line, exit 2): an
    empty table would read as "nothing wrong"."""
    status = asyncio.run(poll_prometheus(url, specs))
    if as_json:
        doc = status_json(status)
        doc["prometheus"] = url
        out.write(json.dumps(doc, indent=2) + "\n")
    else:
        out.write(render_table(fleet_rows(status)) + "\n")
    return EXIT_ALL_UP if status.all_up and status.agents else EXIT_NOT_ALL_UP
