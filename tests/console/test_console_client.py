"""AgentClient and FleetPoller against real local HTTP servers."""

from __future__ import annotations

import ast
import socket
import time
from email.utils import formatdate
from pathlib import Path

import pytest

from console.core.client import AgentClient
from console.core.config import AgentSpec
from console.core.errors import AgentError, ErrorKind
from console.core.poller import AgentState, FleetPoller
from tests.console.wk_fakes import FakeHttpAgent, Reply, agent_routes, make_host, make_snapshot
from tests.console.wk_pilot import imports_textual

REPO = Path(__file__).resolve().parents[2]


def spec(name: str, url: str, *, token: str | None = "tok", timeout: float = 2.0) -> AgentSpec:
    return AgentSpec(name=name, url=url, token=token, timeout_s=timeout)


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class FakeClock:
    def __init__(self, t: float = 1_000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


async def test_snapshot_sends_bearer_token_and_parses() -> None:
    async with FakeHttpAgent(agent_routes("gpu-01", token="tok")) as server:
        client = AgentClient(spec("gpu-01", server.url))
        snap = await client.snapshot()
        host = await client.host_info()
        await client.aclose()
    assert snap.agent_name == "gpu-01" and len(snap.gpus) == 2
    assert host.sample_interval_s == 2.0
    path, headers = server.requests[0]
    assert path == "/api/v1/snapshot"
    assert headers["authorization"] == "Bearer tok"


@pytest.mark.parametrize(
    ("reply", "token", "kind", "reason"),
    [
        (Reply(401, {"error": "unauthorized"}), "tok", ErrorKind.UNAUTHORIZED, "401 bad token"),
        (Reply(401, {"error": "unauthorized"}), None, ErrorKind.UNAUTHORIZED, "401 no token"),
        (
            Reply(403, {"error": "forbidden", "detail": "viewer"}),
            "tok",
            ErrorKind.FORBIDDEN,
            "403 forbidden: forbidden: viewer",
        ),
        (
            Reply(500, {"error": "internal", "detail": "duckdb exploded"}),
            "tok",
            ErrorKind.HTTP_5XX,
            "HTTP 500: internal: duckdb exploded",
        ),
        (Reply(502, b"<html>bad gateway</html>"), "tok", ErrorKind.HTTP_5XX, "HTTP 502: Error"),
        (Reply(503, {"error": "no sample yet"}), "tok", ErrorKind.NOT_READY, "503 no sample yet"),
        (Reply(200, {"not": "a snapshot"}), "tok", ErrorKind.PROTOCOL, "unexpected response"),
        (Reply(200, b"{truncated"), "tok", ErrorKind.PROTOCOL, "unexpected response"),
    ],
)
async def test_error_replies_become_short_reasons(
    reply: Reply, token: str | None, kind: ErrorKind, reason: str
) -> None:
    async with FakeHttpAgent({"/api/v1/snapshot": reply}) as server:
        client = AgentClient(spec("a", server.url, token=token))
        with pytest.raises(AgentError) as err:
            await client.snapshot()
        await client.aclose()
    assert err.value.kind is kind
    assert str(err.value).startswith(reason)


async def test_refused_and_missing_socket(tmp_path: Path) -> None:
    port = closed_port()
    for url, kind, text in [
        (f"http://127.0.0.1:{port}", ErrorKind.REFUSED, "connection refused"),
        (f"unix://{tmp_path}/missing.sock", ErrorKind.REFUSED, "no socket"),
    ]:
        client = AgentClient(spec("a", url))
        with pytest.raises(AgentError) as err:
            await client.snapshot()
        await client.aclose()
        assert err.value.kind is kind
        assert text in str(err.value)


async def test_unix_socket_agent(tmp_path: Path) -> None:
    sock = str(tmp_path / "agent.sock")
    async with FakeHttpAgent(agent_routes("local"), uds=sock):
        poller = FleetPoller([spec("local", f"unix://{sock}")])
        status = await poller.poll()
        await poller.aclose()
    assert status.agents[0].state is AgentState.UP
    assert status.agents[0].snapshot is not None and status.agents[0].snapshot.agent_name == "local"


async def test_dead_agent_does_not_stall_the_others() -> None:
    """Two agents that never answer (1 s timeouts) and two healthy ones: one poll ≈ one timeout."""
    hang = {"/api/v1/snapshot": Reply(hang=True), "/api/v1/host": Reply(hang=True)}
    async with (
        FakeHttpAgent(agent_routes("ok-1")) as ok1,
        FakeHttpAgent(agent_routes("ok-2")) as ok2,
        FakeHttpAgent(hang) as dead1,
        FakeHttpAgent(hang) as dead2,
    ):
        poller = FleetPoller(
            [
                spec("dead-1", dead1.url, timeout=1.0),
                spec("ok-1", ok1.url, timeout=1.0),
                spec("dead-2", dead2.url, timeout=1.0),
                spec("ok-2", ok2.url, timeout=1.0),
            ]
        )
        t0 = time.monotonic()
        status = await poller.poll()
        elapsed = time.monotonic() - t0
        await poller.aclose()
    states = {a.name: (a.state, a.error_kind) for a in status.agents}
    assert states["ok-1"] == (AgentState.UP, None)
    assert states["ok-2"] == (AgentState.UP, None)
    assert states["dead-1"] == (AgentState.DOWN, ErrorKind.TIMEOUT)
    assert status.get("dead-2").reason == "timeout after 1s"  # type: ignore[union-attr]
    # Concurrent: about one timeout, not the sum of two (2 s); the slack is for a loaded CI host.
    assert 0.95 <= elapsed < 1.9, elapsed


async def test_trickling_agent_is_bounded_by_its_whole_request_timeout() -> None:
    """httpx's per-read timeout would reset on every byte; the deadline covers the whole request."""
    async with FakeHttpAgent({"/api/v1/snapshot": Reply(delay_s=1.5, body=make_snapshot())}) as slow:
        client = AgentClient(spec("slow", slow.url, timeout=0.4))
        t0 = time.monotonic()
        with pytest.raises(AgentError) as err:
            await client.snapshot()
        await client.aclose()
    assert err.value.kind is ErrorKind.TIMEOUT
    assert time.monotonic() - t0 < 1.3  # the reply would take 1.5 s: the 0.4 s deadline cut it


async def test_backoff_skips_failing_agent_until_due_and_resets_on_success() -> None:
    clock = FakeClock()
    healthy = {"now": False}
    routes = agent_routes("flaky", clock=clock)
    good_snapshot = routes["/api/v1/snapshot"]

    def snapshot(path: str, q: dict, h: dict) -> Reply:
        if healthy["now"]:
            return good_snapshot(path, q, h)  # type: ignore[operator]
        return Reply(500, {"error": "boom"})

    routes["/api/v1/snapshot"] = snapshot
    async with FakeHttpAgent(routes) as server:
        poller = FleetPoller(
            [spec("flaky", server.url)], clock=clock, backoff_base_s=1.0, backoff_cap_s=30.0, backoff_jitter=0.0
        )
        attempts = []
        for t in [0.0, 0.5, 1.0, 2.0, 3.0, 5.0, 7.0]:
            clock.t = 1000.0 + t
            st = (await poller.poll()).agents[0]
            attempts.append(server.count("/api/v1/snapshot"))
            assert st.state is AgentState.DOWN and st.reason == "HTTP 500: boom"
        # Attempts at t=0 (then wait 1), t=1 (wait 2), t=3 (wait 4) and t=7.
        assert attempts == [1, 1, 2, 2, 3, 3, 4]
        assert st.failures == 4 and st.next_retry_at == pytest.approx(1007.0 + 8.0)
        healthy["now"] = True
        clock.t = 1015.0
        st = (await poller.poll()).agents[0]
        await poller.aclose()
    assert st.state is AgentState.UP and st.failures == 0 and st.next_retry_at is None
    assert [poller.backoff_s(n) for n in (1, 2, 5, 6, 12)] == [1, 2, 16, 30, 30]


async def test_not_ready_agent_is_polled_every_time_without_backoff() -> None:
    async with FakeHttpAgent(
        {"/api/v1/snapshot": Reply(503, {"error": "no sample yet"}), "/api/v1/host": Reply(200, make_host("booting"))}
    ) as server:
        poller = FleetPoller([spec("booting", server.url)])
        for _ in range(3):
            st = (await poller.poll()).agents[0]
        await poller.aclose()
    assert server.count("/api/v1/snapshot") == 3
    assert st.state is AgentState.DOWN and st.error_kind is ErrorKind.NOT_READY and st.failures == 0


async def test_stale_when_newest_sample_older_than_three_intervals() -> None:
    clock = FakeClock(5_000.0)
    sample_ts = {"ts": 5_000.0}
    routes = agent_routes("s", interval=2.0)
    routes["/api/v1/snapshot"] = lambda p, q, h: Reply(200, make_snapshot("s", ts=sample_ts["ts"]))
    async with FakeHttpAgent(routes) as server:
        poller = FleetPoller([spec("s", server.url)], clock=clock)
        clock.t = 5_005.9  # 5.9 s < 3 intervals of 2 s
        a = (await poller.poll()).agents[0]
        assert a.state is AgentState.UP and a.sample_age_s == pytest.approx(5.9)
        clock.t = 5_006.5
        a = (await poller.poll()).agents[0]
        assert a.state is AgentState.STALE and a.reason == "last sample 6s old"
        await poller.aclose()


async def test_clock_skew_from_date_header_does_not_make_agent_stale() -> None:
    """The agent's clock runs an hour ahead: its fresh samples look an hour in the future to us."""
    skew = 3600.0
    routes = agent_routes("skewed")
    routes["/api/v1/snapshot"] = lambda p, q, h: Reply(
        200,
        make_snapshot("skewed", ts=time.time() + skew - 1.0),
        headers={"date": formatdate(time.time() + skew, usegmt=True)},
    )
    routes["/api/v1/host"] = lambda p, q, h: Reply(
        200, make_host("skewed"), headers={"date": formatdate(time.time() + skew, usegmt=True)}
    )
    lagging = agent_routes("lagging")
    lagging["/api/v1/snapshot"] = lambda p, q, h: Reply(
        200,
        make_snapshot("lagging", ts=time.time() - skew),
        headers={"date": formatdate(time.time(), usegmt=True)},
    )
    async with FakeHttpAgent(routes) as s1, FakeHttpAgent(lagging) as s2:
        poller = FleetPoller([spec("skewed", s1.url), spec("lagging", s2.url)])
        status = await poller.poll()
        await poller.aclose()
    skewed, behind = status.agents
    assert skewed.state is AgentState.UP, skewed
    assert skewed.clock_offset_s == pytest.approx(skew, abs=2)
    assert skewed.sample_age_s is not None and skewed.sample_age_s < 3
    assert behind.state is AgentState.STALE  # a really old sample is still stale


async def test_host_info_fetched_once_then_rarely_and_after_recovery() -> None:
    clock = FakeClock()
    up_now = {"v": True}
    routes = agent_routes("h", clock=clock)
    good = routes["/api/v1/snapshot"]
    routes["/api/v1/snapshot"] = lambda p, q, h: good(p, q, h) if up_now["v"] else Reply(500, {"error": "x"})  # type: ignore[operator]
    async with FakeHttpAgent(routes) as server:
        poller = FleetPoller([spec("h", server.url)], clock=clock, host_refresh_s=300.0)
        for i in range(4):
            clock.t = 1000.0 + 2 * i
            await poller.poll()
        assert server.count("/api/v1/host") == 1
        clock.t = 1300.0
        await poller.poll()
        assert server.count("/api/v1/host") == 2
        up_now["v"] = False
        clock.t = 1302.0
        await poller.poll()
        up_now["v"] = True
        clock.t = 1310.0
        await poller.poll()  # recovers: the agent may have restarted with other GPUs
        clock.t = 1312.0
        st = (await poller.poll()).agents[0]
        await poller.aclose()
    assert server.count("/api/v1/host") == 3
    assert st.state is AgentState.UP and st.host is not None


async def test_agents_given_by_url_show_their_own_name() -> None:
    async with FakeHttpAgent(agent_routes("trainer-7")) as server:
        poller = FleetPoller([AgentSpec(name="127.0.0.1:x", url=server.url, name_from_url=True)])
        a = (await poller.poll()).agents[0]
        await poller.aclose()
    assert a.label == "trainer-7" and a.name == "127.0.0.1:x"


async def test_down_agent_keeps_last_snapshot_and_last_seen() -> None:
    clock = FakeClock()
    async with FakeHttpAgent(agent_routes("x", clock=clock)) as server:
        poller = FleetPoller([spec("x", server.url)], clock=clock)
        await poller.poll()
    clock.t += 10
    a = (await poller.poll()).agents[0]
    await poller.aclose()
    assert a.state is AgentState.DOWN and a.error_kind is ErrorKind.REFUSED
    assert a.snapshot is not None and a.last_seen == pytest.approx(1000.0)


def test_client_module_does_not_import_textual() -> None:
    assert not imports_textual(
        "console.core.errors",
        "console.core.client",
        "console.core.poller",
        "console.core.config",
        "console.fleet.status_cli",
        "console.core.rows",
    )


def test_console_imports_only_the_wire_contract_from_agent() -> None:
    offenders = []
    for path in (REPO / "console").rglob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            for name in names:
                if (name == "agent" or name.startswith("agent.")) and name != "agent.schemas":
                    offenders.append(f"{path.relative_to(REPO)}: {name}")
    assert offenders == []
