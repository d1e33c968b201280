"""The fleet table: one row per agent, keyed by agent name, filtered and sorted in place."""

from __future__ import annotations

from collections.abc import Hashable

from rich.text import Text
from textual.binding import Binding
from textual.reactive import reactive

from console.core.poller import AgentState
from console.core.widgets.keyed_table import Cell, FilteredRowsTable, column_cell
from console.fleet.rows import SCREEN_COLUMNS, WHY_WIDTH, FleetRow, sort_rows

STATE_STYLE = {AgentState.UP: "green", AgentState.STALE: "bold yellow", AgentState.DOWN: "bold red"}
# Percent thresholds at which a value is drawn as a warning / as critical.
HOT = (75.0, 90.0)


def _level_style(value: float | None) -> str:
    if value is None:
        return ""
    if value >= HOT[1]:
        return "bold red"
    if value >= HOT[0]:
        return "yellow"
    return ""


def row_cells(row: FleetRow) -> tuple[Cell, ...]:
    """Display cells of one row, styled (colour by state and by how hot a value is)."""
    cells: list[Cell] = []
    dim = "dim" if row.state is not AgentState.UP else ""
    for column in SCREEN_COLUMNS:
        text = row.text(column.key)
        if column.key == "why" and len(text) > WHY_WIDTH:
            text = text[: WHY_WIDTH - 1] + "…"
        if column.key == "state":
            style = STATE_STYLE[row.state]
        elif column.key in ("cpu", "mem", "gpu_util"):
            style = dim or _level_style(row.sort_value(column.key))
        elif column.key == "gpu_mem":
            frac = row.gpu_mem
            style = dim or _level_style(None if frac is None else frac * 100)
        elif column.key == "why":
            style = STATE_STYLE[row.state] if row.state is not AgentState.UP else ""
        else:
            style = dim
        cells.append(column_cell(text, column, style))
    return tuple(cells)


class FleetTable(FilteredRowsTable[FleetRow]):
    """Shows `FleetRow`s; `sort_column`/`sort_reverse`/`row_filter` are reactive view state."""

    # DataTable hides Enter from the footer; here it is the drill-down, so show it.
    BINDINGS = [Binding("enter", "select_cursor", "Open")]

    sort_column: reactive[str | None] = reactive(None)
    sort_reverse: reactive[bool] = reactive(False)

    COLUMNS = SCREEN_COLUMNS

    def cells(self, row: FleetRow) -> tuple[Cell, ...]:
        return row_cells(row)

    def order(self, rows: list[FleetRow]) -> list[FleetRow]:
        return sort_rows(rows, self.sort_column, self.sort_reverse)

    def order_key(self, row: FleetRow) -> Hashable:
        # A row moves only when its fleet place or the sorted column's value changed.
        return (row.order, row.sort_value(self.sort_column) if self.sort_column else None)

    def watch_sort_column(self) -> None:
        self.render_rows()
        self._label_sorted_column()

    def watch_sort_reverse(self) -> None:
        self.render_rows()
        self._label_sorted_column()

    def _label_sorted_column(self) -> None:
        if not self.is_mounted:
            return
        arrow = "↓" if self.sort_reverse else "↑"
        for column in SCREEN_COLUMNS:
            col = self.columns.get(column.key)  # type: ignore[call-overload]
            if col is None:
                continue
            label = f"{column.label}{arrow}" if column.key == self.sort_column else column.label
            if col.label.plain != label:
                col.label = Text(label)
                # Widths are measured when a column is added; make room for the arrow.
                col.content_width = max(col.content_width, len(label))
        self.refresh(layout=True)
