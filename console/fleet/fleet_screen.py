"""The fleet screen: every agent in one table, with filter, sort and drill-down."""

from __future__ import annotations

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.widgets import DataTable, Header

from console.core.poller import FleetStatus
from console.core.screens.filtered import FleetTableScreen
from console.fleet.fleet_table import FleetTable
from console.fleet.rows import SCREEN_COLUMNS, FleetRow, RowCache

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
_LABELS = {c.key: c.label for c in SCREEN_COLUMNS}


class FleetScreen(FleetTableScreen):
    """All agents; Enter opens one."""

    BINDINGS = [
        Binding("slash", "filter", "Filter"),
        Binding("s", "cycle_sort", "Sort"),
        Binding("escape", "clear_filter", "Clear filter", show=False),
        Binding("enter", "open_host", "Open", show=True, priority=False),
        Binding("e", "open_endpoints", "Endpoints"),
        Binding("exclamation_mark", "app.alerts", "Alerts"),
        Binding("j", "app.jobs", "Jobs"),
        Binding("u", "app.quotas", "Quotas"),
        *(
            Binding(key, f"sort_by('{column}')", f"Sort by {_LABELS[column]}", show=False)
            for key, column in SORT_KEYS.items()
        ),
    ]
    STATUS_ID = "fleet-status"

    def __init__(self) -> None:
        super().__init__()
        self._row_cache = RowCache()
        self._poll_s = 0.0

    def compose(self) -> ComposeResult:
        yield Header()
        yield FleetTable(id="fleet-table")
        yield from self.compose_bottom()

    @property
    def table(self) -> FleetTable:
        return self.query_one(FleetTable)

    def opened(self) -> None:
        """The first screen: the App polls as it starts."""

    def rows_of(self, status: FleetStatus) -> list[FleetRow]:
        return self._row_cache.rows(status)

    def status_parts(self, status: FleetStatus) -> list[str]:
        if status.complete:  # a phased poll's batches keep the last whole poll's duration
            self._poll_s = status.duration_s
        return [f"{len(self.table.rows_shown)}/{len(status.agents)} shown", f"poll {self._poll_s:.1f}s"]

    def view_parts(self) -> list[str]:
        table = self.table
        if not table.sort_column:
            return []
        arrow = "↓" if table.sort_reverse else "↑"
        return [f"sort {_LABELS[table.sort_column]}{arrow}"]

    # ------------------------------------------------------------------ sorting

    def action_sort_by(self, column: str) -> None:
        """Sort by `column`; the same column again flips the direction (k9s)."""
        table = self.table
        if table.sort_column == column:
            table.sort_reverse = not table.sort_reverse
        else:
            table.sort_column = column
            table.sort_reverse = False
        self.update_status_line()

    def action_cycle_sort(self) -> None:
        """`s`: sort by the next column as shown (fleet order after the last one)."""
        table = self.table
        keys = [c.key for c in SCREEN_COLUMNS]
        if table.sort_column is None:
            nxt: str | None = keys[0]
        else:
            i = keys.index(table.sort_column) + 1
            nxt = keys[i] if i < len(keys) else None
        table.sort_reverse = False
        table.sort_column = nxt
        self.update_status_line()

    @on(DataTable.HeaderSelected)
    def _header_clicked(self, event: DataTable.HeaderSelected) -> None:
        if event.column_key.value is not None:
            self.action_sort_by(event.column_key.value)

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
