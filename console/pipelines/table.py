"""The pipelines table: one row per pipeline per agent with its last run, the state coloured."""

from __future__ import annotations

from console.core.rows import Column
from console.core.widgets.keyed_table import Cell, FilteredRowsTable, column_cell
from console.pipelines.rows import COLUMNS, STATE_STYLE, PipelineRow

SCREEN_COLUMNS: tuple[Column, ...] = tuple(
    Column(label.lower().replace(" ", "_"), label, numeric=label == "STEPS") for label in COLUMNS
)


class PipelineTable(FilteredRowsTable[PipelineRow]):
    """Shows `PipelineRow`s: active runs first, then by host and name."""

    COLUMNS = SCREEN_COLUMNS

    def cells(self, row: PipelineRow) -> tuple[Cell, ...]:
        texts = row.cells()
        state = row.last.state if row.last else ""
        return tuple(
            column_cell(text, column, STATE_STYLE.get(state, "") if column.key == "state" else "")
            for text, column in zip(texts, SCREEN_COLUMNS, strict=True)
        )

    def order(self, rows: list[PipelineRow]) -> list[PipelineRow]:
        def key(r: PipelineRow) -> tuple[int, int, str]:
            active = r.summary.active_runs > 0 or (r.last is not None and r.last.state in ("PENDING", "RUNNING"))
            return (0 if active else 1, r.order, r.name)

        return sorted(rows, key=key)
