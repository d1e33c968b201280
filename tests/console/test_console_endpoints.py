"""Pilot tests of the endpoints screen and the fallback switch, against a scripted FleetSource."""

from __future__ import annotations

from dataclasses import replace

from textual.widgets import Input, Static

from console.app import WatchkeeperApp
from console.core.errors import AgentError, ErrorKind
from console.core.poller import ServingState
from console.core.screens.help import HelpScreen
from console.fleet.fleet_screen import FleetScreen
from console.serving.endpoint_table import BREAKER_STYLE, FORCED_STYLE, EndpointTable, LoadedModelTable
from console.serving.endpoints_screen import EndpointsScreen, fallback_request
from console.serving.fallback import FallbackConfirm
from console.serving.rows import endpoint_rows, row_key
from tests.console.wk_fakes import (
    FakeSource,
    make_endpoint,
    make_serving,
    make_stats,
    serving_fleet,
    serving_up,
)
from tests.console.wk_pilot import open_from_fleet, press_to, screen_text, select, until

K_FLIGHTS = row_key("gpu-01", "flights", "flights", 3)
K_FLIGHTS_OLD = row_key("gpu-01", "flights", "flights", 2)
K_FRAUD = row_key("gpu-01", "fraud", "fraud", 7)
K_ETA = row_key("gpu-02", "eta", "eta", None)
K_B_FLIGHTS = row_key("gpu-02", "flights", "flights", 3)


async def open_endpoints(app: WatchkeeperApp, pilot) -> EndpointTable:
    return await open_from_fleet(app, pilot, "e", EndpointsScreen, EndpointTable)


def cell(table: EndpointTable, key: str, column: str):
    return table.get_cell(key, column)


async def test_e_opens_endpoints_one_row_per_agent_endpoint_version() -> None:
    source = FakeSource(serving_fleet())
    app = WatchkeeperApp(source, refresh_s=60)
    async with app.run_test(size=(140, 40)) as pilot:
        polls = source.polls
        t = await open_endpoints(app, pilot)
        assert source.serving_wanted is True
        await until(pilot, lambda: source.polls > polls)  # opening asks for a poll now, not in 60 s
        assert t.row_keys == [K_FLIGHTS, K_FLIGHTS_OLD, K_FRAUD, K_ETA, K_B_FLIGHTS]
        assert [cell(t, K_FLIGHTS, c).plain for c in ("host", "endpoint", "model", "rps", "p50", "p99")] == [
            "gpu-01",
            "flights",
            "flights:3",
            "120.0",
            "1.8",
            "9.5",
        ]
        assert cell(t, K_FRAUD, "errors").plain == "12.0%"
        assert cell(t, K_FRAUD, "fallback").plain == "40.0% (720)"  # rate and count in the window
        assert cell(t, K_FLIGHTS_OLD, "role").plain == "retired" and cell(t, K_FLIGHTS, "role").plain == "serving"
        assert cell(t, K_ETA, "model").plain == "eta:?" and cell(t, K_ETA, "loaded").plain == "no"
        assert cell(t, K_ETA, "rps").plain == "-"  # no traffic: no made-up zero
        status_line = str(app.screen.query_one("#endpoints-status", Static).render())
        assert "5/5 rows" in status_line and "2/3 agents serving" in status_line and "1 without serving" in status_line
        await pilot.press("escape")
        assert isinstance(app.screen, FleetScreen)
        assert source.serving_wanted is False and source.serving_wanted_log == [True, False]


async def test_rows_are_updated_in_place_by_key() -> None:
    source = FakeSource(serving_fleet())
    app = WatchkeeperApp(source, refresh_s=60)
    async with app.run_test(size=(140, 40)) as pilot:
        t = await open_endpoints(app, pilot)
        await select(pilot, t, K_FRAUD)
        rows_before = {k: t.rows[k] for k in t.rows}

        a = source.status.agents[0]
        assert a.serving is not None
        stats = [s if s.endpoint != "flights" or s.version != 3 else make_stats(rps=250.5) for s in a.serving.stats]
        agents = list(source.status.agents)
        agents[0] = replace(a, serving=a.serving.model_copy(update={"stats": stats}))
        source.status = replace(source.status, agents=tuple(agents))
        syncs = t.sync_count
        await pilot.press("r")
        await until(pilot, lambda: t.sync_count > syncs)

        assert cell(t, K_FLIGHTS, "rps").plain == "250.5"
        assert all(t.rows[k] is rows_before[k] for k in t.rows)  # same Row objects: nothing rebuilt
        assert t.last_sync_changes == 1
        assert t.cursor_key == K_FRAUD

        # A version without traffic any more disappears; the others stay where they are.
        agents[0] = replace(
            agents[0], serving=agents[0].serving.model_copy(update={"stats": [s for s in stats if s.version != 2]})
        )
        source.status = replace(source.status, agents=tuple(agents))
        syncs = t.sync_count
        await pilot.press("r")
        await until(pilot, lambda: t.sync_count > syncs)
        assert t.row_keys == [K_FLIGHTS, K_FRAUD, K_ETA, K_B_FLIGHTS]
        assert t.cursor_key == K_FRAUD


async def test_breaker_states_and_forced_fallback_stand_out() -> None:
    app = WatchkeeperApp(FakeSource(serving_fleet()), refresh_s=60)
    async with app.run_test(size=(140, 40)) as pilot:
        t = await open_endpoints(app, pilot)
        assert str(cell(t, K_FRAUD, "breaker").style) == BREAKER_STYLE["open"]
        assert str(cell(t, K_B_FLIGHTS, "breaker").style) == BREAKER_STYLE["half_open"]
        assert cell(t, K_B_FLIGHTS, "breaker").plain == "half-open"
        assert str(cell(t, K_FLIGHTS, "breaker").style) == BREAKER_STYLE["closed"]
        assert cell(t, K_B_FLIGHTS, "mode").plain == "FORCED"
        assert str(cell(t, K_B_FLIGHTS, "mode").style) == FORCED_STYLE
        assert str(cell(t, K_FLIGHTS, "mode").style) != FORCED_STYLE
        assert "red" in str(cell(t, K_FRAUD, "errors").style)
        assert "yellow" in str(cell(t, K_ETA, "loaded").style)  # the current version is not loaded

        await select(pilot, t, K_B_FLIGHTS)
        detail = str(app.screen.query_one("#endpoint-detail", Static).render())
        assert "FALLBACK FORCED: INC-42 bad scores (alice, 10m ago)" in detail
        assert "fallbacks: 4,800 (operator 4,800)" in detail
        pool = str(app.screen.query_one("#pool-summary", Static).render())
        assert "gpu-02: pool 48.0 MiB / 4.0 GiB (1%)" in pool and "17 dropped" in pool
        assert app.screen.query_one(LoadedModelTable).row_keys == ["flights:3"]

        await select(pilot, t, K_FRAUD)
        assert app.screen.query_one(LoadedModelTable).row_keys == ["fraud:7", "flights:3", "flights:2"]
        detail = str(app.screen.query_one("#endpoint-detail", Static).render())
        assert "fallbacks: 720 (breaker_open 700, timeout 20)" in detail


async def test_fallback_toggle_confirm_posts_with_reason_and_refreshes() -> None:
    source = FakeSource(serving_fleet())
    app = WatchkeeperApp(source, refresh_s=60)
    seen: list[tuple[str, str]] = []
    app.notify = lambda message, severity="information", **kw: seen.append((message, severity))  # type: ignore[method-assign]
    async with app.run_test(size=(140, 40)) as pilot:
        t = await open_endpoints(app, pilot)
        await select(pilot, t, K_FLIGHTS)
        await press_to(pilot, FallbackConfirm, "f")
        dialog = app.screen
        assert isinstance(dialog, FallbackConfirm)
        text = screen_text(app)
        assert "Switch to fallback: flights on gpu-01?" in text
        assert "(serving flights:3)" in text

        await pilot.press("enter")  # no reason yet: refused, dialog stays
        await pilot.pause()
        assert app.screen is dialog and source.fallback_calls == []
        assert dialog.query_one("#confirm-error", Static).display
        assert dialog.query_one("#reason", Input).has_class("-invalid")

        await pilot.press(*"INC-7 yes drift")  # y and n typed into the reason, not taken as answers
        assert app.screen is dialog
        await pilot.press("enter")
        await until(pilot, lambda: bool(source.fallback_calls))
        assert source.fallback_calls == [("gpu-01", "flights", True, "INC-7 yes drift")]
        await until(pilot, lambda: cell(t, K_FLIGHTS, "mode").plain == "FORCED")  # refreshed after the switch
        assert isinstance(app.screen, EndpointsScreen)
        assert ("flights on gpu-01 switched to fallback (v3)", "information") in seen

        # And back: `f` on a forced endpoint proposes switching back; `y` from the buttons confirms.
        await press_to(pilot, FallbackConfirm, "f")
        assert "Switch back to the model: flights on gpu-01?" in screen_text(app)
        await pilot.press(*"resolved", "tab")
        await pilot.press("y")
        await until(pilot, lambda: len(source.fallback_calls) == 2)
        assert source.fallback_calls[1] == ("gpu-01", "flights", False, "resolved")
        await until(pilot, lambda: cell(t, K_FLIGHTS, "mode").plain == "auto")


async def test_fallback_toggle_cancel_sends_nothing() -> None:
    source = FakeSource(serving_fleet())
    app = WatchkeeperApp(source, refresh_s=60)
    async with app.run_test(size=(140, 40)) as pilot:
        t = await open_endpoints(app, pilot)
        await select(pilot, t, K_FRAUD)
        for keys in (("escape",), ("tab", "n"), ("tab", "tab", "enter")):  # Esc; n; the No button
            await press_to(pilot, FallbackConfirm, "f")
            await press_to(pilot, EndpointsScreen, *"some reason", *keys)
        await pilot.pause(0.1)
        assert source.fallback_calls == []


async def test_fallback_errors_go_to_the_sink() -> None:
    source = FakeSource(serving_fleet())
    source.fallback_error = AgentError(ErrorKind.FORBIDDEN, "403 forbidden: operator role required", status_code=403)
    app = WatchkeeperApp(source, refresh_s=60)
    seen: list[tuple[str, str]] = []
    app.notify = lambda message, severity="information", **kw: seen.append((message, severity))  # type: ignore[method-assign]
    async with app.run_test(size=(140, 40)) as pilot:
        t = await open_endpoints(app, pilot)
        await select(pilot, t, K_FLIGHTS)
        await pilot.press("f", *"x", "enter")
        await until(pilot, lambda: bool(seen))
        assert seen == [("flights on gpu-01: not switched to fallback: 403 forbidden: operator role required", "error")]
        assert cell(t, K_FLIGHTS, "mode").plain == "auto"


async def test_f_without_a_configured_fallback_explains_and_asks_nothing() -> None:
    serving = make_serving([make_endpoint("plain", "m", 1, alias=None, has_fallback=False)])
    source = FakeSource(replace(serving_fleet(), agents=(serving_up("solo", 0, serving),)))
    app = WatchkeeperApp(source, refresh_s=60)
    seen: list[str] = []
    app.notify = lambda message, **kw: seen.append(message)  # type: ignore[method-assign]
    async with app.run_test(size=(140, 40)) as pilot:
        await open_endpoints(app, pilot)
        await pilot.press("f")
        await pilot.pause(0.1)
        assert isinstance(app.screen, EndpointsScreen)
        assert seen and "no fallback prediction configured" in seen[0]
        assert source.fallback_calls == []


async def test_readonly_hides_and_refuses_the_fallback_switch() -> None:
    source = FakeSource(serving_fleet())
    app = WatchkeeperApp(source, refresh_s=60, readonly=True)
    seen: list[str] = []
    app.notify = lambda message, **kw: seen.append(message)  # type: ignore[method-assign]
    async with app.run_test(size=(140, 40)) as pilot:
        t = await open_endpoints(app, pilot)
        await select(pilot, t, K_FLIGHTS)
        screen = app.screen
        assert screen.check_action("toggle_fallback", ()) is False
        assert screen.check_action("filter", ()) is True
        assert "Fallback on/off" not in screen_text(app)  # not in the footer
        await pilot.press("f")
        await pilot.pause(0.1)
        assert app.screen is screen  # no dialog
        await screen.run_action("toggle_fallback")  # through Textual: disabled
        await screen.action_toggle_fallback()  # called directly: @mutating refuses
        await pilot.pause(0.1)
        assert app.screen is screen
        assert any("read-only mode: toggle_fallback is disabled" in m for m in seen)
        # Even the dialog and the App's worker refuse (defence in depth).
        dialog = FallbackConfirm(fallback_request(endpoint_rows(source.status)[0]))
        await app.push_screen(dialog)
        await pilot.press(*"reason", "enter")
        await pilot.pause(0.1)
        assert app.screen is dialog
        await pilot.press("escape")
        app.set_fallback("gpu-01", "flights", True, "sneaky")
        await pilot.pause(0.2)
        assert source.fallback_calls == []
        await press_to(pilot, HelpScreen, "question_mark")
        assert "[disabled: read-only]" in str(app.screen.query_one("#help-body", Static).render())


async def test_filter_and_serving_errors_and_agents_without_serving() -> None:
    status = serving_fleet()
    a, b, c = status.agents
    b = replace(b, serving_state=ServingState.ERROR, serving_error="HTTP 500: internal")
    source = FakeSource(replace(status, agents=(a, b, c)))
    app = WatchkeeperApp(source, refresh_s=60)
    seen: list[tuple[str, str]] = []
    app.notify = lambda message, severity="information", **kw: seen.append((message, severity))  # type: ignore[method-assign]
    async with app.run_test(size=(140, 40)) as pilot:
        t = await open_endpoints(app, pilot)
        await until(pilot, lambda: bool(seen))
        assert seen == [("gpu-02: serving status: HTTP 500: internal", "warning")]
        # The failing agent's last known rows stay, dimmed, and say so.
        assert "dim" in str(cell(t, K_B_FLIGHTS, "host").style)
        await select(pilot, t, K_B_FLIGHTS)
        assert "LAST KNOWN figures" in str(app.screen.query_one("#endpoint-detail", Static).render())
        status_line = str(app.screen.query_one("#endpoints-status", Static).render())
        assert "serving status failed: gpu-02" in status_line

        await pilot.press("slash", *"fraud|eta")
        assert t.row_keys == [K_FRAUD, K_ETA]
        await pilot.press("enter")
        await pilot.press("escape")  # first Escape clears the filter...
        assert t.row_keys == [K_FLIGHTS, K_FLIGHTS_OLD, K_FRAUD, K_ETA, K_B_FLIGHTS]
        assert isinstance(app.screen, EndpointsScreen)
        await pilot.press("escape")  # ...the next goes back
        assert isinstance(app.screen, FleetScreen)


async def test_a_modal_over_the_endpoints_screen_defers_redraw() -> None:
    source = FakeSource(serving_fleet())
    app = WatchkeeperApp(source, refresh_s=60)
    async with app.run_test(size=(140, 40)) as pilot:
        t = await open_endpoints(app, pilot)
        await press_to(pilot, HelpScreen, "question_mark")
        agents = list(source.status.agents)
        a = agents[0]
        agents[0] = replace(a, serving=a.serving.model_copy(update={"stats": [make_stats(rps=999.0)]}))
        source.status = replace(source.status, agents=tuple(agents))
        polls = source.polls
        app.action_refresh_now()
        await until(pilot, lambda: source.polls > polls)
        await pilot.pause()
        assert cell(t, K_FLIGHTS, "rps").plain == "120.0"
        await pilot.press("escape")
        await until(pilot, lambda: cell(t, K_FLIGHTS, "rps").plain == "999.0")
        assert source.serving_wanted is True  # the modal did not switch serving polls off
