"""The poller at fleet scale (issue 12): no TLS set-up for plain HTTP, a bounded number of requests in
flight with timeouts that start at the send, jittered backoff, staleness judged at the ask, and the
open files limit. Real HTTP on loopback (tests/console/wk_fakes.FakeHttpAgent)."""

from __future__ import annotations

import asyncio
import os
import random
import resource
import ssl
import subprocess
import sys
from pathlib import Path

import pytest

from console.core import client as client_mod
from console.core.client import AgentClient
from console.core.config import AgentSpec
from console.core.limits import fds_needed, fit_open_files
from console.core.poller import AgentState, FleetPoller
from tests.console.wk_fakes import (
    FakeHttpAgent,
    Reply,
    agent_routes,
    closed_url,
    make_alert,
    make_rollout,
    make_series,
    make_snapshot,
)

REPO = Path(__file__).resolve().parents[2]


class FakeClock:
    def __init__(self, t: float = 1_000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


async def test_plain_http_and_unix_clients_build_no_tls_context_and_https_ones_share_one(monkeypatch) -> None:
    made: list[object] = []
    real = ssl.create_default_context

    def counting(*args, **kwargs):
        made.append(args)
        return real(*args, **kwargs)

    client_mod.ssl_context_for(AgentSpec(name="warm", url="https://warm:1"))  # the shared one, built once
    monkeypatch.setattr(ssl, "create_default_context", counting)
    clients = [AgentClient(AgentSpec(name=f"h{i}", url=f"http://10.0.0.{i}:9200")) for i in range(20)]
    clients += [AgentClient(AgentSpec(name=f"s{i}", url=f"https://10.0.1.{i}:9200")) for i in range(20)]
    clients += [AgentClient(AgentSpec(name=f"u{i}", url=f"unix:///tmp/wk-none-{i}.sock")) for i in range(5)]
    for c in clients:
        await c.aclose()
    assert made == []  # today httpx builds one per client (~34 ms and ~0.9 MiB each)


def _counting_routes(name: str, gauge: dict[str, int], delay_s: float) -> dict:
    routes = agent_routes(name)

    def slow(handler):
        async def wrapped(path, query, headers):
            gauge["now"] += 1
            gauge["max"] = max(gauge["max"], gauge["now"])
            try:
                await asyncio.sleep(delay_s)
                return handler(path, query, headers) if callable(handler) else handler
            finally:
                gauge["now"] -= 1

        return wrapped

    return {path: slow(h) for path, h in routes.items()}


async def test_requests_in_flight_are_bounded_and_a_timeout_starts_at_the_send() -> None:
    gauge = {"now": 0, "max": 0}
    servers = [FakeHttpAgent(_counting_routes(f"a{i}", gauge, 0.1)) for i in range(8)]
    for s in servers:
        await s.start()
    try:
        # 8 agents x 3 requests of 0.1 s, 2 at a time: the last waits ~1.1 s for its turn, far past its
        # 0.6 s timeout, and must still count as answered (the agent took 0.1 s).
        specs = [AgentSpec(name=f"a{i}", url=s.url, timeout_s=0.6) for i, s in enumerate(servers)]
        async with FleetPoller(specs, max_in_flight=2) as poller:
            status = await poller.poll()
    finally:
        for s in servers:
            await s.stop()
    assert gauge["max"] <= 2
    assert [a.state for a in status.agents] == [AgentState.UP] * 8, [a.reason for a in status.agents]


async def test_agents_failing_together_retry_spread_out_never_later_than_their_backoff() -> None:
    clock = FakeClock()
    specs = [AgentSpec(name=f"d{i}", url=closed_url(), timeout_s=2.0) for i in range(30)]
    async with FleetPoller(specs, clock=clock, backoff_base_s=4.0, rng=random.Random(7)) as poller:
        status = await poller.poll()
    retries = [a.next_retry_at for a in status.agents]
    assert all(a.state is AgentState.DOWN for a in status.agents)
    assert all(1000.0 + 4.0 * 0.75 <= r <= 1000.0 + 4.0 for r in retries)  # type: ignore[operator]
    assert len({round(r, 3) for r in retries}) > 20  # type: ignore[arg-type]


async def test_a_slow_poll_does_not_make_a_fresh_sample_stale() -> None:
    """The agent samples every 2 s and hands out a fresh sample, but the poll takes 10 s (a big fleet)."""
    clock = FakeClock(5_000.0)
    routes = agent_routes("slowpoll", interval=2.0)

    def snapshot(path, query, headers):
        reply = Reply(200, make_snapshot("slowpoll", ts=clock.t))
        clock.t += 10.0  # the rest of the poll: the answer lands 10 s after the sample was taken
        return reply

    routes["/api/v1/snapshot"] = snapshot
    async with FakeHttpAgent(routes) as server:
        poller = FleetPoller([AgentSpec(name="slowpoll", url=server.url)], clock=clock)
        a = (await poller.poll()).agents[0]
        await poller.aclose()
    assert a.state is AgentState.UP, a.reason
    assert a.sample_age_s == pytest.approx(10.0)  # the age shown still counts from the sample


def test_open_files_limit_is_raised_to_the_hard_limit_and_a_fleet_beyond_it_is_refused() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        if hard != resource.RLIM_INFINITY:
            resource.setrlimit(resource.RLIMIT_NOFILE, (min(256, hard), hard))
            assert fit_open_files(10) is None
            assert resource.getrlimit(resource.RLIMIT_NOFILE)[0] == hard
            refusal = fit_open_files(hard)
            assert refusal is not None and f"need about {fds_needed(hard)} open files" in refusal
            assert "ulimit -n" in refusal
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_status_refuses_a_fleet_that_cannot_fit_the_hard_limit_in_one_line(tmp_path: Path) -> None:
    urls = ",".join(f"http://127.0.0.1:{20000 + i}" for i in range(300))
    script = f"ulimit -n 200 && exec {sys.executable} -m console.cli status --agents {urls}"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run(["bash", "-c", script], cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "300 agents need about" in lines[0] and "ulimit -n" in lines[0]


# --------------------------------------------------------------------------- one request per agent per poll


class SummaryAgent:
    """A fake agent with `/api/v1/summary` (ETag / 304), its alerts and its rollouts."""

    def __init__(self, name: str) -> None:
        from agent.schemas import AlertsResponse

        self.name = name
        self.ts = 1_000.0
        self.alerts = [make_alert("f1", host=name)]
        self.rollouts = [make_rollout("r-1")]
        self.routes = agent_routes(name)
        self.routes["/api/v1/summary"] = self._summary
        self.routes["/api/v1/alerting"] = lambda p, q, h: Reply(
            200, AlertsResponse(alerts=self.alerts, rules=[], webhooks=[])
        )
        self.routes["/api/v1/rollouts"] = lambda p, q, h: Reply(
            200, [r.model_dump(mode="json") for r in self.rollouts if q.get("active") == ["true"]]
        )

    def _summary(self, path, query, headers) -> Reply:
        from agent.schemas import AgentSummary

        firing: dict[str, int] = {}
        for a in self.alerts:
            if a.state == "firing":
                firing[a.severity] = firing.get(a.severity, 0) + 1
        body = (
            AgentSummary(
                agent_name=self.name,
                sample_interval_s=2.0,
                snapshot=make_snapshot(self.name, ts=self.ts),
                alerts_firing=firing,
                alerts_pending=0,
                rollouts_active=len(self.rollouts),
                rollouts_awaiting_approval=sum(1 for r in self.rollouts if r.state == "awaiting_approval"),
                endpoints=[],
            )
            .model_dump_json()
            .encode()
        )
        etag = f'"{hash(body) & 0xFFFFFFFF:x}"'
        if headers.get("if-none-match") == etag:
            return Reply(304, b"", headers={"etag": etag})
        return Reply(200, body, headers={"etag": etag})


async def test_the_poller_asks_an_agent_with_a_summary_one_request_and_sends_its_etag() -> None:
    agent = SummaryAgent("sum-1")
    agent.ts = __import__("time").time()
    async with FakeHttpAgent(agent.routes) as server:
        poller = FleetPoller([AgentSpec(name="sum-1", url=server.url)])
        first = (await poller.poll()).agents[0]
        second = (await poller.poll()).agents[0]
        await poller.aclose()
    assert server.count("/api/v1/snapshot") == 0 and server.count("/api/v1/summary") == 2
    summaries = [h for p, h in server.requests if p == "/api/v1/summary"]
    assert "if-none-match" not in summaries[0] and summaries[1]["if-none-match"].startswith('"')
    # The second answer was a 304: the sample (and its counts) carried over.
    assert first.state is second.state is AgentState.UP
    assert second.snapshot == first.snapshot and second.summary is not None and second.summary.rollouts_active == 1


async def test_feeds_nobody_looks_at_are_fetched_only_when_the_summary_says_they_changed() -> None:
    from console.rollouts.client import RolloutsPoller, rollout_feed

    clock = FakeClock()
    agent = SummaryAgent("sum-2")
    async with FakeHttpAgent(agent.routes) as server:
        poller = RolloutsPoller([AgentSpec(name="sum-2", url=server.url)], clock=clock)
        poller.want_feeds()  # as the app tells it: the fleet screen shows neither feed

        def fetched() -> tuple[int, int]:
            return server.count("/api/v1/alerting"), server.count("/api/v1/rollouts")

        await poller.poll()  # the first poll asks for everything
        alerts0, rollouts0 = fetched()
        assert alerts0 == 1 and rollouts0 >= 1
        for _ in range(3):
            clock.t += 2.0
            await poller.poll()
        assert fetched() == (alerts0, rollouts0)  # counts unchanged: nothing but the summary

        agent.alerts = [*agent.alerts, make_alert("f2", severity="critical", host="sum-2")]
        clock.t += 2.0
        status = await poller.poll()
        assert fetched() == (alerts0 + 1, rollouts0)
        assert status.agents[0].alerts is not None and len(status.agents[0].alerts.alerts) == 2

        agent.rollouts = [make_rollout("r-1", state="awaiting_approval")]
        clock.t += 2.0
        status = await poller.poll()
        feed = rollout_feed(status.agents[0])
        assert feed is not None and [r.state for r in feed.active] == ["awaiting_approval"]

        # The alerts screen is open: its feed is fetched on every poll, counts or not.
        poller.want_feeds("alerts")
        before = fetched()[0]
        for _ in range(2):
            clock.t += 2.0
            await poller.poll()
        assert fetched()[0] == before + 2

        # Nobody looks, nothing changes, but FEED_REFRESH_S passes: fetched again anyway.
        poller.want_feeds()
        before = fetched()[0]
        clock.t += 31.0
        await poller.poll()
        assert fetched()[0] == before + 1
        await poller.aclose()


async def test_the_app_tells_the_poller_which_feed_the_screen_in_front_shows_and_fetches_it_at_once() -> None:
    from console.app import WatchkeeperApp
    from console.monitoring.alerts_screen import AlertsScreen
    from console.rollouts.client import RolloutsPoller
    from console.rollouts.screen import RolloutsScreen
    from tests.console.wk_pilot import until

    agent = SummaryAgent("sum-3")
    agent.ts = __import__("time").time()
    async with FakeHttpAgent(agent.routes) as server:
        poller = RolloutsPoller([AgentSpec(name="sum-3", url=server.url)])
        app = WatchkeeperApp(poller, refresh_s=60)
        async with app.run_test(size=(120, 30)) as pilot:
            await until(pilot, lambda: app.polls_finished >= 1)
            assert poller.feeds_wanted == frozenset()  # the CLI's pollers: None (every feed)
            alerting = server.count("/api/v1/alerting")
            await pilot.press("exclamation_mark")
            await until(pilot, lambda: isinstance(app.screen, AlertsScreen))
            assert poller.feeds_wanted == {"alerts"}
            await until(pilot, lambda: server.count("/api/v1/alerting") > alerting, timeout=10)
            await pilot.press("R")
            await until(pilot, lambda: isinstance(app.screen, RolloutsScreen))
            assert poller.feeds_wanted == {"rollouts"}


# --------------------------------------------------------------------------- polling off the UI's loop


async def test_a_threaded_source_polls_on_its_own_thread_and_the_ui_loop_keeps_running() -> None:
    import threading
    import time as _time

    from console.core.poll_thread import ThreadedSource
    from console.core.poller import AgentTrack

    threads: set[int] = set()

    class BusyPoller(FleetPoller):
        async def poll_agent(self, track: AgentTrack) -> None:
            threads.add(threading.get_ident())
            _time.sleep(0.4)  # a big fleet's CPU burst: blocks whichever loop runs it
            await super().poll_agent(track)

    agent_ts = _time.time()
    routes = agent_routes("busy")
    routes["/api/v1/snapshot"] = lambda p, q, h: Reply(200, make_snapshot("busy", ts=agent_ts))
    routes["/api/v1/series"] = lambda p, q, h: Reply(200, make_series("cpu_percent", agent_ts - 60, agent_ts, 10.0))
    async with FakeHttpAgent(routes) as server:
        source = ThreadedSource(BusyPoller([AgentSpec(name="busy", url=server.url)]))
        worst = 0.0

        async def ticker() -> None:
            nonlocal worst
            while True:
                t = _time.perf_counter()
                await asyncio.sleep(0.01)
                worst = max(worst, _time.perf_counter() - t - 0.01)

        tick = asyncio.create_task(ticker())
        status = await source.poll()
        series = await source.series("busy", "cpu_percent", agent_ts - 60, agent_ts, 10.0)  # on demand, proxied
        tick.cancel()
        assert source.specs[0].name == "busy" and source.want_serving(True) is None
        await source.aclose()
    assert status.agents[0].state is AgentState.UP and len(series.series) >= 1
    assert threads == {source.thread.ident} and threading.get_ident() not in threads
    assert worst < 0.3  # the 0.4 s burst did not stall this loop
    assert not source.thread.is_alive()


# --------------------------------------------------------------------------- grouped state changes


async def test_many_agents_changing_state_in_one_poll_share_one_toast() -> None:
    from console.app import WatchkeeperApp
    from console.fleet.fleet_table import FleetTable
    from tests.console.wk_fakes import FakeSource, down, fleet, up
    from tests.console.wk_pilot import until

    source = FakeSource(fleet(*(up(f"gpu-{i:02d}", i) for i in range(12)), down("cpu-99", 12)))
    app = WatchkeeperApp(source, refresh_s=60)
    seen: list[tuple[str, str]] = []
    app.notify = lambda message, severity="information", **kw: seen.append((message, severity))  # type: ignore[method-assign]
    async with app.run_test(size=(120, 30)) as pilot:
        await until(pilot, lambda: app.polls_finished >= 1 and app.screen.query(FleetTable))
        t = app.screen.query_one(FleetTable)
        source.status = fleet(
            *(down(f"gpu-{i:02d}", i, reason="timeout after 2s") for i in range(10)),
            up("gpu-10", 10),
            up("gpu-11", 11),
            up("cpu-99", 12),
        )
        syncs = t.sync_count
        app.action_refresh_now()
        await until(pilot, lambda: t.sync_count > syncs)
        await pilot.pause()
    assert sorted(seen) == [
        ("10 agents down (timeout after 2s): gpu-00, gpu-01, gpu-02, gpu-03, gpu-04 … +5 more", "error"),
        ("cpu-99 is up again", "information"),
    ]


async def test_a_quiet_fleet_costs_one_request_per_agent_from_the_first_poll_but_the_cli_asks_everything() -> None:
    from console.rollouts.client import RolloutsPoller

    clock = FakeClock()
    agent = SummaryAgent("quiet")
    agent.alerts, agent.rollouts = [], []
    async with FakeHttpAgent(agent.routes) as server:
        spec = AgentSpec(name="quiet", url=server.url)
        tui = RolloutsPoller([spec], clock=clock)
        tui.want_feeds()  # the app: the fleet screen is in front
        for _ in range(3):
            clock.t += 40.0  # past FEED_REFRESH_S each time: a quiet agent is still not asked
            await tui.poll()
        assert server.count("/api/v1/alerting") == 0 and server.count("/api/v1/rollouts") == 0
        agent.alerts = [make_alert("f9", host="quiet")]
        clock.t += 2.0
        status = await tui.poll()
        assert server.count("/api/v1/alerting") == 1 and status.agents[0].alerts is not None
        assert [a.fingerprint for a in status.agents[0].alerts.alerts] == ["f9"]
        await tui.aclose()

        cli = RolloutsPoller([spec])  # `watchkeeper alerts` / `rollouts`: one poll, every feed
        await cli.poll()
        await cli.aclose()
    assert server.count("/api/v1/alerting") == 2 and server.count("/api/v1/rollouts") >= 1


def test_status_asks_no_serving_status_it_does_not_show() -> None:
    from console.fleet.status_cli import poll_once

    agent = SummaryAgent("st")
    agent.ts = __import__("time").time()

    async def go():
        async with FakeHttpAgent(agent.routes) as server:
            status = await poll_once([AgentSpec(name="st", url=server.url)])
        return server, status

    server, status = asyncio.run(go())
    assert status.agents[0].state is AgentState.UP
    assert server.count("/api/v1/serving") == 0 and server.count("/api/v1/summary") == 1
    assert server.count("/api/v1/host") == 0 and status.agents[0].sample_interval_s == 2.0  # the summary's


def test_status_of_an_older_agent_still_judges_staleness_by_its_own_interval() -> None:
    from console.fleet.status_cli import poll_once

    routes = agent_routes("old", interval=2.0)  # no /summary
    now = __import__("time").time()
    routes["/api/v1/snapshot"] = lambda p, q, h: Reply(200, make_snapshot("old", ts=now - 8.0))

    async def go():
        async with FakeHttpAgent(routes) as server:
            return await poll_once([AgentSpec(name="old", url=server.url)])

    a = asyncio.run(go()).agents[0]
    assert a.sample_interval_s == 2.0 and a.state is AgentState.STALE  # 8 s > 3 x 2 s (not 3 x the default 5 s)


async def test_the_first_poll_asks_only_for_what_the_table_shows_the_rest_spread_over_first_spread_s() -> None:
    clock = FakeClock()
    agent = SummaryAgent("sp")
    async with FakeHttpAgent(agent.routes) as server:
        specs = [AgentSpec(name=f"sp-{i}", url=server.url) for i in range(20)]
        poller = FleetPoller(specs, clock=clock, first_spread_s=30.0, rng=random.Random(3))
        await poller.poll()
        first = server.count("/api/v1/serving")
        clock.t += 15.0
        await poller.poll()
        middle = server.count("/api/v1/serving")
        clock.t += 16.0
        await poller.poll()
        await poller.aclose()
    assert first == 0 and 0 < middle < 20 and server.count("/api/v1/serving") == 20
    assert server.count("/api/v1/summary") == 60
