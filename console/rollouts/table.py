"""The rollouts table: every agent's rollouts, those waiting for a human first; rows can be marked (`m`)."""

from __future__ import annotations

from rich.text import Text

from console.core.widgets.keyed_table import Cell, FilteredRowsTable, column_cell
from console.rollouts.rows import COLUMNS, STATE_STYLE, RolloutRow

MARK = "*"
MARK_STYLE = "bold magenta"


def row_cells(row: RolloutRow, marked: bool = False) -> tuple[Cell, ...]:
    """Display cells: the state coloured, a rollout awaiting approval in bold reverse, ended and stale rows dim."""
    muted = "dim" if row.stale or row.ended else ""
    cells: list[Cell] = [Text(MARK if marked else " ", style=MARK_STYLE)]
    for column in COLUMNS:
        style = muted
        match column.key:
            case "state":
                style = "dim" if row.stale else STATE_STYLE.get(row.state, "")
            case "host" | "endpoint" | "step":
                style = muted or ("bold" if row.awaiting else "")
            case "guards":
                guards = row.rollout.guards
                judged = guards and not row.unjudged
                style = muted or ("bold red" if row.breached else "green" if judged else "yellow" if guards else "")
            case "weight":
                style = muted or ("bold" if row.rollout.weight else "")
        cells.append(column_cell(row.text(column.key), column, style))
    return tuple(cells)


class RolloutTable(FilteredRowsTable[RolloutRow]):
    """Shows `RolloutRow`s filtered by `row_filter`, in the order given; `marked` keys carry a `*`."""

    def __init__(self, **kwargs: object) -> None:
        super().__init__([("mark", " "), *((c.key, c.label) for c in COLUMNS)], **kwargs)
        self.marked: set[str] = set()

    def cells(self, row: RolloutRow) -> tuple[Cell, ...]:
        return row_cells(row, row.key in self.marked)

    def show(self, rows: list[RolloutRow]) -> None:  # type: ignore[override]
        keys = {r.key for r in rows}
        self.marked &= keys  # a rollout that left the list is no longer marked
        super().show(rows)

    def toggle_mark(self, key: str) -> bool:
        """Mark or unmark one row; returns whether it is marked now."""
        if key in self.marked:
            self.marked.discard(key)
        else:
            self.marked.add(key)
        self.render_rows()
        return key in self.marked

    def clear_marks(self) -> None:
        self.marked.clear()
        self.render_rows()

    @property
    def marked_rows(self) -> list[RolloutRow]:
        """Marked rows in display order."""
        return [r for r in self.rows_shown if r.key in self.marked]
