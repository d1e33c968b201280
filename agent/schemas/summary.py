"""`GET /api/v1/summary`: one compact answer per agent for the console's fleet screen.

What a fleet of 1,000 agents needs every refresh, in one request instead of three (snapshot, alerting,
active rollouts): the newest sample, alert counts by severity, rollouts awaiting approval, each
endpoint's health. The agent answers with an ETag and "304 Not Modified" to a matching If-None-Match.
A count the agent cannot give (the feature is not running there) is `None`, never a made-up zero.

The sample is lean (`snapshot_lean`): what the fleet table shows and no more. Its process lists, disks,
per-core CPU and each GPU's processes are left empty (at 1,000 agents polled every
2 s they were most of the bytes parsed and of the garbage made); `GET /api/v1/snapshot` has them all.
"""

from __future__ import annotations

from typing import Literal

from agent.schemas.common import _Wire
from agent.schemas.jobs import JobsSummary
from agent.schemas.telemetry import Snapshot


class EndpointHealth(_Wire):
    """One endpoint as the fleet screen needs it (the full `EndpointInfo` is on `/endpoints`)."""

    name: str
    model: str
    version: int | None
    loaded: bool
    fallback_mode: bool
    breaker_state: Literal["closed", "open", "half_open", "disabled"]


class AgentSummary(_Wire):
    agent_name: str
    sample_interval_s: float
    snapshot: Snapshot | None  # None until the first sample
    # True: `snapshot` leaves out top_cpu, top_rss, disks, cpu.per_core and the GPUs' processes (empty
    # lists, not "none there": ask `/snapshot`). False (an older agent): the whole sample.
    snapshot_lean: bool = False
    # severity -> alerts firing now (None: alerting not running on this agent)
    alerts_firing: dict[str, int] | None
    alerts_pending: int | None
    rollouts_active: int | None  # None: rollouts not running on this agent
    rollouts_awaiting_approval: int | None
    endpoints: list[EndpointHealth] | None  # None: serving not running on this agent
    jobs: JobsSummary | None = None  # None: jobs not running on this agent (or an older agent)
