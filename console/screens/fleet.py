"""The fleet screen: every agent in one table, with filter, sort and drill-down."""

from __future__ import annotations

from typing import TYPE_CHECKING

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.widgets import DataTable, Footer, Header, Static

from console.client import FleetStatus
from console.rows import COLUMN_KEYS, COLUMNS, fleet_rows
from console.screens.filtered import FilteredTableScreen, FilterInput
from console.widgets.fleet_table import FleetTable

if TYPE_CHECKING:
    from console.app import WatchkeeperApp

# k9s-style shift-letter sorts: pressing the same one again flips the direction.
SORT_KEYS: dict[str, str] = {
    "N": "host",
    "S": "state",
    "C": "cpu",
    "M": "mem",
    "G": "gpu_util",
    "U": "gpu_mem",
    "A": "age",
}
_LABELS = {c.key: c.label for c in COLUMNS}


class FleetScreen(FilteredTableScreen):
    """All agents; Enter opens one."""

    BINDINGS = [
        Binding("slash", "filter", "Filter"),
        Binding("s", "cycle_sort", "Sort"),
        Binding("escape", "clear_filter", "Clear filter", show=False),
        Binding("enter", "open_host", "Open", show=True, priority=False),
        Binding("e", "open_endpoints", "Endpoints"),
        Binding("exclamation_mark", "app.alerts", "Alerts"),
        *(
            Binding(key, f"sort_by('{column}')", f"Sort by {_LABELS[column]}", show=False)
            for key, column in SORT_KEYS.items()
        ),
    ]

    def __init__(self) -> None:
        super().__init__()
        self._shown: FleetStatus | None = None

    def compose(self) -> ComposeResult:
        yield Header()
        yield FleetTable(id="fleet-table")
        yield FilterInput(placeholder="filter: regex (! inverts)", id="filter", classes="-hidden")
        yield Static("", id="fleet-status", markup=False)
        yield Footer()

    @property
    def table(self) -> FleetTable:
        return self.query_one(FleetTable)

    @property
    def wk_app(self) -> WatchkeeperApp:
        return self.app  # type: ignore[return-value]

    def on_mount(self) -> None:
        self.table.focus()
        if self.wk_app.fleet_status is not None:
            self.show_fleet(self.wk_app.fleet_status)
        else:
            self._update_status_line()

    def on_screen_resume(self) -> None:
        # Polls that arrived while a modal or the host screen covered us were not drawn here.
        status = self.wk_app.fleet_status
        if status is not None and status is not self._shown:
            self.show_fleet(status)

    def show_fleet(self, status: FleetStatus) -> None:
        """Update rows in place from a new poll."""
        self._shown = status
        self.table.show(fleet_rows(status))
        self._update_status_line()

    def _update_status_line(self) -> None:
        table = self.table
        status = self._shown
        parts: list[str] = []
        if status is None:
            parts.append("waiting for first poll…")
        else:
            parts.append(f"{len(table.rows_shown)}/{len(status.agents)} shown")
            parts.append(f"poll {status.duration_s:.1f}s")
        parts.append(f"every {self.wk_app.refresh_s:g}s")
        if table.sort_column:
            arrow = "↓" if table.sort_reverse else "↑"
            parts.append(f"sort {_LABELS[table.sort_column]}{arrow}")
        if table.row_filter.active:
            parts.append(f"filter /{table.row_filter.text}")
        self.query_one("#fleet-status", Static).update("  ·  ".join(parts))

    # ------------------------------------------------------------------ sorting

    def action_sort_by(self, column: str) -> None:
        """Sort by `column`; the same column again flips the direction (k9s)."""
        table = self.table
        if table.sort_column == column:
            table.sort_reverse = not table.sort_reverse
        else:
            table.sort_column = column
            table.sort_reverse = False
        self._update_status_line()

    def action_cycle_sort(self) -> None:
        """`s`: sort by the next column (fleet order after the last one)."""
        table = self.table
        keys = list(COLUMN_KEYS)
        if table.sort_column is None:
            nxt: str | None = keys[0]
        else:
            i = keys.index(table.sort_column) + 1
            nxt = keys[i] if i < len(keys) else None
        table.sort_reverse = False
        table.sort_column = nxt
        self._update_status_line()

    @on(DataTable.HeaderSelected)
    def _header_clicked(self, event: DataTable.HeaderSelected) -> None:
        if event.column_key.value is not None:
            self.action_sort_by(event.column_key.value)

    # ------------------------------------------------------------------ filtering

    def _filter_applied(self) -> None:
        self._update_status_line()

    # ------------------------------------------------------------------ drill-down

    def action_open_endpoints(self) -> None:
        """`e`: every model endpoint across the fleet."""
        self.wk_app.open_endpoints()

    def action_open_host(self) -> None:
        """Enter: open the host under the cursor."""
        key = self.table.cursor_key
        if key is not None:
            self.wk_app.open_host(key)

    @on(DataTable.RowSelected, "#fleet-table")
    def _row_selected(self, event: DataTable.RowSelected) -> None:
        event.stop()
        if event.row_key.value is not None:
            self.wk_app.open_host(event.row_key.value)
