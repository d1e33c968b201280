"""The rollouts screen: every agent's rollouts in one table, the selected one in detail below.

Rollouts arrive with each fleet poll (`RolloutsPoller`), so this screen draws from `show_fleet`; rows
are keyed by (agent, rollout id) and updated in place. The panel shows the plan with the current step
marked, the validation gate, the guards (stable beside candidate), the A/B result, approvals and the
candidate's lineage.

Actions, each after a confirmation naming host, endpoint and versions (with a reason box; required
for reject, abort and rollback): `a` approve (the awaiting step), `x` reject, `p` promote, space
pause/resume, `X` abort, `Ctrl+r` rollback (destructive keys mean nothing harmless elsewhere). They
apply to the marked rows (`m`, as in k9s; `c` clears the marks) or else to the selected one; with
several rows each host's answer comes back as its own notification. Requests run in
App-owned workers, so leaving the screen does not cancel one the agent may already have applied.
Read-only mode hides and refuses them.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, cast

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal
from textual.widgets import Header, Static

from agent.schemas import ROLLOUT_TERMINAL, RolloutOut
from console.core.feeds import feed_parts
from console.core.poller import FleetStatus
from console.core.readonly import mutating
from console.core.screens.actions import HostCall, run_on_hosts
from console.core.screens.confirm import ConfirmScreen
from console.core.screens.filtered import FleetTableScreen
from console.rollouts.client import RolloutSource, rollout_feed
from console.rollouts.rows import (
    Line,
    RolloutRow,
    awaiting_count,
    describe_step,
    detail_lines,
    live_lines,
    rollout_rows,
    state_label,
)
from console.rollouts.table import RolloutTable

if TYPE_CHECKING:
    from console.app import WatchkeeperApp

STYLES = Path(__file__).resolve().parent / "rollouts.tcss"


@dataclass(frozen=True)
class Verb:
    """How an action is named and explained in its dialog and its notifications."""

    title: str  # "Approve"
    done: str  # "approved"
    variant: str  # the Yes button's variant
    reason_required: bool
    explain: str
    example: str  # the reason box's placeholder: a reason that fits this action (never another's)


VERBS: dict[str, Verb] = {
    "approve": Verb(
        "Approve", "approved", "success", False,
        "Approving lets the rollout go on to its next step. The agent records you as the approver; under "
        "the two-person rule the rollout's author may not approve it.",
        "e.g. error rate and p99 flat at 10 % for 15 min",
    ),
    "reject": Verb(
        "Reject", "rejected", "error", True,
        "Rejecting ends the rollout: all traffic goes back to the stable version.",
        "e.g. gate passed on stale data, retrain first",
    ),
    "promote": Verb(
        "Promote", "promoted", "warning", False,
        "Promoting skips the remaining steps and switches the endpoint to the candidate now.",
        "e.g. hotfix for INC-1234, verified on the canary",
    ),
    "pause": Verb(
        "Pause", "paused", "warning", False,
        "Pausing holds the rollout at its step; the traffic split stays and the guards keep watching.",
        "e.g. holding over the batch window",
    ),
    "resume": Verb(
        "Resume", "resumed", "primary", False, "Resuming goes on with the plan from where it paused.",
        "e.g. batch window over",
    ),
    "abort": Verb(
        "Abort", "aborted", "error", True,
        "Aborting ends the rollout: all traffic goes back to the stable version at once.",
        "e.g. p99 doubled on the canary, INC-1234",
    ),
    "rollback": Verb(
        "Roll back", "rolled back", "error", True,
        "Rolling back returns the endpoint to the stable version, also after a promotion "
        "(the old version is loaded first).",
        "e.g. conversion down 3 % since the promotion, INC-1234",
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
    guards: str = ""  # what the guards say: "ok", "1 breached", "not judged (12 of 50 requests)"

    @classmethod
    def of(cls, row: RolloutRow, action: str) -> RolloutRequest:
        r = row.rollout
        step = r.awaiting_approval_for if action in ("approve", "reject") else None
        return cls(
            row.agent, row.host, r.id, r.endpoint, row.versions, r.state, step, row.text("step"), row.guards_text()
        )

    @property
    def line(self) -> str:
        """Host, endpoint and versions, then where it stands."""
        step = f"step {self.step_index + 1}" if self.step_index is not None else self.step_text
        guards = f"  ·  guards {self.guards}" if self.guards and self.guards != "-" else ""
        return f"{self.host}  ·  {self.endpoint}  ·  {self.versions}  ·  {state_label(self.state)}, {step}{guards}"


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
            text_placeholder=verb.example,
            text_required=verb.reason_required,
        )
        self.action = action
        self.requests = requests


class RolloutsScreen(FleetTableScreen):
    """All rollouts of all agents; Escape goes back."""

    CSS_PATH = STYLES
    BINDINGS = [
        Binding("escape", "back", "Back"),
        Binding("backspace", "app.pop_screen", "Back", show=False),
        Binding("slash", "filter", "Filter"),
        Binding("m", "mark", "Mark"),
        Binding("t", "open_timeline", "Timeline", show=False),
        Binding("c", "clear_marks", "Unmark all", show=False),
        Binding("a", "approve", "Approve"),
        Binding("x", "reject", "Reject"),
        Binding("p", "promote", "Promote"),
        Binding("space", "pause_resume", "Pause/resume"),
        # Destructive actions on keys that mean nothing harmless on any other screen (see help.py).
        Binding("X", "abort", "Abort"),
        Binding("ctrl+r", "rollback", "Rollback"),
    ]
    VIEW = "rollouts"
    STATUS_ID = "rollouts-status"

    @property
    def table(self) -> RolloutTable:
        return self.query_one(RolloutTable)

    def compose(self) -> ComposeResult:
        yield Header()
        yield RolloutTable(id="rollout-table")
        with Horizontal(id="rollout-panel"):
            yield Static("", id="rollout-detail", markup=False)
            yield Static("", id="rollout-live", markup=False)
        yield from self.compose_bottom()

    # ------------------------------------------------------------------ data

    def rows_of(self, status: FleetStatus) -> list[RolloutRow]:
        return rollout_rows(status)

    def show_detail(self) -> None:
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

    def status_parts(self, status: FleetStatus) -> list[str]:
        table = self.table
        rows = table.all_rows
        parts = [f"{len(table.rows_shown)}/{len(rows)} rollouts"]
        active = sum(1 for r in rows if not r.ended)
        parts.append(f"{active} active")
        waiting = awaiting_count(status)
        if waiting:
            parts.append(f"{waiting} awaiting approval")
        if table.marked:
            parts.append(f"{len(table.marked)} marked")
        parts.extend(feed_parts(status, rollout_feed, "rollouts", "without rollouts"))
        return parts

    # ------------------------------------------------------------------ marks

    def action_open_timeline(self) -> None:
        """`t`: the rollout's endpoint's timeline around its start."""
        from console.timeline.screen import TimelineScreen, agents_serving

        row = self.cursor_row("rollout")
        if row is None:
            return
        r = row.rollout
        agents = agents_serving(self.wk_app.fleet_status, r.endpoint, row.agent)
        self.app.push_screen(TimelineScreen(r.endpoint, agents, at=r.started_at, context=f"rollout {r.id}"))

    def action_mark(self) -> None:
        """`m`: mark or unmark the selected rollout (actions then apply to every marked one), move down."""
        table = self.table
        key = table.cursor_key
        if key is None:
            return
        table.toggle_mark(key)
        if table.cursor_row < table.row_count - 1:
            table.move_cursor(row=table.cursor_row + 1)
        self.update_status_line()

    def action_clear_marks(self) -> None:
        """`c`: clear every mark."""
        self.table.clear_marks()
        self.update_status_line()

    def _selected(self) -> list[RolloutRow]:
        """The marked rows, else the one under the cursor (if any)."""
        table = self.table
        return table.marked_rows or ([table.cursor_row_data] if table.cursor_row_data else [])

    # ------------------------------------------------------------------ actions

    def _targets(self, action: str) -> list[RolloutRow]:
        """The marked rows (else the selected one) the action can apply to; says why the others can't."""
        rows = self._selected()
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
        self.confirm(dialog, lambda: run_rollout_actions(self.wk_app, action, requests, dialog.reason))

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
        rows = self._selected()
        paused = [r for r in rows if r.state == "paused"]
        self._confirm("resume" if rows and len(paused) == len(rows) else "pause")

    @mutating
    def action_abort(self) -> None:
        """`X`: abort (all traffic back to stable), after confirmation."""
        self._confirm("abort")

    @mutating
    def action_rollback(self) -> None:
        """`Ctrl+r`: roll back (also a promoted rollout), after confirmation."""
        self._confirm("rollback")


def run_rollout_actions(app: WatchkeeperApp, action: str, requests: list[RolloutRequest], reason: str) -> None:
    """Send `action` to every request's agent concurrently in an App-owned worker, then say how it went
    for each host (one notification per host) and poll again."""
    source = cast(RolloutSource, app.source)
    calls = [
        HostCall(
            f"rollout {r.agent}/{r.rollout_id}",
            f"{r.endpoint} on {r.host}",
            functools.partial(source.rollout_action, r.agent, r.rollout_id, action, r.step_index, reason),
        )
        for r in requests
    ]
    run_on_hosts(app, "rollout", action, VERBS[action].done, calls, lambda out: f" ({now_at(out)})")


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
