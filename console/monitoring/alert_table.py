"""The alerts table: every agent's alerts and the console's outage rows, worst first."""

from __future__ import annotations

from console.core.widgets.keyed_table import Cell, FilteredRowsTable, column_cell
from console.monitoring.alert_rows import COLUMNS, AlertRow

SEVERITY_STYLE = {"critical": "bold reverse red", "warning": "bold yellow", "info": "cyan"}
STATE_STYLE = {"firing": "bold red", "pending": "yellow", "resolved": "green"}
SUMMARY_MAX = 60  # the detail panel below the table has the whole text


def row_cells(row: AlertRow) -> tuple[Cell, ...]:
    """Display cells of one alert: severity and state coloured; resolved, handled and stale rows muted."""
    muted = row.stale or row.state == "resolved"
    cells: list[Cell] = []
    for column in COLUMNS:
        style = "dim" if muted else ""
        match column.key:
            case "severity":
                style = "dim" if muted else SEVERITY_STYLE.get(row.severity, "")
            case "state":
                style = "dim" if row.stale else STATE_STYLE.get(row.state, "")
            case "summary" | "subject" | "endpoint":
                style = style or ("dim" if row.handled else "")
            case "acked":
                style = style or ("green" if row.handled else "")
            case "host":
                style = "bold red" if row.synthesized else style
        text = row.text(column.key)
        if column.key == "summary" and len(text) > SUMMARY_MAX:
            text = text[: SUMMARY_MAX - 1] + "…"
        cells.append(column_cell(text, column, style))
    return tuple(cells)


class AlertTable(FilteredRowsTable[AlertRow]):
    """Shows `AlertRow`s filtered by `row_filter`, in the order given (state, severity, age)."""

    COLUMNS = COLUMNS

    def cells(self, row: AlertRow) -> tuple[Cell, ...]:
        return row_cells(row)
