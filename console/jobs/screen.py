"""The jobs screen (`j`): every agent's jobs in one table, the selected job's log tail beside it
(below it on a narrow terminal) and its detail under the table.

Jobs arrive with each fleet poll (`JobsPoller`, which fetches them on every poll while this screen is
open), so the table draws from `show_fleet`; rows are keyed by (agent, job id) and updated in place. The
log pane reads the selected job's stream (`o` switches stdout/stderr) on the poller's thread after
each poll and each change of selection, from where it last stopped.

Actions, each after a confirmation naming host, job, pipeline and command (reason optional; the agent
audits it): `Ctrl+k` cancels a pending or running job, `Q` requeues an ended one (a new attempt, same
id). Requests run in App-owned workers; read-only mode hides and refuses them.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.reactive import reactive
from textual.widget import Widget
from textual.widgets import DataTable, Header, Static

from agent.schemas import Job
from console.core.errors import why
from console.core.feeds import feed_parts
from console.core.poller import FleetStatus
from console.core.readonly import mutating
from console.core.screens.actions import HostCall, run_on_hosts
from console.core.screens.confirm import ConfirmScreen
from console.core.screens.filtered import FleetTableScreen
from console.jobs.client import JobsSource, jobs_feed
from console.jobs.logs import LogTail, read_on
from console.jobs.rows import JobRow, detail_lines, job_counts, job_rows, log_task, state_reason
from console.jobs.table import LABELS, SCREEN_COLUMNS, JobTable

if TYPE_CHECKING:
    from console.app import WatchkeeperApp

STYLES = Path(__file__).resolve().parent / "jobs.tcss"
LOG_LINES = 60  # shown in the pane (the tail keeps more)


@dataclass(frozen=True)
class JobRequest:
    """The job an action is about, in the words the dialog shows."""

    agent: str
    host: str
    job_id: str
    pipeline: str
    state: str
    reason: str
    command: str

    @classmethod
    def of(cls, row: JobRow) -> JobRequest:
        j = row.job
        return cls(row.agent, row.host, j.id, j.pipeline, j.state, state_reason(j), " ".join(j.command))

    @property
    def line(self) -> str:
        why = f" ({self.reason})" if self.reason and self.reason != "-" else ""
        return f"{self.host}  ·  {self.job_id}  ·  pipeline {self.pipeline}  ·  {self.state}{why}\n{self.command}"


EXPLAIN = {
    "cancel": "Cancelling stops the job (its whole process tree) or takes it out of the queue; the agent "
    "records you as the one who cancelled it.",
    "requeue": "Requeueing runs the ended job again as a new attempt under the same id, with the same "
    "command, request and pipeline.",
}
DONE = {"cancel": "cancelled", "requeue": "requeued"}


class JobConfirm(ConfirmScreen):
    """Confirm cancelling or requeueing one job; the reason is optional and audited by the agent."""

    CSS_PATH = STYLES

    def __init__(self, action: str, request: JobRequest) -> None:
        title = "Cancel" if action == "cancel" else "Requeue"
        super().__init__(
            heading=f"{title} {request.job_id} on {request.host}?",
            body=f"{request.line}\n\n{EXPLAIN[action]}",
            yes_label=f"Yes, {title.lower()} (y)",
            yes_variant="error" if action == "cancel" else "warning",
            box_class="-job",
            text_label="Reason (optional; recorded in the audit log):",
            text_placeholder="e.g. stuck at epoch 3, INC-1234" if action == "cancel" else "e.g. node fixed, rerun",
        )
        self.action = action
        self.request = request


class LogView(Widget):
    """The end of a log: as many of the newest lines as fit (re-cut on every resize), as `tail` shows it."""

    text: reactive[str] = reactive("")

    def update(self, text: str) -> None:
        self.text = text

    def render(self) -> Text:
        height = max(1, self.size.height)
        return Text("\n".join(self.text.split("\n")[-height:]), no_wrap=True, overflow="ellipsis")


class JobsScreen(FleetTableScreen):
    """All jobs of all agents; Escape goes back."""

    CSS_PATH = STYLES
    BINDINGS = [
        Binding("escape", "back", "Back"),
        Binding("backspace", "app.pop_screen", "Back", show=False),
        Binding("slash", "filter", "Filter"),
        Binding("s", "cycle_sort", "Sort"),
        Binding("o", "toggle_stream", "stdout/stderr"),
        # Mutating keys that mean nothing harmless on any other screen (see help.py).
        Binding("ctrl+k", "cancel_job", "Cancel job"),
        Binding("Q", "requeue_job", "Requeue"),
    ]
    VIEW = "jobs"
    STATUS_ID = "jobs-status"

    def __init__(self) -> None:
        super().__init__()
        self.stream = "stdout"
        self.tail: LogTail | None = None
        self._tail_key: tuple[str, str, int, str] | None = None
        self.log_error: str | None = None

    @property
    def table(self) -> JobTable:
        return self.query_one(JobTable)

    def compose(self) -> ComposeResult:
        yield Header()
        with Horizontal(id="jobs-body"):
            with Vertical(id="jobs-left"):
                yield JobTable(id="job-table")
                yield Static("", id="job-detail", markup=False)
            with Vertical(id="job-log-box"):
                yield Static("", id="job-log-title", markup=False)
                yield LogView(id="job-log")
        yield from self.compose_bottom()

    # ------------------------------------------------------------------ data

    def rows_of(self, status: FleetStatus) -> list[JobRow]:
        return job_rows(status)

    def show_fleet(self, status: FleetStatus) -> None:
        if not self.query(JobTable):
            # A poll that lands while the screen is still composing: draw it once the table is there.
            self.call_after_refresh(self.show_fleet, status)
            return
        super().show_fleet(status)
        self.refresh_log()

    def status_parts(self, status: FleetStatus) -> list[str]:
        table = self.table
        counts = job_counts(status)
        parts = [f"{len(table.rows_shown)}/{len(table.all_rows)} jobs"]
        parts.append(f"{counts['running']} running, {counts['pending']} pending")
        if counts["problems"]:
            parts.append(f"{counts['problems']} failed/lost")
        stale = sum(1 for r in table.all_rows if r.stale)
        if stale:
            parts.append(f"{stale} stale (host not answering)")
        parts.extend(feed_parts(status, jobs_feed, "jobs", "without jobs"))
        return parts

    def view_parts(self) -> list[str]:
        table = self.table
        if not table.sort_column:
            return []
        return [f"sort {LABELS[table.sort_column]}{'↓' if table.sort_reverse else '↑'}"]

    def show_detail(self) -> None:
        row = self.table.cursor_row_data
        detail = self.query_one("#job-detail", Static)
        if row is None:
            empty = self._shown is not None and not self.table.all_rows
            detail.update("no jobs (submit one with `watchkeeper jobs submit`)" if empty else "")
            self._show_log(None)
            return
        detail.update("\n".join(detail_lines(row)))
        self._show_log(row)
        key = (row.agent, row.job.id, row.job.attempt, self.stream, log_task(row.job))
        if key != self._tail_key:
            self.refresh_log()

    # ------------------------------------------------------------------ the log pane

    def _show_log(self, row: JobRow | None) -> None:
        title = self.query_one("#job-log-title", Static)
        body = self.query_one("#job-log", LogView)
        if row is None:
            title.update("log")
            body.update("")
            return
        j = row.job
        task = log_task(j)
        tail = self.tail if self._tail_key == (row.agent, j.id, j.attempt, self.stream, task) else None
        where = f"{j.id} {self.stream}" + (f" of task {task} (of {j.array})" if task is not None else "")
        if tail is not None and tail.dropped_bytes:
            where += f" ({tail.dropped_bytes} bytes cut by the size cap)"
        state = "" if tail is None or not tail.eof else " · ended"
        title.update(f"{where}{state}  (o: {'stderr' if self.stream == 'stdout' else 'stdout'})")
        if j.state == "PENDING" and j.started_at is None:
            body.update(f"not started yet: {state_reason(j) or 'waiting'}")
        elif self.log_error and tail is None:
            body.update(f"log not read: {self.log_error}")
        elif tail is None:
            body.update("reading…")
        else:
            body.update(tail.text(LOG_LINES) or "(nothing written yet)")

    def refresh_log(self) -> None:
        """Read on in the selected job's log (off the UI thread)."""
        row = self.table.cursor_row_data if self.is_mounted else None
        if row is not None:
            self._read_log(row.agent, row.job, self.stream)

    @work(exclusive=True, group="job-log", exit_on_error=False)
    async def _read_log(self, agent: str, job: Job, stream: str) -> None:
        if job.state == "PENDING" and job.started_at is None:
            return  # nothing written yet; the pane says why it waits
        task = log_task(job)
        key = (agent, job.id, job.attempt, stream, task)
        if key != self._tail_key or self.tail is None:
            self.tail, self._tail_key, self.log_error = LogTail(job.id, stream), key, None
        tail = self.tail
        if tail.eof:
            return
        source = cast(JobsSource, self.wk_app.source)
        fetch_log = getattr(source, "job_log", None)
        if fetch_log is None:
            self.log_error = "this console's source reads no logs"
            self.tail, self._tail_key = None, key
            self._redraw_log()
            return

        async def fetch(offset: int) -> Any:
            return await fetch_log(agent, job.id, stream, offset, 256 * 1024, task)

        try:
            await read_on(tail, fetch)
        except Exception as exc:  # the agent may be gone or the job unknown: say so in the pane
            self.log_error = why(exc)
            if not tail.lines and not tail.partial:
                self.tail = None
        self._redraw_log()

    def _redraw_log(self) -> None:
        if self.is_mounted:
            self._show_log(self.table.cursor_row_data)

    def action_toggle_stream(self) -> None:
        """`o`: show stderr instead of stdout, or back."""
        self.stream = "stderr" if self.stream == "stdout" else "stdout"
        self.show_detail()

    # ------------------------------------------------------------------ sorting

    @on(DataTable.HeaderSelected, "#job-table")
    def _header_clicked(self, event: DataTable.HeaderSelected) -> None:
        """A click on a column's header sorts by it; again flips the direction (as on the fleet screen)."""
        column = event.column_key.value
        if column is None:
            return
        table = self.table
        if table.sort_column == column:
            table.sort_reverse = not table.sort_reverse
        else:
            table.sort_column, table.sort_reverse = column, False
        self.update_status_line()

    def action_cycle_sort(self) -> None:
        """`s`: sort by the next column as shown (the default order after the last one)."""
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

    # ------------------------------------------------------------------ actions

    def _confirm(self, action: str) -> None:
        row = self.cursor_row("job")
        if row is None:
            return
        blocked = row.blocked(action)
        if blocked is not None:
            self.app.notify(f"cannot {action} {row.job.id} on {row.host}: {blocked}", severity="warning")
            return
        request = JobRequest.of(row)
        dialog = JobConfirm(action, request)
        self.confirm(dialog, lambda: run_job_action(self.wk_app, action, request, dialog.reason))

    @mutating
    def action_cancel_job(self) -> None:
        """`Ctrl+k`: cancel the selected job, after confirmation."""
        self._confirm("cancel")

    @mutating
    def action_requeue_job(self) -> None:
        """`Q`: requeue the selected (ended) job as a new attempt, after confirmation."""
        self._confirm("requeue")


def run_job_action(app: WatchkeeperApp, action: str, request: JobRequest, reason: str) -> None:
    """Send `action` to the job's agent in an App-owned worker, say how it went, and poll again."""
    source = cast(JobsSource, app.source)
    call = HostCall(
        f"job {request.agent}/{request.job_id}",
        f"{request.job_id} on {request.host}",
        functools.partial(source.job_action, request.agent, request.job_id, action, reason),
    )
    run_on_hosts(app, "job", action, DONE[action], [call], now_text)


def now_text(job: Any) -> str:
    """Where a job stands after an action, for its notification."""
    if not isinstance(job, Job):
        return ""
    why = state_reason(job)
    return f"; now {job.state}" + (f" ({why})" if why and why != "-" else "")
