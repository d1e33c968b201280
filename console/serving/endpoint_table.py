"""The endpoints table (one row per agent, endpoint and model version) and the loaded-models table."""

from __future__ import annotations

from collections.abc import Sequence

from rich.text import Text

from console.core.poller import AgentStatus
from console.core.widgets.keyed_table import Cell, FilteredRowsTable, KeyedTable, column_cell
from console.serving.rows import COLUMNS, ERROR_RATE_HOT, EndpointRow, loaded_model_cells

BREAKER_STYLE = {
    "closed": "green",
    "open": "bold reverse red",
    "half_open": "bold yellow",
    "disabled": "dim",
}
FORCED_STYLE = "bold reverse yellow"


def _rate_style(value: float | None, hot: tuple[float, float]) -> str:
    if value is None or value < hot[0]:
        return ""
    return "bold red" if value >= hot[1] else "yellow"


def row_cells(row: EndpointRow) -> tuple[Cell, ...]:
    """Display cells of one row: breaker states, forced fallback and bad rates stand out."""
    dim = "dim" if row.stale else ""
    cells: list[Cell] = []
    for column in COLUMNS:
        text = row.text(column.key)
        style = dim
        match column.key:
            case "breaker":
                style = dim or BREAKER_STYLE.get(row.breaker or "", "dim")
            case "mode":
                style = FORCED_STYLE if row.forced else "dim" if not row.current else dim
            case "errors":
                style = dim or _rate_style(row.error_rate, ERROR_RATE_HOT)
            case "fallback":
                style = dim or _rate_style(row.fallback_rate, (1e-9, 0.5))
            case "loaded":
                style = dim or ("yellow" if row.current and not row.loaded else "" if row.current else "dim")
            case "model" | "endpoint" | "host":
                style = dim or ("" if row.current else "dim")
        cells.append(column_cell(text, column, style))
    return tuple(cells)


class EndpointTable(FilteredRowsTable[EndpointRow]):
    """Shows `EndpointRow`s filtered by `row_filter`, in fleet order."""

    COLUMNS = COLUMNS

    def cells(self, row: EndpointRow) -> tuple[Cell, ...]:
        return row_cells(row)


_LOADED_COLUMNS = (
    ("model", "MODEL:VER"),
    ("format", "FORMAT"),
    ("memory", "MEMORY"),
    ("loaded", "LOADED"),
    ("used", "USED"),
    ("load_ms", "LOAD ms"),
    ("endpoints", "ENDPOINTS"),
)


class LoadedModelTable(KeyedTable):
    """The models in one agent's pool, biggest first."""

    def __init__(self, **kwargs: object) -> None:
        super().__init__(_LOADED_COLUMNS, cursor_type="none", **kwargs)

    def show(self, agent: AgentStatus | None, now: float) -> None:
        models = list(agent.serving.loaded_models) if agent is not None and agent.serving is not None else []
        models.sort(key=lambda m: (-m.memory_bytes, m.model, m.version))
        rows: list[tuple[str, Sequence[Cell]]] = []
        for m in models:
            assert agent is not None
            cells = loaded_model_cells(m, agent, now)
            rows.append(
                (
                    f"{m.model}:{m.version}",
                    tuple(Text(c, justify="right") if i in (2, 3, 4, 5) else c for i, c in enumerate(cells)),
                )
            )
        self.sync(rows)
