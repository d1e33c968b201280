"""The drift table: one row per feature, highest drift score first, with its score history."""

from __future__ import annotations

from console.core.widgets.keyed_table import Cell, FilteredRowsTable, column_cell
from console.core.widgets.spark import spark_text
from console.monitoring.drift_rows import COLUMNS, HISTORY_WIDTH, FeatureRow, history_ceiling

VERDICT_STYLE = {
    "ok": "green",
    "drift": "bold red",
    "quality": "bold yellow",
    "drift+quality": "bold reverse red",
    "no data": "dim",
}


def row_cells(row: FeatureRow) -> tuple[Cell, ...]:
    """Display cells of one feature: the verdict coloured, scores over threshold and growing gaps marked."""
    f = row.feature
    cells: list[Cell] = []
    for column in COLUMNS:
        if column.key == "history":
            # A fixed scale per feature: the threshold sits at 90 % of the height, so red means over it.
            cells.append(spark_text(row.history, HISTORY_WIDTH, history_ceiling(row)))
            continue
        style = ""
        match column.key:
            case "verdict":
                style = VERDICT_STYLE.get(f.verdict, "")
            case "score":
                style = "bold red" if f.drifted else ""
            case "feature":
                style = "italic" if f.name.startswith("__") else ""
            case "missing":
                style = "yellow" if row.missing_grew else ""
            case "range" | "unseen":
                value = f.out_of_range_share if column.key == "range" else f.unseen_share
                style = "yellow" if value else ""
        cells.append(column_cell(row.text(column.key), column, style))
    return tuple(cells)


class DriftTable(FilteredRowsTable[FeatureRow]):
    """Shows `FeatureRow`s filtered by `row_filter`, in the order given (by score)."""

    COLUMNS = COLUMNS

    def cells(self, row: FeatureRow) -> tuple[Cell, ...]:
        return row_cells(row)
