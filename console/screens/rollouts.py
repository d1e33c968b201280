"""The rollouts screen: every agent's rollouts in one table, the selected one in detail below.

Rollouts arrive with each fleet poll (`RolloutsPoller`), so this screen draws from `show_fleet`; rows
are keyed by (agent, rollout id) and updated in place. The panel shows the plan with the current step
marked, the validation gate, the guards (stable beside candidate), the A/B result, approvals and the
candidate's lineage.

Actions, each after a confirmation naming host, endpoint and versions (with a reason box; required
for reject, abort and rollback): `a` approve (the awaiting step), `x` reject, `p` promote, space
pause/resume, `b` abort, `r` rollback. They apply to the marked rows (`m`, as in k9s) or else to the
selected one; with several rows each host's answer comes back as its own notification. Requests run in
App-owned workers, so leaving the screen does not cancel one the agent may already have applied.
Read-only mode hides and refuses them.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, cast

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal
from textual.widgets import DataTable, Footer, Header, Static

from agent.api.schemas import ROLLOUT_TERMINAL, RolloutOut
from console.client import AgentError, FleetStatus
from console.feeds import feed_parts
from console.messages import ConsoleError
from console.readonly import mutating
from console.rollout_rows import (
    Line,
    RolloutRow,
    awaiting_count,
    describe_step,
    detail_lines,
    live_lines,
    rollout_rows,
    state_label,
)
from console.rollouts_client import RolloutSource, rollout_feed
from console.screens.confirm import ConfirmScreen
from console.screens.filtered import FilteredTableScreen, FilterInput
from console.widgets.rollout_table import RolloutTable

if TYPE_CHECKING:
    from console.app import WatchkeeperApp

STYLES = Path(__file__).resolve().parent.parent / "styles" / "rollouts.tcss"


@dataclass(frozen=True)
class Verb:
    """How an action is named and explained in its dialog and its notifications."""

    title: str  # "Approve"
    done: str  # "approved"
    variant: str  # the Yes button's variant
    reason_required: bool
    explain: str


VERBS: dict[str, Verb] = {
    "approve": Verb(
        "Approve", "approved", "success", False,
        "Approving lets the rollout go on to its next step. The agent records you as the approver; under "
        "the two-person rule the rollout's author may not approve it.",
    ),
    "reject": Verb(
        "Reject", "rejected", "error", True,
        "Rejecting ends the rollout: all traffic goes back to the stable version.",
    ),
    "promote": Verb(
        "Promote", "promoted", "warning", False,
        "Promoting skips the remaining steps and switches the endpoint to the candidate now.",
    ),
    "pause": Verb(
        "Pause", "paused", "warning", False,
        "Pausing holds the rollout at its step; the traffic split stays and the guards keep watching.",
    ),
    "resume": Verb("Resume", "resumed", "primary", False, "Resuming goes on with the plan from where it paused."),
    "abort": Verb(
        "Abort", "aborted", "error", True,
        "Aborting ends the rollout: all traffic goes back to the stable version at once.",
    ),
    "rollback": Verb(
        "Roll back", "rolled back", "error", True,
        "Rolling back returns the endpoint to the stable version, also after a promotion "
        "(the old version is loaded first).",
    ),
}  # fmt: skip


@dataclass(frozen=True)
class RolloutRequest:
    """One rollout an action is about, with the step it approves (if any) fixed when the dialog opened."""

    agent: str
    host: str
    rollout_id: str
    endpoint: str
    versions: str
    state: str
    step_index: int | None  # approve/reject: the awaiting step (the agent refuses a stale one)
    step_text: str

    @classmethod
    def of(cls, row: RolloutRow, action: str) -> RolloutRequest:
        r = row.rollout
        step = r.awaiting_approval_for if action in ("approve", "reject") else None
        return cls(row.agent, row.host, r.id, r.endpoint, row.versions, r.state, step, row.text("step"))

    @property
    def line(self) -> str:
        """Host, endpoint and versions, then where it stands."""
        step = f"step {self.step_index + 1}" if self.step_index is not None else self.step_text
        return f"{self.host}  ·  {self.endpoint}  ·  {self.versions}  ·  {state_label(self.state)}, {step}"


class RolloutConfirm(ConfirmScreen):
    """Confirm one action on one or more rollouts; the reason is recorded by each agent."""

    CSS_PATH = STYLES

    def __init__(self, action: str, requests: list[RolloutRequest]) -> None:
        verb = VERBS[action]
        first = requests[0]
        endpoints = sorted({r.endpoint for r in requests})
        where = first.host if len(requests) == 1 else f"{len(requests)} hosts"
        what = f"step {first.step_index + 1} of " if first.step_index is not None and len(requests) == 1 else ""
        heading = f"{verb.title} {what}{', '.join(endpoints)} on {where}?"
        lines = "\n".join(r.line for r in requests)
        super().__init__(
            heading=heading,
            body=f"{lines}\n\n{verb.explain}",
            yes_label=f"Yes, {verb.title.lower()} (y)",
            yes_variant=verb.variant,
            box_class="-rollout",
            text_label=f"Reason ({'required' if verb.reason_required else 'optional'}; recorded in the audit log):",
            text_placeholder="e.g. guards green for 10 minutes, INC-1234",
            text_required=verb.reason_required,
        )
        self.action = action
        self.requests = requests


class RolloutsScreen(FilteredTableScreen):
    """All rollouts of all agents; Escape goes back."""

    CSS_PATH = STYLES
    BINDINGS = [
        Binding("escape", "back", "Back"),
        Binding("backspace", "app.pop_screen", "Back", show=False),
        Binding("slash", "filter", "Filter"),
        Binding("m", "mark", "Mark"),
        Binding("M", "clear_marks", "Unmark all", show=False),
        Binding("a", "approve", "Approve"),
        Binding("x", "reject", "Reject"),
        Binding("p", "promote", "Promote"),
        Binding("space", "pause_resume", "Pause/resume"),
        Binding("b", "abort", "Abort"),
        Binding("r", "rollback", "Rollback"),
    ]

    def __init__(self) -> None:
        super().__init__()
        self._shown: FleetStatus | None = None

    @property
    def wk_app(self) -> WatchkeeperApp:
        return self.app  # type: ignore[return-value]

    @property
    def table(self) -> RolloutTable:
        return self.query_one(RolloutTable)

    def compose(self) -> ComposeResult:
        yield Header()
        yield RolloutTable(id="rollout-table")
        with Horizontal(id="rollout-panel"):
            yield Static("", id="rollout-detail", markup=False)
            yield Static("", id="rollout-live", markup=False)
        yield FilterInput(placeholder="filter: regex (! inverts)", id="filter", classes="-hidden")
        yield Static("", id="rollouts-status", markup=False)
        yield Footer()

    # ------------------------------------------------------------------ lifecycle

    def on_mount(self) -> None:
        self.sub_title = "rollouts"
        self.table.focus()
        self.wk_app.request_poll()  # fresh rollouts now, not in refresh_s
        if self.wk_app.fleet_status is not None:
            self.show_fleet(self.wk_app.fleet_status)
        else:
            self._update_status_line()

    def on_screen_resume(self) -> None:
        status = self.wk_app.fleet_status
        if status is not None and status is not self._shown:
            self.show_fleet(status)

    # ------------------------------------------------------------------ data

    def show_fleet(self, status: FleetStatus) -> None:
        """Update rows in place from a new poll."""
        self._shown = status
        self.table.show(rollout_rows(status))
        self._show_detail()
        self._update_status_line()

    def _show_detail(self) -> None:
        row = self.table.cursor_row_data
        detail = self.query_one("#rollout-detail", Static)
        live = self.query_one("#rollout-live", Static)
        if row is None:
            empty = self._shown is not None and not self.table.all_rows
            detail.update("no rollouts (start one with `watchkeeper deploy`)" if empty else "")
            live.update("")
            return
        detail.update(styled(detail_lines(row)))
        live.update(styled(live_lines(row)))

    def _update_status_line(self) -> None:
        status = self._shown
        table = self.table
        parts: list[str] = []
        if status is None:
            parts.append("waiting for first poll…")
        else:
            rows = table.all_rows
            parts.append(f"{len(table.rows_shown)}/{len(rows)} rollouts")
            active = sum(1 for r in rows if not r.ended)
            parts.append(f"{active} active")
            waiting = awaiting_count(status)
            if waiting:
                parts.append(f"{waiting} awaiting approval")
            if table.marked:
                parts.append(f"{len(table.marked)} marked")
            parts.extend(feed_parts(status, rollout_feed, "rollouts", "without rollouts"))
        parts.append(f"every {self.wk_app.refresh_s:g}s")
        if table.row_filter.active:
            parts.append(f"filter /{table.row_filter.text}")
        self.query_one("#rollouts-status", Static).update("  ·  ".join(parts))

    @on(DataTable.RowHighlighted, "#rollout-table")
    def _row_highlighted(self) -> None:
        self._show_detail()

    def _filter_applied(self) -> None:
        self._update_status_line()
        self._show_detail()

    # ------------------------------------------------------------------ navigation and marks

    def action_back(self) -> None:
        """Escape: clear the filter if one is set, else back."""
        if self.table.row_filter.active or self.query_one(FilterInput).has_focus:
            self.action_clear_filter()
            return
        self.app.pop_screen()

    def action_mark(self) -> None:
        """`m`: mark or unmark the selected rollout (actions then apply to every marked one), move down."""
        table = self.table
        key = table.cursor_key
        if key is None:
            return
        table.toggle_mark(key)
        if table.cursor_row < table.row_count - 1:
            table.move_cursor(row=table.cursor_row + 1)
        self._update_status_line()

    def action_clear_marks(self) -> None:
        """`M`: unmark every rollout."""
        self.table.clear_marks()
        self._update_status_line()

    # ------------------------------------------------------------------ actions

    def _targets(self, action: str) -> list[RolloutRow]:
        """The marked rows (else the selected one) the action can apply to; says why the others can't."""
        table = self.table
        rows = table.marked_rows or ([table.cursor_row_data] if table.cursor_row_data else [])
        if not rows:
            self.app.notify("no rollout selected", severity="warning")
            return []
        ok, refused = [], []
        for row in rows:
            why = row.blocked(action)
            if why is None:
                ok.append(row)
            else:
                refused.append(f"{row.rollout.endpoint} on {row.host}: {why}")
        if refused:
            self.app.notify(f"cannot {action}: " + "; ".join(refused), severity="warning", timeout=10)
        return ok

    def _confirm(self, action: str) -> None:
        rows = self._targets(action)
        if not rows:
            return
        requests = [RolloutRequest.of(row, action) for row in rows]
        dialog = RolloutConfirm(action, requests)

        def decided(confirmed: bool | None) -> None:
            if confirmed:
                run_rollout_actions(self.wk_app, action, requests, dialog.reason)

        self.app.push_screen(dialog, decided)

    @mutating
    def action_approve(self) -> None:
        """`a`: approve the awaiting step of the marked (or selected) rollouts, after confirmation."""
        self._confirm("approve")

    @mutating
    def action_reject(self) -> None:
        """`x`: reject the awaiting step (the rollout ends, traffic back to stable), after confirmation."""
        self._confirm("reject")

    @mutating
    def action_promote(self) -> None:
        """`p`: promote (skip the remaining steps), after confirmation."""
        self._confirm("promote")

    @mutating
    def action_pause_resume(self) -> None:
        """Space: pause a running rollout, resume a paused one, after confirmation."""
        table = self.table
        rows = table.marked_rows or ([table.cursor_row_data] if table.cursor_row_data else [])
        paused = [r for r in rows if r.state == "paused"]
        self._confirm("resume" if rows and len(paused) == len(rows) else "pause")

    @mutating
    def action_abort(self) -> None:
        """`b`: abort (all traffic back to stable), after confirmation."""
        self._confirm("abort")

    @mutating
    def action_rollback(self) -> None:
        """`r`: roll back (also a promoted rollout), after confirmation."""
        self._confirm("rollback")


def run_rollout_actions(app: WatchkeeperApp, action: str, requests: list[RolloutRequest], reason: str) -> None:
    """Send `action` to every request's agent concurrently in an App-owned worker, then say how it went
    for each host (one notification per host) and poll again."""
    verb = VERBS[action]

    async def one(request: RolloutRequest) -> bool:
        what = f"{request.endpoint} on {request.host}"
        source = cast(RolloutSource, app.source)
        key = f"rollout {request.agent}/{request.rollout_id}"
        try:
            out = await source.rollout_action(request.agent, request.rollout_id, action, request.step_index, reason)
        except AgentError as exc:
            app.post_message(ConsoleError(key, f"{what}: not {verb.done}: {exc}"))
            return False
        except Exception as exc:
            app.post_message(ConsoleError(key, f"{what}: not {verb.done}: {type(exc).__name__}: {exc}"))
            return False
        # Not deduplicated like errors: every action the operator takes deserves its answer.
        app.notify(f"{what}: {verb.done} ({now_at(out)})", severity="information", timeout=8)
        return True

    async def act() -> None:
        if app.readonly:  # the keys and the dialog refuse already; this is the last line
            app.post_message(ConsoleError("readonly", "read-only mode: rollout action refused", severity="warning"))
            return
        results = await asyncio.gather(*(one(r) for r in requests))
        if len(requests) > 1:
            done = sum(results)
            severity = "information" if done == len(requests) else "warning"
            app.notify(f"{action}: {done}/{len(requests)} hosts {verb.done}", severity=severity, timeout=8)
        app.request_poll()

    app.run_worker(act(), group="rollout-action", exit_on_error=False)


def now_at(r: RolloutOut) -> str:
    """Where a rollout stands after an action, for its notification."""
    if 0 <= r.step_index < len(r.steps) and r.state not in ROLLOUT_TERMINAL:
        step = describe_step(r.steps[r.step_index])
        return f"now {state_label(r.state)}, step {r.step_index + 1}/{len(r.steps)} {step}"
    return f"now {state_label(r.state)}"


def styled(lines: list[Line]) -> Text:
    """Rich Text of (text, style) lines."""
    text = Text()
    for i, line in enumerate(lines):
        if i:
            text.append("\n")
        for part, style in line:
            text.append(part, style=style or None)
    return text
