"""Helpers for the console's Pilot and snapshot tests: waiting, opening screens, reading what they show."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from textual.app import App
from textual.screen import Screen
from textual.widgets import DataTable

from console.fleet.fleet_screen import FleetScreen
from console.fleet.fleet_table import FleetTable

REPO = Path(__file__).resolve().parents[2]
T = TypeVar("T", bound=DataTable)


async def until(pilot, predicate: Callable[[], Any], timeout: float = 5.0) -> None:
    """Let the app run until `predicate()` holds (fails after `timeout` seconds)."""
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while not predicate():
        assert loop.time() < end, "condition not reached"
        await pilot.pause(0.02)


def screen_text(app: App) -> str:
    """The visible screen as plain text, line by line."""
    return "\n".join(strip.text for strip in app.screen._compositor.render_strips())


def recording(app: App) -> list[tuple[str, str]]:
    """Every notification the app shows from now on, as (message, severity)."""
    seen: list[tuple[str, str]] = []
    app.notify = lambda message, severity="information", **kw: seen.append((message, severity))  # type: ignore[method-assign]
    return seen


async def open_from_fleet(app: App, pilot, key: str, screen: type[Screen], table: type[T]) -> T:
    """Once the fleet is drawn, press `key` and wait until `screen` shows rows in its `table`."""
    await until(pilot, lambda: isinstance(app.screen, FleetScreen) and app.fleet_status is not None)  # type: ignore[attr-defined]
    await pilot.press(key)
    await until(pilot, lambda: isinstance(app.screen, screen) and app.screen.query_one(table).row_count > 0)
    await pilot.pause()
    return app.screen.query_one(table)


async def press_to(pilot, screen: type[Screen], *keys: str) -> None:
    """Press `keys`, then wait until `screen` (a dialog, or where the keys lead) is the one on top."""
    await pilot.press(*keys)
    await until(pilot, lambda: isinstance(pilot.app.screen, screen))


async def select(pilot, table: DataTable, key: str) -> None:
    """Move the cursor of a keyed table to the row `key`."""
    table.move_cursor(row=table.row_keys.index(key))  # type: ignore[attr-defined]
    await pilot.pause()


def imports_textual(*modules: str) -> bool:
    """Whether importing `modules` (in a fresh interpreter) pulls in Textual."""
    code = (
        f"import sys, {', '.join(modules)}; "
        "sys.exit(1 if any(m == 'textual' or m.startswith('textual.') for m in sys.modules) else 0)"
    )
    return subprocess.run([sys.executable, "-c", code], cwd=REPO).returncode != 0


# --------------------------------------------------------------------------- snapshots


async def wait_for(pilot, predicate: Callable[[], Any]) -> None:
    """(Snapshots) wait until `predicate()` holds, then let the app settle once."""
    for _ in range(300):
        if predicate():
            await pilot.pause()
            return
        await asyncio.sleep(0.01)
    raise AssertionError("never ready")


async def fleet_ready(pilot) -> None:
    """(Snapshots) the fleet table has rows."""
    app = pilot.app
    await wait_for(
        pilot,
        lambda: (
            app.fleet_status is not None
            and app.screen.query(FleetTable)
            and app.screen.query_one(FleetTable).row_count > 0
        ),
    )


async def opened_ready(pilot, key: str, screen: type[Screen], table: type[DataTable]) -> None:
    """(Snapshots) the fleet drawn, then `key` pressed and `screen` showing rows in its `table`."""
    await fleet_ready(pilot)
    await pilot.press(key)
    app = pilot.app
    await wait_for(pilot, lambda: isinstance(app.screen, screen) and app.screen.query_one(table).row_count > 0)
