"""Screens with a table and the k9s-style `/` filter line (regex; `!` inverts).

`FilteredTableScreen` owns the filter line and the status line below the table; `FleetTableScreen`
adds what the fleet-wide screens (fleet, endpoints, alerts, rollouts) share: rows drawn from each
poll, a fresh poll when opened, catching up on polls that arrived while covered, a detail panel that
follows the cursor, and a status line that says how many rows, how fresh and which filter.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any, ClassVar

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.widgets import DataTable, Footer, Input, Static

from console.core.filtering import RowFilter
from console.core.poller import FleetStatus
from console.core.screens.base import ConsoleScreen
from console.core.widgets.keyed_table import FilteredRowsTable


class FilterInput(Input):
    """The `/` filter line; Escape clears and hides it."""

    BINDINGS = [Binding("escape", "dismiss_filter", "Clear filter", show=False)]

    def action_dismiss_filter(self) -> None:
        self.screen.action_clear_filter()  # type: ignore[attr-defined]


class FilteredTableScreen(ConsoleScreen):
    """Owns the filter line of `self.table` (which has a `row_filter`); subclasses react in `filter_applied`."""

    table: Any  # a FilteredRowsTable subclass (with a `row_filter`)
    STATUS_ID: ClassVar[str] = "status"  # the id of the status line below the table
    _status_text: str | None = None  # what the status line shows

    def compose_bottom(self) -> ComposeResult:
        """The filter line (hidden until `/`), the status line and the footer."""
        yield FilterInput(placeholder="filter: regex (! inverts)", id="filter", classes="-hidden")
        yield Static("", id=self.STATUS_ID, markup=False)
        yield Footer()

    def show_status(self, parts: list[str]) -> None:
        """Show `parts` in the status line, the filter (if one is set) last."""
        if self.table.row_filter.active:
            parts.append(f"filter /{self.table.row_filter.text}")
        text = "  ·  ".join(parts)
        # Unchanged text: no update (each one re-lays the screen out, redrawing the table around it).
        if text != self._status_text:
            self._status_text = text
            self.query_one(f"#{self.STATUS_ID}", Static).update(text)

    def cursor_row(self, noun: str) -> Any:
        """The row under the cursor, or None after saying that no `noun` is selected."""
        row = self.table.cursor_row_data
        if row is None:
            self.app.notify(f"no {noun} selected", severity="warning")
        return row

    def filter_applied(self) -> None:
        """Called after the filter changed (subclasses update their status line, panels)."""

    def action_filter(self) -> None:
        """`/`: show and focus the filter line."""
        box = self.query_one(FilterInput)
        box.remove_class("-hidden")
        box.focus()

    def action_clear_filter(self) -> None:
        """Escape: drop the filter and go back to the table."""
        box = self.query_one(FilterInput)
        box.value = ""
        box.add_class("-hidden")
        box.remove_class("-invalid")
        self.table.row_filter = RowFilter()
        self.table.focus()
        self.filter_applied()

    def action_back(self) -> None:
        """Escape: clear the filter if one is set, else back."""
        if self.table.row_filter.active or self.query_one(FilterInput).has_focus:
            self.action_clear_filter()
            return
        self.app.pop_screen()

    @on(Input.Changed, "#filter")
    def _filter_changed(self, event: Input.Changed) -> None:
        try:
            row_filter = RowFilter.parse(event.value)
        except re.error:
            # Keep showing the last valid filter while the user is mid-way through a pattern.
            event.input.add_class("-invalid")
            return
        event.input.remove_class("-invalid")
        self.table.row_filter = row_filter
        self.filter_applied()

    @on(Input.Submitted, "#filter")
    def _filter_submitted(self, event: Input.Submitted) -> None:
        if not event.value:
            self.action_clear_filter()
            return
        self.table.focus()


class FleetTableScreen(FilteredTableScreen):
    """A table of rows from the whole fleet, redrawn in place from each poll.

    Subclasses give `rows_of(status)` and `status_parts(status)`, and may show the row under the cursor
    in `show_detail`. They must not define `on_mount` or `on_screen_resume` (Textual would run both):
    `opened` is the hook for what opening the screen does besides asking for a poll now.
    """

    VIEW: ClassVar[str | None] = None  # the sub-title while this screen is open

    def __init__(self) -> None:
        super().__init__()
        self._shown: FleetStatus | None = None

    def rows_of(self, status: FleetStatus) -> Sequence[Any]:
        """The table's rows for a poll."""
        raise NotImplementedError

    def status_parts(self, status: FleetStatus) -> list[str]:
        """What the status line says about the rows of the poll shown."""
        return []

    def view_parts(self) -> list[str]:
        """What the status line says about how the table is viewed (after the refresh interval)."""
        return []

    def opened(self) -> None:
        """Opening the screen asks for fresh data now, not in refresh_s."""
        self.wk_app.request_poll()

    def show_detail(self) -> None:
        """Show the row under the cursor (in subclasses with a detail panel)."""

    # ------------------------------------------------------------------ lifecycle

    def on_mount(self) -> None:
        if self.VIEW is not None:
            self.sub_title = self.VIEW
        self.table.focus()
        self.opened()
        if self.wk_app.fleet_status is not None:
            self.show_fleet(self.wk_app.fleet_status)
        else:
            self.update_status_line()

    def on_screen_resume(self) -> None:
        # Polls that arrived while a modal or another screen covered us were not drawn here.
        status = self.wk_app.fleet_status
        if status is not None and status is not self._shown:
            self.show_fleet(status)

    # ------------------------------------------------------------------ data

    def show_fleet(self, status: FleetStatus) -> None:
        """Update rows in place from a new poll."""
        self._shown = status
        self.table.show(self.rows_of(status))
        self.show_detail()
        self.update_status_line()

    def update_status_line(self) -> None:
        status = self._shown
        parts = ["waiting for first poll…"] if status is None else self.status_parts(status)
        parts.append(f"every {self.wk_app.refresh_s:g}s")
        parts.extend(self.view_parts())
        self.show_status(parts)

    @on(FilteredRowsTable.Settled)
    def _table_settled(self, event: FilteredRowsTable.Settled) -> None:
        # A burst drawn in slices ended: the rows shown (and the row under the cursor) are final now.
        if event.table is self.table:
            self.show_detail()
            self.update_status_line()

    @on(DataTable.RowHighlighted)
    def _row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        if event.data_table is self.table:
            self.show_detail()

    def filter_applied(self) -> None:
        self.update_status_line()
        self.show_detail()
