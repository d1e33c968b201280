"""The alerts screen: every agent's model alerts in one table, and the console's own outage rows.

Alerts arrive with each fleet poll (`MonitoringPoller`), so this screen draws from `show_fleet` like
the fleet and endpoints screens; rows are keyed by (agent, fingerprint) and updated in place.
`a` acknowledges and `z` silences (snoozes) (1 h / 4 h / 24 h) the selected alert on its agent, each after a
confirmation naming host, endpoint and rule; the agent audits both. Read-only mode hides them.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, cast

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.widget import Widget
from textual.widgets import Header, OptionList, Static

from agent.schemas import AlertOut
from console.core.feeds import feed_parts
from console.core.poller import FleetStatus
from console.core.readonly import mutating
from console.core.rows import MISSING, fmt_age, fmt_number
from console.core.screens.actions import HostCall, run_on_hosts
from console.core.screens.confirm import ConfirmScreen
from console.core.screens.filtered import FleetTableScreen
from console.monitoring.alert_rows import STATES, AlertRow, alert_feed, alert_rows
from console.monitoring.alert_table import AlertTable
from console.monitoring.client import MonitoringSource
from console.monitoring.drift_rows import fmt_utc

if TYPE_CHECKING:
    from console.app import WatchkeeperApp

STYLES = Path(__file__).resolve().parent / "monitoring.tcss"
SILENCE_CHOICES: tuple[tuple[str, float], ...] = (("1 hour", 3600.0), ("4 hours", 4 * 3600.0), ("24 hours", 86400.0))


@dataclass(frozen=True)
class AlertRequest:
    """The alert an action is about, in the words the dialogs show."""

    agent: str  # the agent's key in the fleet
    host: str
    fingerprint: str
    rule: str
    endpoint: str | None
    subject: str | None
    severity: str
    state: str
    summary: str

    @classmethod
    def of(cls, row: AlertRow) -> AlertRequest:
        a = row.alert
        return cls(row.agent, row.host, a.fingerprint, a.rule, a.endpoint, a.subject, a.severity, a.state, a.summary)

    @property
    def where(self) -> str:
        """Host, endpoint and rule (and subject), then severity, state and the agent's summary."""
        subject = f" ({self.subject})" if self.subject else ""
        endpoint = self.endpoint or "(none: agent-wide)"
        return (
            f"host {self.host}  ·  endpoint {endpoint}  ·  rule {self.rule}{subject}\n"
            f"{self.severity}, {self.state}: {self.summary}"
        )


class AlertConfirm(ConfirmScreen):
    """Confirm one action on one alert, naming host, endpoint and rule; the comment is optional."""

    CSS_PATH = STYLES

    def __init__(
        self,
        request: AlertRequest,
        *,
        verb: str,
        explain: str,
        yes_label: str,
        placeholder: str,
        yes_variant: str = "primary",
    ) -> None:
        super().__init__(
            heading=f"{verb} {request.rule} on {request.host}?",
            body=f"{request.where}\n\n{explain}",
            yes_label=yes_label,
            yes_variant=yes_variant,
            text_label="Comment (optional; recorded in the agent's audit log):",
            text_placeholder=placeholder,
        )
        self.request = request


class AckConfirm(AlertConfirm):
    """Acknowledge one alert; the comment is optional. Enter in the comment box, or `y`, confirms."""

    def __init__(self, request: AlertRequest) -> None:
        super().__init__(
            request,
            verb="Acknowledge",
            explain=(
                "Acknowledging records you as the one who has it in hand (the agent audits who and when). "
                "It does not silence or resolve it."
            ),
            yes_label="Yes, acknowledge (y)",
            placeholder="e.g. looking into it, INC-1234",
        )


class SilenceConfirm(AlertConfirm):
    """Silence one alert for a chosen time: arrows pick 1 h / 4 h / 24 h, `y` or Enter confirms."""

    def __init__(self, request: AlertRequest) -> None:
        super().__init__(
            request,
            verb="Silence",
            explain=(
                "While silenced the agent sends no notifications for this alert (and for a new instance of "
                "it); it stays listed here. The agent audits who silenced it, when and for how long."
            ),
            yes_label="Yes, silence (y)",
            yes_variant="warning",
            placeholder="e.g. known issue, fix deploying",
        )

    def compose_choices(self) -> ComposeResult:
        yield Static("Silence for:", classes="confirm--label")
        yield OptionList(*(label for label, _ in SILENCE_CHOICES), id="silence-for", markup=False, compact=True)

    def first_focus(self) -> Widget:
        return self.query_one("#silence-for", OptionList)

    def on_mount(self) -> None:
        self.query_one("#silence-for", OptionList).highlighted = 0
        super().on_mount()

    @property
    def duration_s(self) -> float:
        """The chosen duration (the highlighted option)."""
        index = self.query_one("#silence-for", OptionList).highlighted
        return SILENCE_CHOICES[index if index is not None else 0][1]

    @on(OptionList.OptionSelected, "#silence-for")
    async def _chosen(self) -> None:
        await self.run_action("confirm")


class AlertsScreen(FleetTableScreen):
    """All alerts of all agents; Escape goes back."""

    CSS_PATH = STYLES
    BINDINGS = [
        Binding("escape", "back", "Back"),
        Binding("backspace", "app.pop_screen", "Back", show=False),
        Binding("slash", "filter", "Filter"),
        Binding("a", "ack", "Acknowledge"),
        Binding("z", "silence", "Silence"),  # z for snooze: `s` sorts on the fleet screen
        Binding("t", "open_timeline", "Timeline", show=False),
    ]
    VIEW = "alerts"
    STATUS_ID = "alerts-status"

    @property
    def table(self) -> AlertTable:
        return self.query_one(AlertTable)

    def compose(self) -> ComposeResult:
        yield Header()
        yield AlertTable(id="alert-table")
        yield Static("", id="alert-detail", markup=False)
        yield from self.compose_bottom()

    # ------------------------------------------------------------------ data

    def rows_of(self, status: FleetStatus) -> list[AlertRow]:
        return alert_rows(status)

    def show_detail(self) -> None:
        row = self.table.cursor_row_data
        box = self.query_one("#alert-detail", Static)
        if row is None:
            box.update("no alerts" if self._shown is not None and not self.table.all_rows else "")
            return
        box.update(detail_text(row))

    def status_parts(self, status: FleetStatus) -> list[str]:
        rows = self.table.all_rows
        parts = [f"{len(self.table.rows_shown)}/{len(rows)} alerts"]
        parts.extend(f"{n} {s}" for s in STATES if (n := sum(1 for r in rows if r.state == s)))
        parts.extend(feed_parts(status, alert_feed, "alerts", "without alerting"))
        return parts

    # ------------------------------------------------------------------ actions

    def action_open_timeline(self) -> None:
        """`t`: the alert's endpoint's timeline, the cursor on the moment it fired (`w`: what changed before)."""
        from console.timeline.screen import TimelineScreen, agents_serving

        row = self.cursor_row("alert")
        if row is None:
            return
        a = row.alert
        if not a.endpoint:
            self.app.notify(f"{a.rule} is about no endpoint: it has no timeline", severity="warning")
            return
        agents = agents_serving(self.wk_app.fleet_status, a.endpoint, row.agent)
        at = a.firing_at or a.started_at
        self.app.push_screen(TimelineScreen(a.endpoint, agents, at=at, context=f"alert {a.rule}"))

    def _target(self, verb: str) -> AlertRow | None:
        row = self.cursor_row("alert")
        if row is None:
            return None
        why = row.actionable
        if why is not None:
            self.app.notify(f"cannot {verb}: {why}", severity="warning", timeout=8)
            return None
        return row

    @mutating
    def action_ack(self) -> None:
        """`a`: acknowledge the selected alert on its agent, after confirmation."""
        row = self._target("acknowledge")
        if row is None:
            return
        if row.alert.acked_by:
            self.app.notify(f"{row.alert.rule} on {row.host} is already acknowledged by {row.alert.acked_by}")
            return
        request = AlertRequest.of(row)
        dialog = AckConfirm(request)

        def ack() -> None:
            source = cast(MonitoringSource, self.wk_app.source)
            run_alert_action(
                self.wk_app,
                request,
                "acknowledged",
                lambda: source.ack_alert(request.agent, request.fingerprint, dialog.reason),
            )

        self.confirm(dialog, ack)

    @mutating
    def action_silence(self) -> None:
        """`s`: silence the selected alert on its agent for 1 h, 4 h or 24 h, after confirmation."""
        row = self._target("silence")
        if row is None:
            return
        request = AlertRequest.of(row)
        dialog = SilenceConfirm(request)

        def silence() -> None:
            duration = dialog.duration_s
            source = cast(MonitoringSource, self.wk_app.source)
            run_alert_action(
                self.wk_app,
                request,
                f"silenced for {fmt_age(duration)}",
                lambda: source.silence_alert(request.agent, request.fingerprint, duration, dialog.reason),
            )

        self.confirm(dialog, silence)


def run_alert_action(
    app: WatchkeeperApp, request: AlertRequest, done: str, call: Callable[[], Awaitable[AlertOut | None]]
) -> None:
    """Send an ack or silence in an App-owned worker, then say how it went for that host and poll again."""
    what = f"{request.rule} on {request.host}" + (f" ({request.endpoint})" if request.endpoint else "")
    run_on_hosts(app, "alert", done, done, [HostCall(f"alert {request.agent}/{request.fingerprint}", what, call)])


def detail_text(row: AlertRow) -> Text:
    """The selected alert in full: what, where, since when, who has it in hand."""
    a = row.alert
    text = Text()
    head = f"{a.severity.upper()} {a.state}  {a.rule} ({a.kind})  on {row.host}"
    text.append(head, style="bold")
    if row.stale:
        text.append(f"  [{row.host} not answering: last known state]", style="bold yellow")
    text.append("\n" + " ".join(a.summary.split()))
    where = [f"endpoint {a.endpoint}" if a.endpoint else "agent-wide"]
    if a.subject:
        where.append(f"subject {a.subject}")
    if a.value is not None or a.threshold is not None:
        where.append(f"value {fmt_number(a.value)} (threshold {fmt_number(a.threshold)})")
    if a.labels:
        where.append(", ".join(f"{k}={v}" for k, v in sorted(a.labels.items())))
    text.append("\n" + "  ·  ".join(where))
    times = [f"started {fmt_utc(a.started_at)} UTC ({fmt_age(max(0.0, row.now - a.started_at))} ago)"]
    if a.firing_at is not None and not row.synthesized:
        times.append(f"firing since {fmt_age(max(0.0, row.now - a.firing_at))}")
    if a.resolved_at is not None:
        times.append(f"resolved {fmt_age(max(0.0, row.now - a.resolved_at))} ago")
    text.append("\n" + "  ·  ".join(times))
    handled: list[str] = []
    if a.acked_by:
        at = f" {fmt_age(max(0.0, row.now - a.acked_at))} ago" if a.acked_at is not None else ""
        said = f': "{a.ack_comment}"' if a.ack_comment else ""
        handled.append(f"acknowledged by {a.acked_by}{at}{said}")
    if row.silenced and a.silenced_until is not None:
        said = f': "{a.silence_comment}"' if a.silence_comment else ""
        handled.append(f"silenced by {a.silenced_by or MISSING} for {fmt_age(a.silenced_until - row.now)} more{said}")
    if row.synthesized:
        handled.append("raised by the console: the agent did not answer its last poll")
    text.append("\n" + ("  ·  ".join(handled) or "nobody has acknowledged it"), style="" if handled else "yellow")
    if not row.synthesized:
        text.append(f"\nfingerprint {a.fingerprint}", style="dim")
    return text
