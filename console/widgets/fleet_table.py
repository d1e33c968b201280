"""The fleet table: one row per agent, keyed by agent name, filtered and sorted in place."""

from __future__ import annotations

from rich.text import Text
from textual.binding import Binding
from textual.reactive import reactive

from console.client import AgentState
from console.filtering import RowFilter
from console.rows import COLUMNS, FleetRow, sort_rows
from console.widgets.keyed_table import Cell, KeyedTable

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
    for column in COLUMNS:
        text = row.text(column.key)
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
        cells.append(Text(text, style=style, justify="right" if column.numeric else "left"))
    return tuple(cells)


class FleetTable(KeyedTable):
    """Shows `FleetRow`s; `sort_column`/`sort_reverse`/`row_filter` are reactive view state."""

    # DataTable hides Enter from the footer; here it is the drill-down, so show it.
    BINDINGS = [Binding("enter", "select_cursor", "Open")]

    sort_column: reactive[str | None] = reactive(None)
    sort_reverse: reactive[bool] = reactive(False)
    row_filter: reactive[RowFilter] = reactive(RowFilter, always_update=True)

    def __init__(self, **kwargs: object) -> None:
        super().__init__([(c.key, c.label) for c in COLUMNS], cursor_type="row", zebra_stripes=True, **kwargs)
        self._rows: list[FleetRow] = []

    @property
    def rows_shown(self) -> list[FleetRow]:
        """The rows that pass the filter, in display order."""
        shown = [r for r in self._rows if self.row_filter.matches(r.matches_text())]
        return sort_rows(shown, self.sort_column, self.sort_reverse)

    def show(self, rows: list[FleetRow]) -> None:
        """Display a new poll's rows (in fleet order)."""
        self._rows = list(rows)
        self._render_rows()

    def _render_rows(self) -> None:
        if not self.is_mounted:
            return
        self.sync([(r.key, row_cells(r)) for r in self.rows_shown])

    def watch_sort_column(self) -> None:
        self._render_rows()
        self._label_sorted_column()

    def watch_sort_reverse(self) -> None:
        self._render_rows()
        self._label_sorted_column()

    def watch_row_filter(self) -> None:
        self._render_rows()

    def _label_sorted_column(self) -> None:
        if not self.is_mounted:
            return
        arrow = "↓" if self.sort_reverse else "↑"
        for column in COLUMNS:
            col = self.columns.get(column.key)  # type: ignore[call-overload]
            if col is None:
                continue
            label = f"{column.label}{arrow}" if column.key == self.sort_column else column.label
            if col.label.plain != label:
                col.label = Text(label)
                # Widths are measured when a column is added; make room for the arrow.
                col.content_width = max(col.content_width, len(label))
        self.refresh(layout=True)
