"""The agents' optional feeds in a fleet poll (alerts, rollouts): who has one, who lacks it, whose failed.

Both feeds carry a `FeedState` and an `error`; a view reads one through its accessor (`feed_of`). Plain
values and words for status lines; no Textual here. The pollers of those features share the machinery
here too: a `FeedTrack` per agent, `beside` to fetch a feed in the same round trip as the snapshot, and
`unless_unavailable` for an agent that lacks the route.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import Any, TypeVar

from console.core.errors import AgentError, as_agent_error, capture
from console.core.poller import AgentState, AgentStatus, AgentTrack, FleetStatus

T = TypeVar("T")
# A feed nobody is looking at, on an agent whose summary says nothing changed, is still fetched this often.
FEED_REFRESH_S = 30.0
_UNSET = object()


class FeedState(StrEnum):
    """Whether we know an agent's feed (its alerts, its rollouts)."""

    UNKNOWN = "unknown"  # not asked yet
    OK = "ok"
    NONE = "none"  # the agent has no alerting (older agent, or alerting not running)
    ERROR = "error"  # the last fetch failed; the feed keeps the last good answer, if any


def route_unavailable(exc: AgentError, code: str, status: int | None = None) -> bool:
    """The route is missing (404: older agent) or its service is not running on this agent (error
    `code`, with HTTP `status` where given)."""
    if exc.status_code == 404 and exc.error_code in (None, "not_found"):
        return True
    return exc.error_code == code and status in (None, exc.status_code)


async def unless_unavailable(request: Awaitable[T], unavailable: Callable[[AgentError], bool]) -> T | None:
    """`request`'s answer, or None when it failed because the agent lacks the route (`unavailable`)."""
    try:
        return await request
    except AgentError as exc:
        if unavailable(exc):
            return None
        raise


@dataclass
class FeedTrack:
    """One agent's optional feed (alerts, rollouts) between polls: the last one and when it was asked for.

    An agent without the route (FeedState.NONE) is asked again only every `idle_s` (see `due`)."""

    feed: Any  # AlertFeed, RolloutFeed: a frozen dataclass with `state` and `error`
    attempt_at: float | None = None
    # The agent's summary counts for this feed when it was last fetched (see `may_wait`).
    basis: Any = _UNSET
    quiet: bool = False  # `basis` counted nothing at all

    def due(self, now: float, idle_s: float) -> bool:
        """Whether to ask at `now` (then noted as the attempt)."""
        if self.feed.state is FeedState.NONE and self.attempt_at is not None and now - self.attempt_at < idle_s:
            return False
        self.attempt_at = now
        return True

    def may_wait(self, track: AgentTrack, now: float, wanted: bool, refresh_s: float = FEED_REFRESH_S) -> bool:
        """Whether this poll may skip the feed, pending the agent's summary (then `settled` decides): no
        screen shows it (`wanted`), the agent has (or may have) a summary, and the last fetch worked and
        is recent, or the agent's counts for it were all zero (nothing to show but what the screen
        fetches when it opens)."""
        if wanted or track.summary_route is False:
            return False
        if self.basis is _UNSET:
            return True  # the first poll: the summary decides
        if self.feed.state is FeedState.ERROR:
            return False
        if self.quiet:
            return True
        return self.attempt_at is not None and now - self.attempt_at < refresh_s

    def settled(self, counts: object, quiet: bool) -> bool:
        """After the summary: True when the feed can still be skipped (the counts are those of the last
        fetch, or on a first poll all zero); a skipped first poll remembers them."""
        if self.basis is _UNSET:
            if quiet:
                self.basis, self.quiet = counts, True
                return True
            return False
        return self.basis == counts

    def based_on(self, counts: object, quiet: bool) -> None:
        """The feed was fetched when the summary's counts were `counts`."""
        self.basis, self.quiet = counts, quiet

    def failed(self, result: object) -> None:
        """The fetch failed: keep the last good answer, marked as an error."""
        self.feed = replace(self.feed, state=FeedState.ERROR, error=as_agent_error(result).message)


async def beside(poll: Awaitable[None], fetch: Awaitable[Any]) -> Any:
    """Run an agent's poll and one more fetch concurrently (one round trip); the fetch's answer or exception."""
    _, result = await asyncio.gather(poll, capture(fetch))
    return result


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
