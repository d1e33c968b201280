"""The jobs and quotas tables: cells styled from the plain rows (`rows.py`, `quota_rows.py`)."""

from __future__ import annotations

from rich.text import Text
from textual.reactive import reactive

from console.core.rows import Column
from console.core.widgets.keyed_table import Cell, FilteredRowsTable, column_cell
from console.jobs.quota_rows import COLUMNS as QUOTA_COLUMNS
from console.jobs.quota_rows import RESOURCES, QuotaRow
from console.jobs.rows import COLUMNS, REASON_WIDTH, SCREEN_ORDER, STATE_STYLE, JobRow, sort_rows

SCREEN_COLUMNS: tuple[Column, ...] = tuple(next(c for c in COLUMNS if c.key == k) for k in SCREEN_ORDER)
LABELS = {c.key: c.label for c in COLUMNS}


def job_cells(row: JobRow) -> tuple[Cell, ...]:
    """Display cells: the state coloured; a stale row dim, its state marked `?`."""
    cells: list[Cell] = []
    muted = "dim" if row.stale else ""
    for column in SCREEN_COLUMNS:
        text = row.text(column.key)
        style = muted
        if column.key == "reason" and len(text) > REASON_WIDTH:
            text = text[: REASON_WIDTH - 1] + "…"
        if column.key == "state":
            style = "dim italic" if row.stale else STATE_STYLE.get(row.state, "")
        elif column.key == "reason" and not row.stale:
            style = STATE_STYLE.get(row.state, "") if row.state not in ("RUNNING", "COMPLETED") else ""
        elif column.key == "elapsed" and not row.stale:
            j = row.job
            elapsed = row.elapsed_s
            if j.time_limit and elapsed is not None and j.state == "RUNNING" and elapsed >= 0.9 * j.time_limit:
                style = "bold yellow"
        elif column.key == "mem" and not row.stale:
            j = row.job
            if j.state == "RUNNING" and j.rss_bytes is not None and j.rss_bytes >= 0.9 * j.mem:
                style = "bold yellow"
        cells.append(column_cell(text, column, style))
    return tuple(cells)


class JobTable(FilteredRowsTable[JobRow]):
    """Shows `JobRow`s; `sort_column`/`sort_reverse` are reactive view state (default: running first)."""

    COLUMNS = SCREEN_COLUMNS
    sort_column: reactive[str | None] = reactive(None)
    sort_reverse: reactive[bool] = reactive(False)

    def cells(self, row: JobRow) -> tuple[Cell, ...]:
        return job_cells(row)

    def order(self, rows: list[JobRow]) -> list[JobRow]:
        return sort_rows(rows, self.sort_column, self.sort_reverse)

    def watch_sort_column(self) -> None:
        self.render_rows()

    def watch_sort_reverse(self) -> None:
        self.render_rows()


def bar_style(row: QuotaRow, resource: str) -> str:
    """Red at or above the quota's near-limit share (or when the agent says so), yellow above 75 %."""
    frac = row.fraction(resource)
    if row.stale:
        return "dim"
    if frac is None:
        return "dim" if row.limit(resource) is None else ""
    if resource in row.near or frac >= row.usage.quota.near_limit:
        return "bold red"
    if frac >= 0.75:
        return "yellow"
    return "green"


def quota_cells(row: QuotaRow) -> tuple[Cell, ...]:
    cells: list[Cell] = []
    for column in QUOTA_COLUMNS:
        text = row.text(column.key)
        if column.key in RESOURCES:
            cells.append(Text(text, style=bar_style(row, column.key)))
        elif column.key == "pipeline":
            cells.append(column_cell(text, column, "dim" if row.stale else "bold" if row.near else ""))
        else:
            cells.append(column_cell(text, column, "dim" if row.stale else ""))
    return tuple(cells)


class QuotaTable(FilteredRowsTable[QuotaRow]):
    """Shows `QuotaRow`s in the order given (near-limit first)."""

    COLUMNS = QUOTA_COLUMNS

    def cells(self, row: QuotaRow) -> tuple[Cell, ...]:
        return quota_cells(row)
