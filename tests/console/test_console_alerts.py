"""Alerts across the fleet: rows and order, polling, the alerts screen with ack/silence, `watchkeeper alerts`."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest
from textual.widgets import Input, OptionList, Static

from console.app import WatchkeeperApp
from console.cli import main
from console.core.config import AgentSpec
from console.core.errors import AgentError, ErrorKind
from console.core.feeds import FeedState
from console.core.poller import AgentState, FleetStatus
from console.core.screens.help import HelpScreen
from console.fleet.fleet_screen import FleetScreen
from console.monitoring.alert_rows import alert_key, alert_rows, firing_count, outage_alert, render_alerts
from console.monitoring.alert_table import SEVERITY_STYLE, AlertTable
from console.monitoring.alerts_screen import AckConfirm, AlertsScreen, SilenceConfirm
from console.monitoring.client import ALERTS_LIST_PATH, MonitoringClient, MonitoringPoller
from tests.console.wk_fakes import (
    FROZEN_NOW,
    FakeHttpAgent,
    FakeSource,
    MonitoredAgent,
    Reply,
    ThreadedFakeAgent,
    agent_routes,
    alerting,
    alerts_fleet,
    closed_url,
    fleet,
    make_alert,
    up,
)
from tests.console.wk_pilot import imports_textual, open_from_fleet, press_to, recording, screen_text, select, until

REPO = Path(__file__).resolve().parents[2]
K_OUTAGE = alert_key("gpu-03", "agent_down:gpu-03")
K_DRIFT = alert_key("gpu-01", "a1f0")
K_PENDING = alert_key("gpu-01", "b2e1")
K_RESOLVED = alert_key("gpu-01", "c3d2")
K_ACKED = alert_key("gpu-02", "d4c3")
K_LAST_KNOWN = alert_key("gpu-03", "e5b4")


async def open_alerts(app: WatchkeeperApp, pilot) -> AlertTable:
    return await open_from_fleet(app, pilot, "exclamation_mark", AlertsScreen, AlertTable)


# --------------------------------------------------------------------------- rows


def test_rows_firing_first_then_severity_unhandled_newest_with_an_outage_row_per_down_agent() -> None:
    rows = alert_rows(alerts_fleet())
    assert [r.key for r in rows] == [K_OUTAGE, K_DRIFT, K_LAST_KNOWN, K_ACKED, K_PENDING, K_RESOLVED]
    outage = rows[0]
    assert outage.synthesized and outage.alert.kind == "agent_down" and outage.severity == "critical"
    assert outage.text("summary") == "agent not answering: connection refused (last answer 95s ago)"
    assert outage.text("since") == "95s" and outage.actionable is not None
    last_known = rows[2]
    assert last_known.stale and not last_known.synthesized and "not answering" in (last_known.actionable or "")
    drift = rows[1]
    assert [drift.text(c) for c in ("host", "endpoint", "subject", "value", "since", "acked")] == [
        "gpu-01", "flights", "distance", "0.31 / 0.2", "14m", "-",
    ]  # fmt: skip
    assert rows[3].text("acked") == "bob" and rows[3].handled
    assert rows[5].text("since") == "30s"  # resolved: since it resolved
    # cpu-04 has no alerting and is up: no rows, no outage.
    assert not any(r.agent == "cpu-04" for r in rows)
    assert firing_count(alerts_fleet()) == 3  # the agents' own firing alerts; outages are the fleet's to show
    assert [r.key for r in alert_rows(alerts_fleet(), ["pending"])] == [K_PENDING]


def refired_fleet() -> FleetStatus:
    """gpu-01's rollout guard fired, resolved and was acked an hour ago, and fires again now for a new rollout."""
    old = make_alert(
        "g7a1", "rollout_guard", severity="critical", state="resolved", age=3600, host="gpu-01",
        summary="guard p99 aborted rollout r-old", acked_by="bob", acked_at=FROZEN_NOW - 3000,
    )  # fmt: skip
    new = make_alert(
        "g7a1", "rollout_guard", severity="critical", age=20, host="gpu-01", summary="guard p99 aborted rollout r-new"
    )
    return fleet(alerting(up("gpu-01", 0), [new, old]), alerting(up("gpu-02", 1), [old.model_copy()]))


def test_a_refired_alert_keeps_both_instances_the_firing_one_first_under_its_fingerprint() -> None:
    rows = [r for r in alert_rows(refired_fleet()) if r.agent == "gpu-01"]
    assert [(r.state, r.alert.summary) for r in rows] == [
        ("firing", "guard p99 aborted rollout r-new"),
        ("resolved", "guard p99 aborted rollout r-old"),
    ]
    assert rows[0].key == alert_key("gpu-01", "g7a1")  # the instance acks and silences address
    assert len({r.key for r in alert_rows(refired_fleet())}) == 3
    assert firing_count(refired_fleet()) == sum(r.state == "firing" for r in alert_rows(refired_fleet()))


async def test_alerts_screen_lists_a_refired_alert_beside_its_resolved_instance() -> None:
    app = WatchkeeperApp(FakeSource(refired_fleet()), refresh_s=60)
    async with app.run_test(size=(140, 40)) as pilot:
        table = await open_alerts(app, pilot)
        await until(pilot, lambda: len(table.row_keys) == 3)
        assert table.row_keys[0] == alert_key("gpu-01", "g7a1")
        assert table.get_cell(alert_key("gpu-01", "g7a1"), "state").plain == "firing"
        assert "r-new" in table.get_cell(alert_key("gpu-01", "g7a1"), "summary").plain
        status = str(app.screen.query_one("#alerts-status", Static).render())
        assert "1 firing" in status


def test_silenced_rows_say_for_how_long_and_sink_below_unhandled_ones() -> None:
    quiet = make_alert("f6a5", "feature_drift", severity="critical", subject="carrier", age=60, host="gpu-01",
                       silenced_until=FROZEN_NOW + 4 * 3600, silenced_by="carol")  # fmt: skip
    status = fleet(alerting(up("gpu-01"), [quiet, make_alert("0a0a", severity="critical", age=3000)]))
    rows = alert_rows(status)
    assert [r.alert.fingerprint for r in rows] == ["0a0a", "f6a5"]  # unhandled first despite being older
    assert rows[1].text("acked") == "silenced 4h"
    expired = quiet.model_copy(update={"silenced_until": FROZEN_NOW - 1})
    assert alert_rows(fleet(alerting(up("gpu-01"), [expired])))[0].text("acked") == "-"


def test_agent_clock_offset_is_used_for_ages_and_unpolled_agents_are_not_outages() -> None:
    skewed = replace(alerting(up("gpu-01"), [make_alert("0b0b", age=600, now=FROZEN_NOW + 300)]), clock_offset_s=300)
    assert alert_rows(fleet(skewed))[0].text("since") == "9m"  # 600 s before the agent's now, minus firing_at's 60
    never = replace(up("gpu-09"), state=AgentState.DOWN, reason="not polled yet", snapshot=None)
    assert alert_rows(fleet(never)) == []
    status = replace(never, error_kind=ErrorKind.TIMEOUT, reason="timeout after 2s", last_seen=None)
    assert outage_alert(status, FROZEN_NOW).summary == "agent not answering: timeout after 2s (no answer yet)"


def test_render_alerts_aligns_and_truncates_long_summaries() -> None:
    text = render_alerts(alert_rows(alerts_fleet()), summary_width=30)
    lines = text.splitlines()
    assert lines[0].split()[:3] == ["SEVERITY", "STATE", "HOST"]
    assert lines[1].startswith("critical  firing    gpu-03")
    assert "agent not answering: connecti…" in lines[1]


# --------------------------------------------------------------------------- the data layer


async def test_alerts_are_fetched_with_every_poll_alongside_the_snapshot() -> None:
    agent = MonitoredAgent("gpu-01", token="tok")
    async with (
        FakeHttpAgent(agent.routes()) as server,
        MonitoringPoller([AgentSpec("gpu-01", server.url, token="tok")]) as poller,
    ):
        first = await poller.poll()
        second = await poller.poll()
    assert server.count(ALERTS_LIST_PATH) == 2 and server.count("/api/v1/snapshot") == 2
    feed = second.agents[0].alerts
    assert feed is not None and feed.state is FeedState.OK
    assert [a.fingerprint for a in feed.alerts] == ["a1f0", "b2e1", "c3d2"] and feed.rules
    assert first.agents[0].alerts is not None and first.agents[0].state is AgentState.UP
    assert agent.alert_queries == [{}, {}]  # the TUI asks for every state


async def test_agent_without_alerting_is_asked_again_only_at_the_idle_pace() -> None:
    clock = [1000.0]
    routes = agent_routes("old", clock=lambda: clock[0])  # no /api/v1/alerting: 404
    async with FakeHttpAgent(routes) as server:
        poller = MonitoringPoller([AgentSpec("old", server.url)], clock=lambda: clock[0], alerts_idle_s=120)
        status = await poller.poll()
        assert status.agents[0].alerts is not None and status.agents[0].alerts.state is FeedState.NONE
        clock[0] += 60
        await poller.poll()
        assert server.count(ALERTS_LIST_PATH) == 1
        clock[0] += 61
        await poller.poll()
        assert server.count(ALERTS_LIST_PATH) == 2
        # alerting not running on the agent (503 alerting_unavailable) is the same: not an error
        server.routes[ALERTS_LIST_PATH] = Reply(503, {"error": "alerting_unavailable", "detail": "off"})
        clock[0] += 121
        status = await poller.poll()
        assert status.agents[0].alerts.state is FeedState.NONE  # type: ignore[union-attr]
        assert status.agents[0].state is AgentState.UP
        await poller.aclose()


async def test_failed_alert_fetch_keeps_the_last_alerts_and_says_why() -> None:
    agent = MonitoredAgent("gpu-01")
    server = FakeHttpAgent(agent.routes())
    async with server, MonitoringPoller([AgentSpec("gpu-01", server.url)]) as poller:
        await poller.poll()
        server.routes[ALERTS_LIST_PATH] = Reply(500, {"error": "internal", "detail": "boom"})
        status = await poller.poll()
    feed = status.agents[0].alerts
    assert feed is not None and feed.state is FeedState.ERROR and feed.error == "HTTP 500: internal: boom"
    assert len(feed.alerts) == 3 and status.agents[0].state is AgentState.UP


async def test_a_dead_agent_becomes_an_outage_row_and_is_retried_with_backoff() -> None:
    dead = closed_url()
    agent = MonitoredAgent("gpu-01")
    async with FakeHttpAgent(agent.routes()) as server:
        specs = [AgentSpec("gpu-01", server.url), AgentSpec("gone", dead, timeout_s=1.0)]
        async with MonitoringPoller(specs, backoff_base_s=60) as poller:
            status = await poller.poll()
            again = await poller.poll()  # within the backoff: the dead agent is not asked
    rows = alert_rows(status)
    assert rows[0].key == alert_key("gone", "agent_down:gone") and rows[0].text("subject") == "refused"
    gone = status.get("gone")
    assert gone is not None and gone.alerts is not None and gone.alerts.state is FeedState.ERROR
    assert again.get("gone").failures == 1  # type: ignore[union-attr]


async def test_ack_and_silence_post_the_wire_bodies_and_parse_the_answer() -> None:
    agent = MonitoredAgent("gpu-01", token="tok")
    async with FakeHttpAgent(agent.routes()) as server:
        client = MonitoringClient(AgentSpec("gpu-01", server.url, token="tok"))
        acked = await client.ack_alert("a1f0", "on it")
        silenced = await client.silence_alert("b2e1", 4 * 3600.0)
        with pytest.raises(AgentError) as missing:
            await client.ack_alert("ffff")
        firing = await client.model_alerts("firing")
        await client.aclose()
    assert acked is not None and acked.acked_by == "operator-1"
    assert silenced is not None and silenced.silenced_until is not None
    assert agent.actions == [
        ("ack", "a1f0", {"comment": "on it"}),
        ("silence", "b2e1", {"duration_s": 14400.0, "comment": ""}),
    ]
    posts = [r for r in server.full_requests if r.method == "POST"]
    assert [r.headers["authorization"] for r in posts] == ["Bearer tok"] * 3
    assert missing.value.status_code == 404
    assert firing is not None and [a.fingerprint for a in firing.alerts] == ["a1f0"]
    assert agent.alert_queries[-1] == {"state": ["firing"]}


async def test_an_action_answer_that_is_not_an_alert_still_counts_as_done() -> None:
    routes = {"POST /api/v1/alerts/a1f0/ack": Reply(200, {"ok": True})}
    async with FakeHttpAgent(routes) as server:
        client = MonitoringClient(AgentSpec("gpu-01", server.url))
        assert await client.ack_alert("a1f0") is None
        await client.aclose()


def test_data_layer_modules_do_not_import_textual() -> None:
    assert not imports_textual(
        "console.monitoring.client",
        "console.monitoring.alert_rows",
        "console.monitoring.drift_rows",
        "console.monitoring.alerts_cli",
        "console.core.feeds",
    )


# --------------------------------------------------------------------------- the screen (scripted source)


async def test_bang_opens_alerts_sorted_with_outage_and_detail_and_status_line() -> None:
    source = FakeSource(alerts_fleet())
    app = WatchkeeperApp(source, refresh_s=60)
    async with app.run_test(size=(140, 40)) as pilot:
        polls = source.polls
        assert "3 alerts firing" in app.sub_title
        table = await open_alerts(app, pilot)
        await until(pilot, lambda: source.polls > polls)  # opening asks for fresh alerts now
        assert table.row_keys == [K_OUTAGE, K_DRIFT, K_LAST_KNOWN, K_ACKED, K_PENDING, K_RESOLVED]
        assert table.get_cell(K_DRIFT, "severity").style == SEVERITY_STYLE["critical"]
        assert table.get_cell(K_LAST_KNOWN, "summary").style == "dim"  # stale: its agent is down
        detail = str(app.screen.query_one("#alert-detail", Static).render())
        assert "raised by the console" in detail and "gpu-03" in detail
        await select(pilot, table, K_DRIFT)
        detail = str(app.screen.query_one("#alert-detail", Static).render())
        assert "fingerprint a1f0" in detail and "value 0.31 (threshold 0.2)" in detail
        assert "nobody has acknowledged it" in detail
        await select(pilot, table, K_ACKED)
        detail = str(app.screen.query_one("#alert-detail", Static).render())
        assert 'acknowledged by bob 2m ago: "bad deploy of fraud, rolling back"' in detail
        status = str(app.screen.query_one("#alerts-status", Static).render())
        assert "6/6 alerts" in status and "4 firing" in status and "alerts from 2/4 agents" in status
        assert "1 without alerting" in status
        # `!` again does not stack a second alerts screen; Esc goes back.
        await pilot.press("exclamation_mark")
        await pilot.pause()
        assert sum(isinstance(s, AlertsScreen) for s in app.screen_stack) == 1
        await press_to(pilot, FleetScreen, "escape")


async def test_filter_narrows_rows_and_survives_a_refresh() -> None:
    source = FakeSource(alerts_fleet())
    app = WatchkeeperApp(source, refresh_s=60)
    async with app.run_test(size=(140, 40)) as pilot:
        table = await open_alerts(app, pilot)
        await pilot.press("slash", *"gpu-01", "enter")
        await pilot.pause()
        assert table.row_keys == [K_DRIFT, K_PENDING, K_RESOLVED]
        await pilot.press("slash")
        app.screen.query_one(Input).value = "!resolved"
        await pilot.pause()
        assert K_RESOLVED not in table.row_keys and K_OUTAGE in table.row_keys
        app.request_poll()
        await until(pilot, lambda: source.polls >= 3)
        assert K_RESOLVED not in table.row_keys
        await pilot.press("enter", "escape")
        await pilot.pause()
        assert len(table.row_keys) == 6 and isinstance(app.screen, AlertsScreen)


async def test_ack_asks_naming_host_endpoint_and_rule_then_posts_and_says_so() -> None:
    source = FakeSource(alerts_fleet())
    app = WatchkeeperApp(source, refresh_s=60)
    seen = recording(app)
    async with app.run_test(size=(140, 40)) as pilot:
        table = await open_alerts(app, pilot)
        await select(pilot, table, K_DRIFT)
        await press_to(pilot, AckConfirm, "a")
        text = screen_text(app)
        assert "Acknowledge feature_drift on gpu-01?" in text
        assert "host gpu-01  ·  endpoint flights  ·  rule feature_drift (distance)" in text
        assert "critical, firing: feature distance drifted: psi 0.31 (threshold 0.2)" in text
        await pilot.press(*"on it, yes", "enter")  # `y` types into the comment
        await until(pilot, lambda: bool(source.alert_calls))
        assert source.alert_calls == [("gpu-01", "ack", "a1f0", None, "on it, yes")]
        await until(pilot, lambda: table.get_cell(K_DRIFT, "acked").plain == "op-alice")  # polled again
        assert ("feature_drift on gpu-01 (flights): acknowledged", "information") in seen
        # Acked now: it sinks below the unhandled critical outage and the others stay put.
        assert table.row_keys.index(K_DRIFT) == 1
        await pilot.press("a")  # already acknowledged: says so, asks nothing
        await pilot.pause(0.1)
        assert isinstance(app.screen, AlertsScreen) and any("already acknowledged by op-alice" in m for m, _ in seen)


async def test_silence_offers_1h_4h_24h_and_posts_the_chosen_duration() -> None:
    source = FakeSource(alerts_fleet())
    app = WatchkeeperApp(source, refresh_s=60)
    seen = recording(app)
    async with app.run_test(size=(140, 40)) as pilot:
        table = await open_alerts(app, pilot)
        await select(pilot, table, K_PENDING)
        await press_to(pilot, SilenceConfirm, "z")
        dialog = app.screen
        options = dialog.query_one(OptionList)
        assert [str(options.get_option_at_index(i).prompt) for i in range(options.option_count)] == [
            "1 hour", "4 hours", "24 hours",
        ]  # fmt: skip
        assert "Silence latency_p99 on gpu-01?" in screen_text(app)
        await pilot.press("down", "y")
        await until(pilot, lambda: bool(source.alert_calls))
        assert source.alert_calls == [("gpu-01", "silence", "b2e1", 4 * 3600.0, "")]
        await until(pilot, lambda: any("silenced for 4h" in m for m, _ in seen))
        # Enter on a duration confirms too, with the comment typed after tabbing to it.
        await press_to(pilot, SilenceConfirm, "z")
        await pilot.press("tab", *"deploy", "shift+tab", "down", "down", "enter")
        await until(pilot, lambda: len(source.alert_calls) == 2)
        assert source.alert_calls[1] == ("gpu-01", "silence", "b2e1", 86400.0, "deploy")


async def test_cancel_sends_nothing() -> None:
    source = FakeSource(alerts_fleet())
    app = WatchkeeperApp(source, refresh_s=60)
    async with app.run_test(size=(140, 40)) as pilot:
        table = await open_alerts(app, pilot)
        await select(pilot, table, K_DRIFT)
        for key, keys in (("a", ("escape",)), ("a", ("tab", "n")), ("z", ("n",)), ("z", ("escape",))):
            await pilot.press(key)
            await until(pilot, lambda: isinstance(app.screen, AckConfirm | SilenceConfirm))
            await press_to(pilot, AlertsScreen, *keys)
        await pilot.pause(0.1)
        assert source.alert_calls == []


async def test_outage_rows_and_alerts_of_a_down_agent_are_not_acted_on() -> None:
    source = FakeSource(alerts_fleet())
    app = WatchkeeperApp(source, refresh_s=60)
    seen = recording(app)
    async with app.run_test(size=(140, 40)) as pilot:
        table = await open_alerts(app, pilot)
        for key in (K_OUTAGE, K_LAST_KNOWN):
            await select(pilot, table, key)
            await pilot.press("a", "z")
            await pilot.pause(0.1)
            assert isinstance(app.screen, AlertsScreen)
        assert source.alert_calls == []
        assert any("cannot acknowledge: the outage of gpu-03 is the console's own row" in m for m, _ in seen)
        assert any("cannot silence: gpu-03 is not answering" in m for m, _ in seen)


async def test_action_errors_go_to_the_sink_per_host() -> None:
    source = FakeSource(alerts_fleet())
    source.alert_error = AgentError(ErrorKind.FORBIDDEN, "403 forbidden: operator role required", status_code=403)
    app = WatchkeeperApp(source, refresh_s=60)
    seen = recording(app)
    async with app.run_test(size=(140, 40)) as pilot:
        table = await open_alerts(app, pilot)
        await select(pilot, table, K_ACKED)
        await pilot.press("z", "y")
        await until(pilot, lambda: bool(seen))
        assert seen == [
            ("error_rate on gpu-02 (fraud): not silenced for 60m: 403 forbidden: operator role required", "error")
        ]


async def test_readonly_hides_and_refuses_ack_and_silence() -> None:
    source = FakeSource(alerts_fleet())
    app = WatchkeeperApp(source, refresh_s=60, readonly=True)
    seen = recording(app)
    async with app.run_test(size=(140, 40)) as pilot:
        table = await open_alerts(app, pilot)
        await select(pilot, table, K_DRIFT)
        screen = app.screen
        assert screen.check_action("ack", ()) is False and screen.check_action("silence", ()) is False
        assert screen.check_action("filter", ()) is True
        text = screen_text(app)
        assert "Acknowledge" not in text and "Silence" not in text  # not in the footer
        await pilot.press("a", "z")
        await pilot.pause(0.1)
        assert app.screen is screen
        await screen.action_ack()  # called directly: @mutating refuses
        await screen.action_silence()
        assert app.screen is screen
        assert any("read-only mode: ack is disabled" in m for m, _ in seen)
        # Even an open dialog refuses to confirm.
        from console.monitoring.alert_rows import alert_rows as rows_of
        from console.monitoring.alerts_screen import AlertRequest

        row = next(r for r in rows_of(source.status) if r.key == K_DRIFT)
        dialog = AckConfirm(AlertRequest.of(row))
        await app.push_screen(dialog)
        await pilot.press("enter")
        await pilot.pause(0.1)
        assert app.screen is dialog
        await pilot.press("escape")
        await pilot.pause(0.1)
        assert source.alert_calls == []
        await press_to(pilot, HelpScreen, "question_mark")
        body = str(app.screen.query_one("#help-body", Static).render())
        assert "acknowledge the selected alert (asks; comment optional) [disabled: read-only]" in body
        assert "alerts across the fleet" in body


async def test_a_modal_over_the_alerts_screen_defers_redraw() -> None:
    source = FakeSource(alerts_fleet())
    app = WatchkeeperApp(source, refresh_s=60)
    async with app.run_test(size=(140, 40)) as pilot:
        table = await open_alerts(app, pilot)
        await press_to(pilot, HelpScreen, "question_mark")
        gpu01 = source.status.agents[0]
        source.status = replace(source.status, agents=(alerting(gpu01, []), *source.status.agents[1:]))
        polls = source.polls
        app.request_poll()
        await until(pilot, lambda: source.polls > polls)
        await pilot.pause(0.1)
        assert K_DRIFT in table.row_keys  # not redrawn under the modal
        await pilot.press("escape")
        await until(pilot, lambda: K_DRIFT not in table.row_keys)


# --------------------------------------------------------------------------- against fake agents over HTTP


async def test_alerts_screen_against_fake_agents_ack_reaches_the_agent() -> None:
    one = MonitoredAgent("gpu-01", token="tok")
    two = MonitoredAgent("gpu-02", token="tok", alerts=[make_alert("9f9f", "outage", severity="warning", age=30,
                                                                   now=time.time(), host="gpu-02")])  # fmt: skip
    dead = closed_url()
    async with FakeHttpAgent(one.routes()) as a, FakeHttpAgent(two.routes()) as b:
        specs = [
            AgentSpec("gpu-01", a.url, token="tok"),
            AgentSpec("gpu-02", b.url, token="tok"),
            AgentSpec("gone", dead, timeout_s=1.0),
        ]
        app = WatchkeeperApp(MonitoringPoller(specs), refresh_s=0.5)
        seen = recording(app)
        async with app.run_test(size=(140, 40)) as pilot:
            table = await open_alerts(app, pilot)
            await until(pilot, lambda: len(table.row_keys) == 5)
            assert table.row_keys == [
                alert_key("gone", "agent_down:gone"),
                alert_key("gpu-01", "a1f0"),
                alert_key("gpu-02", "9f9f"),
                alert_key("gpu-01", "b2e1"),
                alert_key("gpu-01", "c3d2"),
            ]
            await select(pilot, table, alert_key("gpu-02", "9f9f"))
            await press_to(pilot, AckConfirm, "a")
            assert "Acknowledge outage on gpu-02?" in screen_text(app)
            await pilot.press(*"paging the owner", "enter")
            await until(pilot, lambda: bool(two.actions))
            assert two.actions == [("ack", "9f9f", {"comment": "paging the owner"})] and one.actions == []
            await until(pilot, lambda: table.get_cell(alert_key("gpu-02", "9f9f"), "acked").plain == "operator-1")
            assert ("outage on gpu-02 (flights): acknowledged", "information") in seen
            assert "2 alerts firing" in app.sub_title


# --------------------------------------------------------------------------- watchkeeper alerts


@pytest.fixture
def monitored():
    agent = MonitoredAgent("gpu-01", token="tok")
    with ThreadedFakeAgent(agent.routes()) as server:
        yield agent, server


def test_cli_lists_alerts_firing_first(monitored, capsys, monkeypatch) -> None:
    _, server = monitored
    monkeypatch.setenv("WATCHKEEPER_TOKEN", "tok")
    assert main(["alerts", "--agents", server.url]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split() == [
        "SEVERITY",
        "STATE",
        "HOST",
        "ENDPOINT",
        "SUBJECT",
        "SUMMARY",
        "VALUE/THR",
        "SINCE",
        "ACKED",
        "BY",
    ]
    assert [line.split()[:3] for line in out[1:]] == [
        ["critical", "firing", "gpu-01"], ["warning", "pending", "gpu-01"], ["info", "resolved", "gpu-01"],
    ]  # fmt: skip


def test_cli_json_state_filter_goes_to_the_agent(monitored, capsys, monkeypatch) -> None:
    agent, server = monitored
    monkeypatch.setenv("WATCHKEEPER_TOKEN", "tok")
    assert main(["alerts", "--agents", server.url, "--json", "--state", "firing"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert agent.alert_queries == [{"state": ["firing"]}]
    assert doc["counts"] == {"firing": 1, "pending": 0, "resolved": 0}
    (alert,) = doc["alerts"]
    assert (alert["fingerprint"], alert["host"], alert["severity"], alert["synthesized"]) == (
        "a1f0",
        "gpu-01",
        "critical",
        False,
    )
    assert doc["agents"][0]["alerting"] == "ok"


def test_cli_down_agent_is_an_outage_row_and_exit_1_with_one_line(monitored, capsys, monkeypatch) -> None:
    _, server = monitored
    monkeypatch.setenv("WATCHKEEPER_TOKEN", "tok")
    dead = closed_url()
    assert main(["alerts", "--agents", f"{server.url},{dead}", "--json"]) == 1
    captured = capsys.readouterr()
    doc = json.loads(captured.out)
    first = doc["alerts"][0]
    assert (first["kind"], first["severity"], first["state"], first["synthesized"]) == (
        "agent_down",
        "critical",
        "firing",
        True,
    )
    err = captured.err.strip().splitlines()
    assert (
        len(err) == 1
        and err[0].startswith("watchkeeper alerts: 1 of 2 agents not read:")
        and "connection refused" in err[0]
    )


def test_cli_agent_without_alerting_is_noted_not_failed(capsys, monkeypatch) -> None:
    monkeypatch.delenv("WATCHKEEPER_TOKEN", raising=False)
    with ThreadedFakeAgent(agent_routes("old")) as server:
        assert main(["alerts", "--agents", server.url]) == 0
    captured = capsys.readouterr()
    assert captured.out.strip() == "no alerts"
    assert captured.err.strip() == "watchkeeper alerts: no alerting on old (older agent, or alerting off)"


def test_cli_usage_errors_exit_2_with_one_line() -> None:
    r = subprocess.run(
        [sys.executable, "-m", "console.cli", "alerts", "--state", "burning", "--agents", "http://h:1"],
        capture_output=True, text=True, cwd=REPO, timeout=60,
    )  # fmt: skip
    assert r.returncode == 2 and r.stdout == ""
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "invalid choice: 'burning'" in lines[0]
