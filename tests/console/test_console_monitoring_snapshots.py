"""Visual regression tests of the drift and alerts screens (pytest-textual-snapshot), on frozen data.

Update after an intended change with `just snapshots` (pytest --snapshot-update) and review the SVGs.
"""

from __future__ import annotations

from console.app import WatchkeeperApp
from console.monitoring.alert_table import AlertTable
from console.monitoring.alerts_screen import AlertsScreen, SilenceConfirm
from console.monitoring.drift_screen import DriftScreen
from console.serving.endpoint_table import EndpointTable
from console.serving.endpoints_screen import EndpointsScreen
from console.serving.rows import row_key
from tests.console.wk_fakes import FakeSource, alerts_fleet, serving_fleet
from tests.console.wk_pilot import opened_ready, wait_for


async def drift_ready(pilot) -> None:
    await opened_ready(pilot, "e", EndpointsScreen, EndpointTable)
    app = pilot.app
    table = app.screen.query_one(EndpointTable)
    table.move_cursor(row=table.row_keys.index(row_key("gpu-01", "flights", "flights", 3)))
    await pilot.press("d")
    await wait_for(pilot, lambda: isinstance(app.screen, DriftScreen) and app.screen.histogram is not None)
    await pilot.pause()


def test_drift_screen(snap_compare) -> None:
    app = WatchkeeperApp(FakeSource(serving_fleet()), refresh_s=3600)
    assert snap_compare(app, terminal_size=(140, 44), run_before=drift_ready)


def test_drift_screen_previous_window_second_feature(snap_compare) -> None:
    async def run_before(pilot) -> None:
        await drift_ready(pilot)
        screen = pilot.app.screen
        await pilot.press("b")
        await wait_for(pilot, lambda: screen.loads == 2)
        await pilot.press("down", "down", "down")  # carrier: categorical, unseen and missing
        await wait_for(pilot, lambda: screen.histogram is not None and screen.histogram.feature == "carrier")
        await pilot.pause()

    app = WatchkeeperApp(FakeSource(serving_fleet()), refresh_s=3600)
    assert snap_compare(app, terminal_size=(140, 44), run_before=run_before)


async def alerts_ready(pilot) -> None:
    await opened_ready(pilot, "exclamation_mark", AlertsScreen, AlertTable)
    await pilot.pause()


def test_alerts_screen(snap_compare) -> None:
    app = WatchkeeperApp(FakeSource(alerts_fleet()), refresh_s=3600)
    assert snap_compare(app, terminal_size=(140, 36), run_before=alerts_ready)


def test_silence_dialog(snap_compare) -> None:
    async def run_before(pilot) -> None:
        await alerts_ready(pilot)
        table = pilot.app.screen.query_one(AlertTable)
        table.move_cursor(row=1)
        await pilot.press("z")
        await wait_for(pilot, lambda: isinstance(pilot.app.screen, SilenceConfirm))
        await pilot.press("down")
        await pilot.pause()

    app = WatchkeeperApp(FakeSource(alerts_fleet()), refresh_s=3600)
    assert snap_compare(app, terminal_size=(140, 40), run_before=run_before)
