"""Each agent polled on its own phase within the refresh interval (issue 12): real HTTP on loopback.

Timings here are generous (the box is shared); the tests count requests and compare their order
and rough spacing, not exact times.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections.abc import AsyncIterator

from console.core.config import AgentSpec
from console.core.poller import AgentState, FleetPoller, FleetStatus
from tests.console.wk_fakes import FakeHttpAgent, Reply, agent_routes, make_snapshot
from tests.console.wk_pilot import until

N = 12


def timed_routes(name: str, arrivals: list[tuple[str, float]]) -> dict:
    routes = agent_routes(name)

    def snapshot(path, query, headers):  # type: ignore[no-untyped-def]
        arrivals.append((name, time.monotonic()))
        return Reply(200, make_snapshot(name, ts=time.time()))

    routes["/api/v1/snapshot"] = snapshot
    return routes


async def start_fleet(arrivals: list[tuple[str, float]]) -> list[FakeHttpAgent]:
    servers = [FakeHttpAgent(timed_routes(f"p{i:02d}", arrivals)) for i in range(N)]
    for s in servers:
        await s.start()
    return servers


@contextlib.asynccontextmanager
async def phased_poller(
    arrivals: list[tuple[str, float]], batches: list[FleetStatus], every_s: float
) -> AsyncIterator[FleetPoller]:
    """A poller over N fake agents spreading its polls over 1.2 s, handing over every `every_s`."""
    servers = await start_fleet(arrivals)
    try:
        specs = [AgentSpec(name=f"p{i:02d}", url=s.url) for i, s in enumerate(servers)]
        async with FleetPoller(specs, ask_host=False, ask_serving=False) as poller:
            poller.want_phases(1.2, batches.append)
            poller.progress_every_s = every_s
            yield poller
    finally:
        for s in servers:
            await s.stop()


async def test_a_phased_poll_spreads_the_agents_over_the_interval_and_hands_over_small_batches() -> None:
    arrivals: list[tuple[str, float]] = []
    batches: list[FleetStatus] = []
    async with phased_poller(arrivals, batches, 0.1) as poller:
        first = await poller.poll()  # the first poll: everyone at once (nothing is on screen yet)
        burst = [t for _, t in arrivals]
        arrivals.clear()
        t0 = time.monotonic()
        second = await poller.poll()
    assert max(burst) - min(burst) < 0.5
    assert all(a.state is AgentState.UP for a in (*first.agents, *second.agents))
    # Agent i starts at i/N of the spread: in fleet order, the last ones most of the spread after the first.
    names = [n for n, _ in arrivals]
    assert sorted(names) == [f"p{i:02d}" for i in range(N)]
    assert names == sorted(names)
    offsets = {n: t - t0 for n, t in arrivals}
    assert offsets["p00"] < 0.5 and offsets[f"p{N - 1:02d}"] >= 1.2 * (N - 1) / N - 0.05
    # Handed over in several batches; an agent not polled since the last batch keeps its very object.
    assert len(batches) >= 3
    assert all(len(b.agents) == N for b in batches)
    later, earlier = batches[-1], batches[-2]
    kept = [a for a, b in zip(later.agents, earlier.agents, strict=True) if a is b]
    assert 0 < len(kept) < N
    assert [a.name for a in second.agents] == [f"p{i:02d}" for i in range(N)]


async def test_the_tui_shows_a_phased_poll_as_it_arrives_and_asks_every_agent_every_interval() -> None:
    from console.app import WatchkeeperApp
    from console.core.poll_thread import ThreadedSource
    from console.fleet.fleet_table import FleetTable

    arrivals: list[tuple[str, float]] = []
    servers = await start_fleet(arrivals)
    try:
        specs = [AgentSpec(name=f"p{i:02d}", url=s.url) for i, s in enumerate(servers)]
        source = ThreadedSource(FleetPoller(specs, ask_host=False, ask_serving=False))
        app = WatchkeeperApp(source, refresh_s=1.5)
        assert app.phased
        updates: list[int] = []
        async with app.run_test(size=(140, 40)) as pilot:
            await until(pilot, lambda: app.polls_finished >= 1, timeout=10)
            t = app.screen.query_one(FleetTable)
            await until(pilot, lambda: t.row_count == N)
            # Count the table's updates during the next complete polls: more than one per poll.
            start_polls, syncs = app.polls_finished, t.sync_count
            await until(pilot, lambda: app.polls_finished >= start_polls + 3, timeout=20)
            updates.append(t.sync_count - syncs)
            polls = app.polls_finished - start_polls
    finally:
        for s in servers:
            await s.stop()
    assert updates[0] > polls  # partial batches reached the table between complete polls
    # Every agent asked about once per interval, on its own phase: the gaps between one agent's asks
    # are about refresh_s (not refresh_s plus the poll, as when the next poll waited for the last).
    by_agent: dict[str, list[float]] = {}
    for name, at in arrivals:
        by_agent.setdefault(name, []).append(at)
    gaps = [b - a for times in by_agent.values() for a, b in itertools.pairwise(times[1:])]
    assert gaps and 1.0 < sorted(gaps)[len(gaps) // 2] < 2.2


async def test_refresh_now_asks_every_agent_at_once() -> None:
    arrivals: list[tuple[str, float]] = []
    servers = await start_fleet(arrivals)
    try:
        specs = [AgentSpec(name=f"p{i:02d}", url=s.url) for i, s in enumerate(servers)]
        async with FleetPoller(specs, ask_host=False, ask_serving=False) as poller:
            poller.want_phases(3.0)
            await poller.poll()
            arrivals.clear()
            poller.burst_next()  # the `r` key
            await asyncio.wait_for(poller.poll(), 2.0)  # not spread over 3 s
    finally:
        for s in servers:
            await s.stop()
    assert len(arrivals) == N


def test_phase_offsets_start_each_agent_in_the_first_half_of_its_slot() -> None:
    from console.core.poller import phase_offsets

    offsets = phase_offsets(1000, 1.5, 0.4)
    assert offsets == sorted(offsets) and offsets[0] == 0.0
    slots = round(1.5 / 0.4)
    for at in offsets:
        slot = int(at / 0.4 + 1e-9)
        assert slot < slots
        assert at - slot * 0.4 <= 0.2 + 1e-9  # half a slot left for the answer before the hand-over
    assert offsets[-1] > (slots - 1) * 0.4  # the whole spread is used
    assert phase_offsets(3, 0.0, 0.4) == [0.0, 0.0, 0.0]
    assert phase_offsets(0, 1.5, 0.4) == []


async def test_each_agent_reaches_the_screen_in_the_same_hand_over_every_poll() -> None:
    # A row's refresh is the poll period, not that give or take a hand-over: the batches are cut at
    # fixed times after each poll's start and every agent is asked early in its slot.
    arrivals: list[tuple[str, float]] = []
    batches: list[FleetStatus] = []
    async with phased_poller(arrivals, batches, 0.2) as poller:
        final = await poller.poll()
        where: list[dict[str, int]] = []
        for _ in range(2):
            batches.clear()
            before = final
            final = await poller.poll()
            seen: dict[str, int] = {}
            for j, status in enumerate([*batches, final]):
                for old, new in zip(before.agents, status.agents, strict=True):
                    if new is not old and new.name not in seen:
                        seen[new.name] = j
            where.append(seen)
    assert len(where[0]) == N and where[0] == where[1]
    assert len(set(where[0].values())) >= 4  # several hand-overs, not one at the end
