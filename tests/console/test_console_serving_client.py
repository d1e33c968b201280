"""The data layer's serving calls: /api/v1/serving, the fallback switch, and when the poller asks."""

from __future__ import annotations

import json

import pytest

from console.core.client import AgentClient
from console.core.config import AgentSpec
from console.core.errors import AgentError, ErrorKind
from console.core.feeds import FeedState
from console.core.poller import FleetPoller, ServingState
from console.rollouts.client import RolloutFeed, with_rollouts
from console.serving.rows import detail_text, endpoint_rows, fmt_ms, fmt_rate, pool_line, predlog_line
from tests.console.wk_fakes import (
    FROZEN_NOW,
    FakeHttpAgent,
    FakeRequest,
    Reply,
    agent_routes,
    fleet,
    make_endpoint,
    make_loaded,
    make_rollout,
    make_serving,
    make_stats,
    serving_fleet,
    serving_up,
)


def spec(name: str, url: str) -> AgentSpec:
    return AgentSpec(name=name, url=url, token="tok", timeout_s=2.0)


class FakeClock:
    def __init__(self, t: float = 1_000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


SERVING = make_serving([make_endpoint()], [make_stats()], [make_loaded()])


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        (Reply(200, SERVING), "status"),
        (Reply(404, {"error": "not_found"}), None),  # an agent from before serving
        (Reply(503, {"error": "serving_unavailable", "detail": "serving is not running"}), None),
    ],
)
async def test_serving_status_or_none(reply: Reply, expected: str | None) -> None:
    async with FakeHttpAgent({"/api/v1/serving": reply}) as server:
        client = AgentClient(spec("a", server.url))
        result = await client.serving()
        await client.aclose()
    if expected is None:
        assert result is None
    else:
        assert result is not None and result.endpoints[0].name == "flights"
        assert result.loaded_models[0].memory_bytes == 48 * 2**20


async def test_serving_errors_are_errors() -> None:
    async with FakeHttpAgent({"/api/v1/serving": Reply(500, {"error": "internal", "detail": "boom"})}) as server:
        client = AgentClient(spec("a", server.url))
        with pytest.raises(AgentError) as info:
            await client.serving()
        await client.aclose()
    assert info.value.kind is ErrorKind.HTTP_5XX and info.value.message == "HTTP 500: internal: boom"
    assert info.value.error_code == "internal"


async def test_set_fallback_posts_the_toggle_with_token() -> None:
    def toggle(request: FakeRequest) -> Reply:
        body = request.json()
        return Reply(200, make_endpoint(forced=body["enabled"], reason=body["reason"]))

    async with FakeHttpAgent({"POST /api/v1/endpoints/flights/fallback": toggle}) as server:
        client = AgentClient(spec("a", server.url))
        info = await client.set_fallback("flights", True, "INC-9 bad scores")
        await client.aclose()
    assert info.fallback_mode and info.fallback_reason == "INC-9 bad scores"
    request = server.full_requests[0]
    assert request.method == "POST" and request.headers["authorization"] == "Bearer tok"
    assert request.headers["content-type"] == "application/json"
    assert json.loads(request.body) == {"enabled": True, "reason": "INC-9 bad scores"}


async def test_set_fallback_conflict_carries_the_agent_error_code() -> None:
    reply = Reply(409, {"error": "conflict", "detail": "this endpoint has no fallback prediction configured"})
    async with FakeHttpAgent({"POST /api/v1/endpoints/plain/fallback": reply}) as server:
        client = AgentClient(spec("a", server.url))
        with pytest.raises(AgentError) as info:
            await client.set_fallback("plain", True, "x")
        await client.aclose()
    assert info.value.status_code == 409 and info.value.error_code == "conflict"
    assert "no fallback prediction configured" in info.value.message


async def test_poller_fetches_serving_every_poll_only_while_wanted() -> None:
    clock = FakeClock()
    routes = agent_routes("a", clock=clock)
    routes["/api/v1/serving"] = Reply(200, SERVING)
    old = agent_routes("old", clock=clock)  # no /api/v1/serving: 404
    async with FakeHttpAgent(routes) as a, FakeHttpAgent(old) as b:
        poller = FleetPoller([spec("a", a.url), spec("old", b.url)], clock=clock, serving_idle_s=100)
        status = await poller.poll()  # first poll: everyone once
        sa, sb = status.agents
        assert sa.serving_state is ServingState.OK and sa.serving is not None and sa.serving_at == clock.t
        assert sb.serving_state is ServingState.NONE and sb.serving is None
        assert (a.count("/api/v1/serving"), b.count("/api/v1/serving")) == (1, 1)

        clock.t += 5
        await poller.poll()  # nobody looking: not again before serving_idle_s
        assert (a.count("/api/v1/serving"), b.count("/api/v1/serving")) == (1, 1)

        poller.want_serving(True)
        for _ in range(3):
            clock.t += 5
            await poller.poll()
        # Every poll for the serving agent; the one without serving only at the idle pace.
        assert (a.count("/api/v1/serving"), b.count("/api/v1/serving")) == (4, 1)
        clock.t += 100
        await poller.poll()
        assert (a.count("/api/v1/serving"), b.count("/api/v1/serving")) == (5, 2)

        poller.want_serving(False)
        clock.t += 5
        await poller.poll()
        assert a.count("/api/v1/serving") == 5

        # A failing fetch keeps the last good answer, marked as an error.
        routes["/api/v1/serving"] = Reply(500, {"error": "internal"})
        a.routes = routes
        poller.want_serving(True)
        clock.t += 5
        sa = (await poller.poll()).agents[0]
        assert sa.serving_state is ServingState.ERROR and sa.serving_error == "HTTP 500: internal"
        assert sa.serving is not None and sa.serving_at == clock.t - 10  # the last good fetch
        await poller.aclose()


def _roles(agent) -> dict[str, str]:
    return {r.model_version: r.role for r in endpoint_rows(fleet(agent)) if r.endpoint == "flights"}


def test_each_version_says_its_role_in_a_rollout_never_retired_while_it_takes_traffic() -> None:
    stats = [make_stats("flights", "flights", 3, rps=90.0), make_stats("flights", "flights", 2, rps=10.0)]
    serving = make_serving([make_endpoint("flights", "flights", 3)], stats, [make_loaded("flights", 3, 48.0)])
    # The endpoint serves v3; a canary of v4 at 10 % has had no request yet: it is listed, as the canary.
    canary = make_rollout("r-1", stable=3, candidate=4, weight=10.0)
    assert _roles(serving_up("gpu-01", 0, serving, [canary])) == {
        "flights:3": "stable 90%", "flights:4": "canary 10%", "flights:2": "retired",
    }  # fmt: skip
    shadow = make_rollout("r-2", stable=3, candidate=2, strategy="shadow", weight=0.0, shadow=0.2)
    assert _roles(serving_up("gpu-01", 0, serving, [shadow])) == {
        "flights:3": "stable",
        "flights:2": "shadow 20% mirrored",
    }
    ab = make_rollout("r-3", stable=3, candidate=2, strategy="ab", weight=50.0)
    assert _roles(serving_up("gpu-01", 0, serving, [ab]))["flights:2"] == "A/B arm B 50%"
    blue = make_rollout("r-4", stable=3, candidate=2, strategy="bluegreen", weight=0.0)
    assert _roles(serving_up("gpu-01", 0, serving, [blue]))["flights:2"] == "preview 0%"
    # After a promotion the replaced version, still loaded, is the warm standby of an instant rollback.
    warm = serving.model_copy(update={"loaded_models": [*serving.loaded_models, make_loaded("flights", 2, 47.0, ())]})
    promoted = make_rollout("r-5", stable=2, candidate=3, state="promoted", ended_ago=30)
    assert _roles(serving_up("gpu-01", 0, warm, ended=[promoted]))["flights:2"] == "warm standby"
    # Rollouts not read: a version that is not current is not called retired.
    unknown = with_rollouts(serving_up("gpu-01", 0, serving), RolloutFeed(state=FeedState.ERROR, error="timeout"))
    assert _roles(unknown) == {"flights:3": "serving", "flights:2": "not current (rollouts unknown)"}


def test_rows_and_panel_text_from_a_serving_status() -> None:
    rows = endpoint_rows(serving_fleet())
    assert [(r.host, r.endpoint, r.model_version, r.current) for r in rows] == [
        ("gpu-01", "flights", "flights:3", True),
        ("gpu-01", "flights", "flights:2", False),
        ("gpu-01", "fraud", "fraud:7", True),
        ("gpu-02", "eta", "eta:?", True),
        ("gpu-02", "flights", "flights:3", True),
    ]
    fraud = rows[2]
    assert fraud.error_rate == pytest.approx(0.12) and fraud.fallbacks == 720 and fraud.breaker == "open"
    assert rows[1].breaker is None and rows[1].text("breaker") == "-"  # breaker belongs to the current row
    assert rows[4].forced and rows[4].text("mode") == "FORCED"
    assert rows[3].rps is None and rows[3].text("p99") == "-"
    assert fmt_ms(480.0) == "480" and fmt_ms(9.5) == "9.5" and fmt_rate(0.004) == "0.4%"
    agent = serving_fleet().agents[1]
    assert agent.serving is not None
    assert pool_line(agent.serving) == "pool 48.0 MiB / 4.0 GiB (1%)"
    assert predlog_line(agent.serving) == "prediction log 123,456 rows written, 17 dropped"
    text = detail_text(rows[4], agent, FROZEN_NOW)
    assert text.splitlines()[0] == "gpu-02 · flights → flights:3 (alias prod)"
    assert "FALLBACK FORCED: INC-42 bad scores (alice, 10m ago)" in text
    assert "breaker half-open" in text
    retired = detail_text(rows[1], serving_fleet().agents[0], FROZEN_NOW)
    assert "retired: the endpoint's own version is flights:3" in retired
