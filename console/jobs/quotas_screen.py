"""The quotas screen (`u`): every agent's pipelines, each resource's allocation against its quota as a
bar, near-limit rows first; the selected pipeline in full below (allocated, measured, limit; the host's
capacity for jobs and its enforcement tier). A resource without a limit says "unlimited".

Quotas arrive with the jobs in each fleet poll (`JobsPoller`); read-only: changing a quota is an admin's
`PUT /api/v1/quotas/{pipeline}` (or agent.toml), not a console key.
"""

from __future__ import annotations

from pathlib import Path

from textual.app import ComposeResult
from textual.binding import Binding
from textual.widgets import Header, Static

from console.core.feeds import feed_parts
from console.core.poller import FleetStatus
from console.core.screens.filtered import FleetTableScreen
from console.jobs.client import jobs_feed
from console.jobs.quota_rows import QuotaRow, detail_lines, quota_rows
from console.jobs.table import QuotaTable

STYLES = Path(__file__).resolve().parent / "jobs.tcss"


class QuotasScreen(FleetTableScreen):
    """All pipelines' quotas on all agents; Escape goes back."""

    CSS_PATH = STYLES
    BINDINGS = [
        Binding("escape", "back", "Back"),
        Binding("backspace", "app.pop_screen", "Back", show=False),
        Binding("slash", "filter", "Filter"),
    ]
    VIEW = "quotas"
    STATUS_ID = "quotas-status"

    @property
    def table(self) -> QuotaTable:
        return self.query_one(QuotaTable)

    def compose(self) -> ComposeResult:
        yield Header()
        yield QuotaTable(id="quota-table")
        yield Static("", id="quota-detail", markup=False)
        yield from self.compose_bottom()

    def show_fleet(self, status: FleetStatus) -> None:
        if not self.query(QuotaTable):
            # A poll that lands while the screen is still composing: draw it once the table is there.
            self.call_after_refresh(self.show_fleet, status)
            return
        super().show_fleet(status)

    def rows_of(self, status: FleetStatus) -> list[QuotaRow]:
        return quota_rows(status)

    def status_parts(self, status: FleetStatus) -> list[str]:
        rows = self.table.all_rows
        parts = [f"{len(self.table.rows_shown)}/{len(rows)} pipelines"]
        near = sum(1 for r in rows if r.near)
        if near:
            parts.append(f"{near} near a limit")
        stale = sum(1 for r in rows if r.stale)
        if stale:
            parts.append(f"{stale} stale (host not answering)")
        parts.extend(feed_parts(status, jobs_feed, "quotas", "without jobs"))
        return parts

    def show_detail(self) -> None:
        row = self.table.cursor_row_data
        detail = self.query_one("#quota-detail", Static)
        if row is None:
            empty = self._shown is not None and not self.table.all_rows
            detail.update("no quotas (agents without jobs, or none answered yet)" if empty else "")
            return
        status = self._shown
        agent = status.get(row.agent) if status is not None else None
        feed = jobs_feed(agent) if agent is not None else None
        detail.update("\n".join(detail_lines(row, feed.quotas if feed else None)))
