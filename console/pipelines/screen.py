"""The pipelines screen (`P`): every agent's pipelines with their last runs; beside the table, the selected
pipeline's last run as a tree of steps (state, cache hits, duration; a running step's time so far), its
metrics beside the previous run's, and the log of the step that matters (the running one, else the one
that failed, else the last): a job's log through the jobs API, an in-process step's last lines.

Nothing in the fleet poll carries pipelines; after each poll this screen asks the source (on the
poller's thread, `PipelinesPoller.fleet_pipelines` and `run_detail`), so the UI thread never waits on
the network. Actions, each after a confirmation naming host, pipeline and run (reason optional; the
agent audits it): `Ctrl+g` runs the selected pipeline with its defaults, `Ctrl+k` cancels its active run.
Read-only mode hides and refuses both.

(`p` was taken: it promotes a rollout, a mutating key, so it can mean nothing else anywhere.)
"""

from __future__ import annotations

import functools
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.widgets import Header, Static

from agent.schemas import Run, StepRun
from console.core.errors import why
from console.core.poller import FleetStatus
from console.core.readonly import mutating
from console.core.screens.actions import HostCall, run_on_hosts
from console.core.screens.confirm import ConfirmScreen
from console.core.screens.filtered import FleetTableScreen
from console.jobs.logs import LogTail, read_on
from console.jobs.screen import LogView
from console.pipelines.rows import (
    ACTIVE,
    PipelineRow,
    duration,
    metrics_beside,
    pipeline_rows,
    progress,
    render,
    run_header,
    run_tree,
)
from console.pipelines.table import PipelineTable

if TYPE_CHECKING:
    from console.app import WatchkeeperApp
    from console.pipelines.client import AgentPipelines, RunDetail

STYLES = Path(__file__).resolve().parent / "pipelines.tcss"
LOG_LINES = 40


class PipelineConfirm(ConfirmScreen):
    """Confirm running a pipeline or cancelling its run; the reason is optional and audited."""

    CSS_PATH = STYLES

    def __init__(self, action: str, row: PipelineRow, run_id: str | None) -> None:
        if action == "run":
            heading = f"Run {row.name} on {row.agent}?"
            body = (f"{row.agent}  ·  pipeline {row.name}  ·  {len(row.summary.spec.steps)} steps\n\n"
                    "Starts a run with the pipeline's default parameters; cached steps are reused.")  # fmt: skip
            yes, variant = "Yes, run (y)", "warning"
        else:
            heading = f"Cancel {run_id} on {row.agent}?"
            body = (f"{row.agent}  ·  pipeline {row.name}  ·  run {run_id}\n\n"
                    "Cancelling stops its running steps (their jobs) and starts no more.")  # fmt: skip
            yes, variant = "Yes, cancel (y)", "error"
        super().__init__(heading=heading, body=body, yes_label=yes, yes_variant=variant, box_class="-pipeline",
                         text_label="Reason (optional; recorded in the audit log):")  # fmt: skip
        self.action = action


def log_step(run: Run) -> StepRun | None:
    """The step whose log is worth showing: the running one, else the first that failed, else the last."""
    for states in (("RUNNING",), ("FAILED",)):
        for s in run.steps:
            if s.state in states:
                return s
    started = [s for s in run.steps if s.started_at is not None]
    return started[-1] if started else None


class PipelinesScreen(FleetTableScreen):
    """All pipelines of all agents with their last runs; Escape goes back."""

    CSS_PATH = STYLES
    BINDINGS = [
        Binding("escape", "back", "Back"),
        Binding("backspace", "app.pop_screen", "Back", show=False),
        Binding("slash", "filter", "Filter"),
        # Mutating keys that mean nothing harmless on any other screen (see help.py).
        Binding("ctrl+g", "run_pipeline", "Run"),
        Binding("ctrl+k", "cancel_run", "Cancel run"),
    ]
    VIEW = "pipelines"
    STATUS_ID = "pipelines-status"

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[PipelineRow] = []
        self.fleet: tuple[AgentPipelines, ...] | None = None
        self.detail: RunDetail | None = None
        self.detail_key: tuple[str, str] | None = None
        self.detail_error: str | None = None
        self.tail: LogTail | None = None
        self.tail_job: str | None = None
        self.log_error: str | None = None

    @property
    def table(self) -> PipelineTable:
        return self.query_one(PipelineTable)

    def compose(self) -> ComposeResult:
        yield Header()
        with Horizontal(id="pipes-body"):
            with Vertical(id="pipes-left"):
                yield PipelineTable(id="pipe-table")
                yield Static("", id="pipe-metrics", markup=False)
            with Vertical(id="pipe-run-box"):
                yield Static("", id="pipe-run", markup=False)
                yield Static("log", id="pipe-log-title", markup=False)
                yield LogView(id="pipe-log")
        yield from self.compose_bottom()

    # ------------------------------------------------------------------ data

    def rows_of(self, status: FleetStatus) -> list[PipelineRow]:
        return self.rows

    def show_fleet(self, status: FleetStatus) -> None:
        if not self.query(PipelineTable):
            self.call_after_refresh(self.show_fleet, status)
            return
        super().show_fleet(status)
        self.fetch_pipelines()

    @work(exclusive=True, group="pipelines-fetch", exit_on_error=False)
    async def fetch_pipelines(self) -> None:
        ask = getattr(self.wk_app.source, "fleet_pipelines", None)
        if ask is None:
            self.fleet = ()
            self.detail_error = "this console's source reads no pipelines"
        else:
            self.fleet = await ask()
        rows: list[PipelineRow] = []
        for order, agent in enumerate(self.fleet):
            if agent.pipelines is not None:
                rows.extend(pipeline_rows(agent.agent, order, agent.pipelines.pipelines))
        self.rows = rows
        if self.is_mounted:
            self.table.show(rows)
            self.update_status_line()
            self.show_detail(refetch=True)

    def status_parts(self, status: FleetStatus) -> list[str]:
        if self.fleet is None:
            return ["reading pipelines…"]
        table = self.table
        active = sum(1 for r in self.rows if r.last is not None and r.last.state in ACTIVE)
        parts = [f"{len(table.rows_shown)}/{len(table.all_rows)} pipelines", f"{active} running"]
        failed = [f"{a.agent} ({a.error})" for a in self.fleet if a.error]
        without = [a.agent for a in self.fleet if a.pipelines is None and not a.error]
        if failed:
            parts.append(f"not read: {', '.join(failed)}")
        if without:
            parts.append(f"without pipelines: {', '.join(without)}")
        return parts

    def show_detail(self, refetch: bool = False) -> None:
        row = self.table.cursor_row_data if self.is_mounted else None
        if row is None or row.last is None:
            self.detail, self.detail_key = None, None
            empty = self.fleet is not None and not self.rows
            text = ("no pipelines (register one with `watchkeeper pipelines register FILE`)" if empty
                    else "never run (Ctrl+g runs it)" if row is not None else "")  # fmt: skip
            self.query_one("#pipe-run", Static).update(text)
            self.query_one("#pipe-metrics", Static).update("")
            self._show_log(None)
            return
        key = (row.agent, row.last.id)
        if key != self.detail_key or refetch:
            self.fetch_run(row.agent, row.last.id)
        self._draw_run()

    @work(exclusive=True, group="pipelines-run", exit_on_error=False)
    async def fetch_run(self, agent: str, run_id: str) -> None:
        ask = getattr(self.wk_app.source, "run_detail", None)
        if ask is None:
            return
        try:
            detail = await ask(agent, run_id)
        except Exception as exc:  # the agent may be gone: say so in the pane
            self.detail_error = why(exc)
            self._draw_run()
            return
        self.detail, self.detail_key, self.detail_error = detail, (agent, run_id), None
        self._draw_run()
        step = log_step(detail.run)
        if step is not None and step.job_id:
            await self._read_job_log(agent, step.job_id)
            self._draw_run()

    async def _read_job_log(self, agent: str, job_id: str) -> None:
        if job_id != self.tail_job or self.tail is None:
            self.tail, self.tail_job, self.log_error = LogTail(job_id, "stdout"), job_id, None
        tail = self.tail
        if tail.eof:
            return
        fetch_log = getattr(self.wk_app.source, "job_log", None)
        if fetch_log is None:
            return

        async def fetch(offset: int) -> Any:
            return await fetch_log(agent, job_id, "stdout", offset, 256 * 1024)

        try:
            await read_on(tail, fetch)
        except Exception as exc:
            self.log_error = why(exc)

    def _draw_run(self) -> None:
        if not self.is_mounted:
            return
        row = self.table.cursor_row_data
        detail = self.detail
        run_pane = self.query_one("#pipe-run", Static)
        metrics_pane = self.query_one("#pipe-metrics", Static)
        if row is None or row.last is None or detail is None or self.detail_key != (row.agent, row.last.id):
            run_pane.update(f"run not read: {self.detail_error}" if self.detail_error else "reading the run…")
            metrics_pane.update("")
            self._show_log(None)
            return
        run = detail.run
        now = time.time() + detail.clock_offset_s
        # The steps first (what the person on call looks for), then where the run came from.
        header = run_header(row.agent, run)
        tree = [t.text for t in run_tree(run, row.summary.spec.steps, now=now)]
        lines = [header[0], *tree, "", *header[1:]]
        run_pane.update("\n".join(lines))
        metrics = metrics_beside(run, detail.previous)
        if metrics:
            prev = detail.previous.id if detail.previous else "previous"
            metrics_pane.update(render(("METRIC", "THIS RUN", prev, "CHANGE"), metrics))
        else:
            metrics_pane.update("no metrics logged" + (f" (previous run {detail.previous.id})" if detail.previous
                                                       else " (first run)"))  # fmt: skip
        self._show_log(log_step(run))

    def _show_log(self, step: StepRun | None) -> None:
        title = self.query_one("#pipe-log-title", Static)
        body = self.query_one("#pipe-log", LogView)
        if step is None:
            title.update("log")
            body.update("")
            return
        took = f" · {duration(step.duration_s)}" if step.duration_s is not None else ""
        if step.job_id:
            title.update(f"{step.step}: job {step.job_id} stdout{took}")
            if self.tail is not None and self.tail_job == step.job_id:
                body.update(self.tail.text(LOG_LINES) or "(nothing written yet)")
            else:
                body.update(f"log not read: {self.log_error}" if self.log_error else "reading…")
        else:
            title.update(f"{step.step}: in-process{took}")
            body.update(step.log_tail or "(nothing printed)")

    def view_parts(self) -> list[str]:
        row = self.table.cursor_row_data if self.is_mounted else None
        if row is not None and row.last is not None and row.last.state in ACTIVE:
            return [f"{row.last.id}: {progress(row.last)}"]
        return []

    # ------------------------------------------------------------------ actions

    @mutating
    def action_run_pipeline(self) -> None:
        """`Ctrl+g`: run the selected pipeline (default parameters), after confirmation."""
        row = self.cursor_row("pipeline")
        if row is None:
            return
        dialog = PipelineConfirm("run", row, None)
        self.confirm(dialog, lambda: pipeline_action(self.wk_app, "run", row, None, dialog.reason))

    @mutating
    def action_cancel_run(self) -> None:
        """`Ctrl+k`: cancel the selected pipeline's active run, after confirmation."""
        row = self.cursor_row("pipeline")
        if row is None:
            return
        if row.last is None or row.last.state not in ACTIVE:
            self.app.notify(f"{row.name} on {row.agent}: no active run to cancel", severity="warning")
            return
        run_id = row.last.id
        dialog = PipelineConfirm("cancel", row, run_id)
        self.confirm(dialog, lambda: pipeline_action(self.wk_app, "cancel", row, run_id, dialog.reason))


def pipeline_action(app: WatchkeeperApp, action: str, row: PipelineRow, run_id: str | None, reason: str) -> None:
    """Start or cancel a run in an App-owned worker, say how it went, and poll again."""
    source: Any = app.source
    if action == "run":
        send = functools.partial(source.start_pipeline_run, row.agent, row.name, reason)
        what, done = f"{row.name} on {row.agent}", "started"
    else:
        send = functools.partial(source.cancel_pipeline_run, row.agent, run_id, reason)
        what, done = f"{run_id} on {row.agent}", "cancelled"
    call = HostCall(f"pipeline {row.agent}/{row.name}", what, send)
    run_on_hosts(app, "pipeline", action, done, [call], lambda r: f": {r.id} {r.state}" if isinstance(r, Run) else "")
