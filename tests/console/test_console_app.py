"""Pilot tests of the TUI against a scripted FleetSource (no network)."""

from __future__ import annotations

from dataclasses import replace

from textual.binding import Binding
from textual.widgets import Input, Static

from console.app import WatchkeeperApp
from console.core.errors import AgentError, ErrorKind
from console.core.readonly import mutating
from console.core.screens.help import HelpScreen
from console.fleet.fleet_screen import FleetScreen
from console.fleet.fleet_table import FleetTable
from console.fleet.host_screen import HostScreen
from console.fleet.metric import MetricSpark
from console.fleet.process_table import GpuProcessTable, ProcessTable
from tests.console.wk_fakes import FakeSource, down, fleet, stale, up
from tests.console.wk_pilot import press_to, until


def four() -> FakeSource:
    return FakeSource(
        fleet(
            up("gpu-01", 0, cpu=91.0),
            down("gpu-02", 1),
            up("gpu-03", 2, cpu=10.0, gpu_utils=()),
            stale("cpu-04", 3),
        )
    )


def table(app: WatchkeeperApp) -> FleetTable:
    return app.screen.query_one(FleetTable)


async def ready(app: WatchkeeperApp, pilot) -> FleetTable:
    await until(pilot, lambda: isinstance(app.screen, FleetScreen) and table(app).row_count > 0)
    await pilot.pause()
    return table(app)


async def test_rows_are_updated_in_place_by_key() -> None:
    source = four()
    app = WatchkeeperApp(source, refresh_s=60)
    async with app.run_test(size=(120, 30)) as pilot:
        t = await ready(app, pilot)
        assert t.row_keys == ["gpu-01", "gpu-02", "gpu-03", "cpu-04"]
        assert t.get_cell("gpu-01", "cpu").plain == "91.0"
        row_objects = {k: t.rows[k] for k in t.rows}
        t.move_cursor(row=2)  # on gpu-03
        syncs = t.sync_count

        agents = list(source.status.agents)
        agents[0] = up("gpu-01", 0, cpu=42.0)
        source.status = replace(source.status, agents=tuple(agents))
        await pilot.press("r")
        await until(pilot, lambda: t.sync_count > syncs)

        assert t.get_cell("gpu-01", "cpu").plain == "42.0"
        assert t.row_keys == ["gpu-01", "gpu-02", "gpu-03", "cpu-04"]
        # Same Row objects: nothing was cleared and re-added; only the one changed cell updated.
        assert {k: t.rows[k] for k in t.rows} == row_objects
        assert all(t.rows[k] is row_objects[k] for k in t.rows)
        assert t.last_sync_changes == 1
        assert t.cursor_key == "gpu-03"


async def test_new_agent_rows_appear_and_removed_ones_go() -> None:
    source = four()
    app = WatchkeeperApp(source, refresh_s=60)
    async with app.run_test(size=(120, 30)) as pilot:
        t = await ready(app, pilot)
        kept = t.rows["gpu-01"]
        source.status = fleet(up("gpu-01", 0, cpu=91.0), up("gpu-09", 4))
        syncs = t.sync_count
        await pilot.press("r")
        await until(pilot, lambda: t.sync_count > syncs)
        assert t.row_keys == ["gpu-01", "gpu-09"]
        assert t.rows["gpu-01"] is kept


async def test_filter_regex_invert_invalid_and_clear() -> None:
    app = WatchkeeperApp(four(), refresh_s=60)
    async with app.run_test(size=(120, 30)) as pilot:
        t = await ready(app, pilot)
        await pilot.press("slash")
        box = app.screen.query_one("#filter", Input)
        assert box.has_focus and box.display
        await pilot.press(*"gpu-0[12]")
        assert t.row_keys == ["gpu-01", "gpu-02"]
        # Mid-typing an invalid pattern keeps the last valid filter and marks the input.
        box.value = "gpu-("
        await pilot.pause()
        assert box.has_class("-invalid") and t.row_keys == ["gpu-01", "gpu-02"]
        box.value = "!down|stale"
        await pilot.pause()
        assert not box.has_class("-invalid")
        assert t.row_keys == ["gpu-01", "gpu-03"]
        await pilot.press("enter")
        assert t.has_focus
        assert "filter /!down|stale" in str(app.screen.query_one("#fleet-status", Static).render())
        await pilot.press("escape")
        assert t.row_keys == ["gpu-01", "gpu-02", "gpu-03", "cpu-04"]
        assert not box.display


async def test_filter_matches_reason_and_survives_refresh() -> None:
    source = four()
    app = WatchkeeperApp(source, refresh_s=60)
    async with app.run_test(size=(120, 30)) as pilot:
        t = await ready(app, pilot)
        await pilot.press("slash", *"refused", "enter")
        assert t.row_keys == ["gpu-02"]
        syncs = t.sync_count
        await pilot.press("r")
        await until(pilot, lambda: t.sync_count > syncs)
        assert t.row_keys == ["gpu-02"]


async def test_sort_keys_reverse_and_cycle() -> None:
    app = WatchkeeperApp(four(), refresh_s=60)
    async with app.run_test(size=(120, 30)) as pilot:
        t = await ready(app, pilot)
        await pilot.press("C")
        assert t.row_keys == ["cpu-04", "gpu-03", "gpu-01", "gpu-02"]  # 3, 10, 91, down last
        assert "CPU%↑" in [c.label.plain for c in t.ordered_columns]
        await pilot.press("C")
        assert t.row_keys == ["gpu-01", "gpu-03", "cpu-04", "gpu-02"]  # down still last
        assert "CPU%↓" in [c.label.plain for c in t.ordered_columns]
        await pilot.press("S")
        assert t.row_keys == ["gpu-02", "cpu-04", "gpu-01", "gpu-03"]  # problems first
        # `s` cycles in the order shown: from STATE to the next column (WHY), ascending.
        await pilot.press("s")
        assert t.sort_column == "why" and not t.sort_reverse
        for _ in range(8):  # why, cpu, mem, gpus, gpu%, gpu mem, jobs r/p (issue 13), age
            await pilot.press("s")
        assert t.sort_column is None  # after the last column: back to fleet order
        assert t.row_keys == ["gpu-01", "gpu-02", "gpu-03", "cpu-04"]
        assert [c.label.plain for c in t.ordered_columns][2] == "WHY"  # the reason before the numbers


async def test_sort_keeps_cursor_on_the_same_agent() -> None:
    app = WatchkeeperApp(four(), refresh_s=60)
    async with app.run_test(size=(120, 30)) as pilot:
        t = await ready(app, pilot)
        t.move_cursor(row=0)
        assert t.cursor_key == "gpu-01"
        await pilot.press("C")
        assert t.cursor_key == "gpu-01" and t.cursor_row == 2


async def test_enter_drills_into_host_and_escape_returns() -> None:
    source = four()
    app = WatchkeeperApp(source, refresh_s=60)
    async with app.run_test(size=(120, 40)) as pilot:
        t = await ready(app, pilot)
        t.move_cursor(row=0)
        await press_to(pilot, HostScreen, "enter")
        host = app.screen
        assert isinstance(host, HostScreen) and host.agent == "gpu-01"
        await until(pilot, lambda: bool(host.series))
        await pilot.pause()
        assert host.query_one("#cpu", MetricSpark).value_text.startswith("91.0%")
        history = host.query_one("#cpu", MetricSpark).history
        assert len(history) > 100 and max(history) <= 100  # gap (None) dropped, not drawn as 0
        assert 0.0 not in history[4:7]
        assert history[-1] == 91.0  # the live snapshot extends the (batch-written) stored history
        assert len(host.query("GpuPanel")) == 2
        assert {m for _, m in source.series_calls} >= {"cpu_percent", "gpu_utilization_percent"}
        assert host.query_one("#top-cpu", ProcessTable).row_keys == ["100", "101", "102"]
        assert host.query_one("#top-rss", ProcessTable).row_keys == ["102", "101", "100"]
        assert host.query_one("#gpu-procs", GpuProcessTable).row_count == 2
        await pilot.press("escape")
        assert isinstance(app.screen, FleetScreen)


async def test_host_screen_shows_history_errors() -> None:
    source = four()
    source.series_error = AgentError(ErrorKind.HTTP_4XX, "HTTP 400: unknown metric")
    app = WatchkeeperApp(source, refresh_s=60)
    async with app.run_test(size=(120, 40)) as pilot:
        await ready(app, pilot)
        app.open_host("gpu-03")
        await until(pilot, lambda: isinstance(app.screen, HostScreen) and bool(app.screen.series_errors))
        await pilot.pause()
        note = app.screen.query_one("#history-note", Static)
        assert note.display and "HTTP 400: unknown metric" in str(note.render())
        assert len(app.screen.query("GpuPanel")) == 0  # gpu-03 has none


async def test_help_modal_blocks_redraw_until_closed() -> None:
    source = four()
    app = WatchkeeperApp(source, refresh_s=60)
    async with app.run_test(size=(120, 40)) as pilot:
        t = await ready(app, pilot)
        await pilot.press("question_mark")
        assert isinstance(app.screen, HelpScreen)
        assert "filter (regex" in str(app.screen.query_one("#help-body", Static).render())
        polls = source.polls
        source.status = fleet(
            *(replace(a) for a in source.status.agents[:1]), up("gpu-02", 1, cpu=55.0), *source.status.agents[2:]
        )
        await pilot.press("r")  # app bindings are masked by the modal...
        await pilot.pause(0.1)
        assert source.polls == polls
        app.action_refresh_now()  # ...but the timer keeps polling underneath
        await until(pilot, lambda: source.polls > polls)
        await pilot.pause()
        assert app.fleet_status is source.status
        assert t.get_cell("gpu-02", "state").plain == "down"  # not redrawn under the modal
        await pilot.press("escape")
        await pilot.pause()
        assert isinstance(app.screen, FleetScreen)
        assert t.get_cell("gpu-02", "state").plain == "up"
        assert t.get_cell("gpu-02", "cpu").plain == "55.0"


async def test_polls_never_overlap_and_rearm() -> None:
    source = four()
    source.poll_delay_s = 0.15
    app = WatchkeeperApp(source, refresh_s=0.01)
    async with app.run_test(size=(120, 30)) as pilot:
        await until(pilot, lambda: source.polls >= 4)
        for _ in range(5):  # manual refresh while a poll is in flight is ignored
            await pilot.press("r")
        await until(pilot, lambda: source.polls >= 6)
    assert source.max_in_flight == 1
    assert source.closed  # connections closed on exit


async def test_poll_errors_go_to_the_one_sink_once() -> None:
    source = four()
    source.poll_error = RuntimeError("kaboom")
    app = WatchkeeperApp(source, refresh_s=0.01)
    seen: list[str] = []
    app.notify = lambda message, **kw: seen.append(message)  # type: ignore[method-assign]
    async with app.run_test(size=(120, 30)) as pilot:
        await until(pilot, lambda: source.polls >= 5)
    assert seen == ["poll failed: RuntimeError: kaboom"]


async def test_readonly_is_shown_and_refuses_mutating_actions() -> None:
    class Probe(FleetScreen):
        BINDINGS = [Binding("x", "restart_agent", "Restart")]
        restarted = 0

        @mutating
        def action_restart_agent(self) -> None:
            Probe.restarted += 1

    class ProbeApp(WatchkeeperApp):
        FLEET_SCREEN = Probe

    for readonly, expected in ((True, 0), (False, 1)):
        Probe.restarted = 0
        app = ProbeApp(four(), refresh_s=60, readonly=readonly)
        async with app.run_test(size=(120, 30)) as pilot:
            await until(pilot, lambda a=app: isinstance(a.screen, Probe) and a.fleet_status is not None)
            await pilot.pause()
            assert app.readonly is readonly
            assert ("READ-ONLY" in app.sub_title) is readonly
            assert app.has_class("-readonly") is readonly
            assert app.screen.check_action("restart_agent", ()) is (not readonly)
            assert app.screen.check_action("cycle_sort", ()) is True  # non-mutating untouched
            await pilot.press("x")
            await pilot.pause()
            # Invoked any other way, the action still refuses in read-only mode.
            await app.screen.run_action("restart_agent")
            assert Probe.restarted == expected * 2


async def test_q_quits_even_from_help() -> None:
    for keys in (("q",), ("question_mark", "q"), ("ctrl+c",)):
        app = WatchkeeperApp(four(), refresh_s=60)
        async with app.run_test() as pilot:
            await ready(app, pilot)
            await pilot.press(*keys)
            await pilot.pause()
            assert app._exit, keys
        assert app.return_code == 0


async def test_state_changes_are_announced_once() -> None:
    source = four()
    app = WatchkeeperApp(source, refresh_s=60)
    seen: list[tuple[str, str]] = []
    app.notify = lambda message, severity="information", **kw: seen.append((message, severity))  # type: ignore[method-assign]
    async with app.run_test(size=(120, 30)) as pilot:
        t = await ready(app, pilot)
        assert seen == []  # the first poll is not news
        agents = list(source.status.agents)
        agents[0] = down("gpu-01", 0, reason="timeout after 2s", retry_in=0)
        agents[1] = up("gpu-02", 1)
        source.status = fleet(*agents)
        syncs = t.sync_count
        app.action_refresh_now()
        await until(pilot, lambda: t.sync_count > syncs)
        await pilot.pause()
        assert sorted(seen) == [("gpu-01 is down: timeout after 2s", "error"), ("gpu-02 is up again", "information")]


async def test_host_screen_of_a_down_agent_without_data() -> None:
    app = WatchkeeperApp(four(), refresh_s=60)
    async with app.run_test(size=(120, 40)) as pilot:
        await ready(app, pilot)
        app.open_host("gpu-02")
        await until(pilot, lambda: isinstance(app.screen, HostScreen) and bool(app.screen.series))
        await pilot.pause()
        summary = str(app.screen.query_one("#host-summary", Static).render())
        assert "down: connection refused (retry in 8s)" in summary
        assert app.screen.query_one("#cpu", MetricSpark).value_text == ""
        assert app.screen.query_one("#top-cpu", ProcessTable).row_count == 0


async def test_host_screen_of_an_agent_that_went_down_marks_its_last_figures_stale_with_their_age() -> None:
    from console.core.poller import AgentState

    source = four()
    app = WatchkeeperApp(source, refresh_s=60)
    async with app.run_test(size=(120, 40)) as pilot:
        await ready(app, pilot)
        app.open_host("gpu-01")
        await until(pilot, lambda: isinstance(app.screen, HostScreen) and app.screen.status is not None)
        host = app.screen
        assert not host.query_one("#host-stale", Static).display
        assert not host.query_one("#host-body").has_class("-stale")
        # gpu-01 stops answering; its last sample is 4 minutes old.
        gone = replace(
            source.status.agents[0],
            state=AgentState.DOWN,
            reason="timeout after 2s",
            last_seen=source.status.polled_at - 240,
        )
        source.status = replace(source.status, agents=(gone, *source.status.agents[1:]))
        app.request_poll()
        await until(pilot, lambda: host.query_one("#host-stale", Static).display)
        banner = str(host.query_one("#host-stale", Static).render())
        assert banner == "LAST KNOWN figures, 4m old: down (timeout after 2s)"
        assert host.query_one("#host-body").has_class("-stale")
        # The old figures stay readable, but dimmed.
        assert host.query_one("#cpu", MetricSpark).value_text.startswith("91.0%")
        assert host.query_one("#cpu", MetricSpark).styles.text_opacity < 1
