"""The timeline screen: opened with `t` from an endpoint, an alert or a rollout; hosts merged; cursor, zoom, `w`."""

from __future__ import annotations

from agent.schemas import TimelineSeries
from console.app import WatchkeeperApp
from console.monitoring.alert_table import AlertTable
from console.monitoring.alerts_screen import AlertsScreen
from console.serving.endpoint_table import EndpointTable
from console.serving.endpoints_screen import EndpointsScreen
from console.serving.rows import row_key
from console.timeline.client import merge
from console.timeline.render import render
from console.timeline.screen import TimelineScreen
from tests.console.test_console_rollouts import rollouts_ready
from tests.console.timeline_fakes import FROZEN_NOW, make_timeline
from tests.console.wk_fakes import FakeSource, alerts_fleet, rollouts_fleet, serving_fleet
from tests.console.wk_pilot import opened_ready, screen_text, until, wait_for


async def timeline_ready(pilot) -> None:
    """Endpoints → the flights endpoint on gpu-02 → `t`, loaded."""
    await opened_ready(pilot, "e", EndpointsScreen, EndpointTable)
    table = pilot.app.screen.query_one(EndpointTable)
    table.move_cursor(row=table.row_keys.index(row_key("gpu-02", "flights", "flights", 3)))
    await pilot.press("t")
    await wait_for(pilot, lambda: isinstance(pilot.app.screen, TimelineScreen) and pilot.app.screen.loads >= 1)
    await pilot.pause()


def _app() -> WatchkeeperApp:
    return WatchkeeperApp(FakeSource(serving_fleet()), refresh_s=3600)


async def test_t_opens_the_merged_timeline_of_every_host_serving_the_endpoint() -> None:
    app = _app()
    async with app.run_test(size=(120, 40)) as pilot:
        await timeline_ready(pilot)
        screen = app.screen
        assert isinstance(screen, TimelineScreen)
        serving = [a.name for a in app.fleet_status.agents if a.serving and any(
            e.name == "flights" for e in a.serving.endpoints)]  # fmt: skip
        assert len(serving) >= 2 and screen.agents[0] == "gpu-02" and set(screen.agents) == set(serving)
        asked = {c[0] for c in app.source.timeline_calls}
        assert asked == set(serving)
        since, until_ = app.source.timeline_calls[0][2:]
        assert until_ == FROZEN_NOW and until_ - since == 3600  # zoom 1 h, ending now
        text = screen_text(app)
        for label in ("req/s", "p99 ms", "errors", "cpu %", "gpu %", "events"):
            assert label in text, label
        # The cursor starts on the newest column; move it back to the drift alert's moment and see its items.
        tl = screen.timeline
        assert tl is not None and len({x.host for x in tl.items}) >= 2  # merged
        await pilot.press(*["left"] * 200)
        await pilot.pause()
        assert screen.cursor == 0
        # Zoom out: 3 h, keeping the moment in view.
        await pilot.press("minus")
        await until(pilot, lambda: app.source.timeline_calls[-1][3] - app.source.timeline_calls[-1][2] == 3 * 3600)


async def test_w_from_an_alert_shows_what_changed_before_it_newest_first() -> None:
    app = WatchkeeperApp(FakeSource(alerts_fleet()), refresh_s=3600)
    async with app.run_test(size=(120, 40)) as pilot:
        await opened_ready(pilot, "exclamation_mark", AlertsScreen, AlertTable)
        table = app.screen.query_one(AlertTable)
        for i in range(table.row_count):  # an alert about an endpoint
            table.move_cursor(row=i)
            row = table.cursor_row_data
            if row is not None and row.alert.endpoint:
                break
        alert = table.cursor_row_data.alert
        await pilot.press("t")
        await until(pilot, lambda: isinstance(app.screen, TimelineScreen) and app.screen.loads >= 1)
        screen = app.screen
        assert screen.at == (alert.firing_at or alert.started_at)
        await pilot.press("w")
        await until(pilot, lambda: screen.before is not None)
        at = app.source.timeline_calls[-1][2]
        assert at == screen.at and app.source.timeline_calls[-1][3] == 1800
        assert [x.ts for x in screen.before] == sorted((x.ts for x in screen.before), reverse=True)
        assert "What changed in the 30 min before" in screen_text(app)
        await pilot.press("escape")  # leaves "what changed", stays on the timeline
        assert screen.before is None and app.screen is screen


def test_merge_sums_traffic_and_takes_the_worst_host_for_the_rest() -> None:
    a = make_timeline("h1", "flights", FROZEN_NOW - 3600, FROZEN_NOW, 0)
    b = make_timeline("h2", "flights", FROZEN_NOW - 3600, FROZEN_NOW, 1)
    m = merge([a, b])
    by = {s.name: s for s in m.series}
    sa = {s.name: s for s in a.series}
    sb = {s.name: s for s in b.series}
    i = 10
    assert by["requests_per_s"].values[i] == sa["requests_per_s"].values[i] + sb["requests_per_s"].values[i]
    assert by["p99_ms"].values[i] == max(sa["p99_ms"].values[i], sb["p99_ms"].values[i])
    assert by["gpu_utilization_percent"].values[i] == sb["gpu_utilization_percent"].values[i]  # h1 has no GPU
    assert [x.ts for x in m.items] == sorted(x.ts for x in m.items) and m.host == "h1, h2"


def test_render_keeps_a_spike_and_fits_the_width() -> None:
    tl = make_timeline("h1", "flights", FROZEN_NOW - 86400, FROZEN_NOW)
    spike = [None] * len(tl.buckets)
    spike[5] = 99.0
    tl.series[0] = TimelineSeries(name="requests_per_s", unit="req/s", values=spike)
    lines, cur, _col = render(tl, 80, 20)
    assert all(line.cell_len == lines[0].cell_len for line in lines[:-2]) and lines[0].cell_len <= 80
    assert "█" in lines[0].plain  # one bucket of 288 squeezed into ~62 columns still shows, at full height
    assert cur == len(lines[0].plain) - 18 - 1


async def test_t_from_a_rollout_opens_its_endpoint_around_its_start() -> None:
    app = WatchkeeperApp(FakeSource(rollouts_fleet()), refresh_s=3600)
    async with app.run_test(size=(120, 40)) as pilot:
        await rollouts_ready(pilot)
        row = app.screen.table.cursor_row_data
        await pilot.press("t")
        await until(pilot, lambda: isinstance(app.screen, TimelineScreen) and app.screen.loads >= 1)
        screen = app.screen
        assert screen.endpoint == row.rollout.endpoint and screen.at == row.rollout.started_at
        assert screen.agents[0] == row.agent and f"rollout {row.rollout.id}" in screen_text(app)
        since, until_ = app.source.timeline_calls[-1][2:]
        assert since < row.rollout.started_at < until_
