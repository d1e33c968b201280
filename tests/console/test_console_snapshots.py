"""Visual regression tests (pytest-textual-snapshot) on frozen, deterministic data.

Update after an intended change with `pytest tests/console --snapshot-update` and review the SVGs.
"""

from __future__ import annotations

from textual.widgets import Input

from console.app import WatchkeeperApp
from console.fleet.host_screen import HostScreen
from console.serving.endpoint_table import EndpointTable
from console.serving.endpoints_screen import EndpointsScreen
from console.serving.fallback import FallbackConfirm
from console.serving.rows import row_key
from tests.console.wk_fakes import FakeSource, down, fleet, serving_fleet, stale, up
from tests.console.wk_pilot import fleet_ready, opened_ready, wait_for

SIZE = (120, 32)


def make_app(**kw) -> WatchkeeperApp:
    source = FakeSource(
        fleet(
            up("gpu-01", 0, cpu=91.0, gpu_utils=(97.0, 80.0)),
            down("gpu-02", 1),
            up("gpu-03", 2, cpu=10.0, mem=77.0, gpu_utils=()),
            stale("cpu-04", 3),
            down("gpu-05", 4, reason="401 bad token", retry_in=30.0),
        )
    )
    # A long refresh: nothing moves while the screenshot is taken.
    return WatchkeeperApp(source, refresh_s=3600, **kw)


def test_fleet_screen(snap_compare) -> None:
    assert snap_compare(make_app(), terminal_size=SIZE, run_before=fleet_ready)


def test_fleet_sorted_and_filtered_readonly(snap_compare) -> None:
    async def run_before(pilot) -> None:
        await fleet_ready(pilot)
        await pilot.press("C", "C", "slash", *"!stale")
        pilot.app.screen.query_one(Input).cursor_blink = False
        await pilot.pause()

    assert snap_compare(make_app(readonly=True), terminal_size=SIZE, run_before=run_before)


def test_host_screen(snap_compare) -> None:
    async def run_before(pilot) -> None:
        await fleet_ready(pilot)
        await pilot.press("enter")
        await wait_for(pilot, lambda: isinstance(pilot.app.screen, HostScreen) and bool(pilot.app.screen.series))
        await pilot.pause()

    assert snap_compare(make_app(), terminal_size=(120, 40), run_before=run_before)


def test_help_screen(snap_compare) -> None:
    async def run_before(pilot) -> None:
        await fleet_ready(pilot)
        await pilot.press("question_mark")
        await pilot.pause()

    assert snap_compare(make_app(), terminal_size=(120, 36), run_before=run_before)


def test_ansi_theme(snap_compare) -> None:
    assert snap_compare(make_app(theme="ansi-dark"), terminal_size=SIZE, run_before=fleet_ready)


async def endpoints_ready(pilot) -> None:
    await opened_ready(pilot, "e", EndpointsScreen, EndpointTable)
    table = pilot.app.screen.query_one(EndpointTable)
    table.move_cursor(row=table.row_keys.index(row_key("gpu-02", "flights", "flights", 3)))
    await pilot.pause()


def test_endpoints_screen(snap_compare) -> None:
    app = WatchkeeperApp(FakeSource(serving_fleet()), refresh_s=3600)
    assert snap_compare(app, terminal_size=(140, 36), run_before=endpoints_ready)


def test_fallback_confirmation(snap_compare) -> None:
    async def run_before(pilot) -> None:
        await endpoints_ready(pilot)
        table = pilot.app.screen.query_one(EndpointTable)
        table.move_cursor(row=table.row_keys.index(row_key("gpu-01", "fraud", "fraud", 7)))
        await pilot.press("f")
        await wait_for(pilot, lambda: isinstance(pilot.app.screen, FallbackConfirm))
        await pilot.press("enter")  # an empty reason is refused: the dialog says so
        pilot.app.screen.query_one(Input).cursor_blink = False
        await pilot.pause()

    app = WatchkeeperApp(FakeSource(serving_fleet()), refresh_s=3600)
    assert snap_compare(app, terminal_size=(140, 36), run_before=run_before)
