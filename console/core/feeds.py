"""The agents' optional feeds in a fleet poll (alerts, rollouts): who has one, who lacks it, whose failed.

Both feeds carry a `FeedState` and an `error`; a view reads one through its accessor (`feed_of`). Plain
values and words for status lines; no Textual here.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from console.core.client import AgentState, AgentStatus, FleetStatus
from console.monitoring.client import FeedState

FeedOf = Callable[[AgentStatus], Any]  # an agent's AlertFeed or RolloutFeed, None when not asked


def is_outage(agent: AgentStatus) -> bool:
    """The agent was asked and did not answer (an agent not polled yet is not an outage)."""
    return agent.state is AgentState.DOWN and agent.error_kind is not None


def feed_counts(status: FleetStatus, feed_of: FeedOf) -> dict[str, int]:
    """How many agents' feeds we have, lack (the agent has no such feature) or failed to read."""
    counts = {s.value: 0 for s in FeedState}
    for agent in status.agents:
        feed = feed_of(agent)
        counts[(feed.state if feed else FeedState.UNKNOWN).value] += 1
    return counts


def feed_problems(status: FleetStatus, feed_of: FeedOf) -> list[str]:
    """'host (why)' for every answering agent whose feed could not be read."""
    out = []
    for agent in status.agents:
        feed = feed_of(agent)
        if feed is not None and feed.state is FeedState.ERROR and not is_outage(agent):
            out.append(f"{agent.label} ({feed.error})")
    return out


def feed_parts(status: FleetStatus, feed_of: FeedOf, what: str, lacking: str) -> list[str]:
    """Status-line parts: '`what` from 3/4 agents', '1 `lacking`', 'unreadable: host (why)'."""
    counts = feed_counts(status, feed_of)
    parts = [f"{what} from {counts[FeedState.OK.value]}/{len(status.agents)} agents"]
    if counts[FeedState.NONE.value]:
        parts.append(f"{counts[FeedState.NONE.value]} {lacking}")
    problems = feed_problems(status, feed_of)
    if problems:
        parts.append(f"unreadable: {', '.join(problems)}")
    return parts
