"""The endpoints screen: every model endpoint across the fleet, and the selected agent's model pool.

While this screen is open the poller fetches `/api/v1/serving` from every agent on each poll
(otherwise only rarely); rows are keyed by (agent, endpoint, model version) and updated in place.
`f` switches the selected endpoint to its fallback prediction or back, after a confirmation.
"""

from __future__ import annotations

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.widgets import Header, Static

from console.core.messages import ConsoleError
from console.core.poller import AgentState, FleetStatus, ServingState
from console.core.readonly import mutating
from console.core.screens.filtered import FleetTableScreen
from console.monitoring.drift_screen import DriftScreen
from console.serving.endpoint_table import EndpointTable, LoadedModelTable
from console.serving.fallback import FallbackConfirm, FallbackRequest
from console.serving.rows import EndpointRow, detail_text, endpoint_rows, pool_line, predlog_line


class EndpointsScreen(FleetTableScreen):
    """All endpoints of all agents; Escape goes back to the fleet."""

    BINDINGS = [
        Binding("escape", "back", "Back"),
        Binding("backspace", "app.pop_screen", "Back", show=False),
        Binding("slash", "filter", "Filter"),
        Binding("f", "toggle_fallback", "Fallback on/off"),
        Binding("d", "open_drift", "Drift"),
        Binding("t", "open_timeline", "Timeline", show=False),
    ]
    VIEW = "endpoints"
    STATUS_ID = "endpoints-status"

    def __init__(self) -> None:
        super().__init__()
        self._reported: dict[str, str | None] = {}

    @property
    def table(self) -> EndpointTable:
        return self.query_one(EndpointTable)

    def compose(self) -> ComposeResult:
        yield Header()
        yield EndpointTable(id="endpoint-table")
        with Horizontal(id="serving-panel"):
            yield Static("", id="endpoint-detail", markup=False)
            with Vertical(id="pool-box"):
                yield Static("", id="pool-summary", markup=False)
                yield LoadedModelTable(id="loaded-models")
        yield from self.compose_bottom()

    # ------------------------------------------------------------------ lifecycle

    def opened(self) -> None:
        # Serving status on every poll while we are open, and one now rather than in refresh_s.
        self.wk_app.source.want_serving(True)
        super().opened()

    def on_unmount(self) -> None:
        self.wk_app.source.want_serving(False)

    # ------------------------------------------------------------------ data

    def rows_of(self, status: FleetStatus) -> list[EndpointRow]:
        return endpoint_rows(status)

    def show_fleet(self, status: FleetStatus) -> None:
        """Update rows in place from a new poll."""
        super().show_fleet(status)
        self._report_serving_errors(status)

    def _report_serving_errors(self, status: FleetStatus) -> None:
        # Through the one sink; each agent's error is reported when it first appears or changes.
        for agent in status.agents:
            error = agent.serving_error if agent.serving_state is ServingState.ERROR else None
            if agent.state is AgentState.DOWN:
                error = None  # the fleet already announces a down agent
            if error and self._reported.get(agent.name) != error:
                self.post_message(
                    ConsoleError(f"serving {agent.name}", f"{agent.label}: serving status: {error}", severity="warning")
                )
            self._reported[agent.name] = error

    def show_detail(self) -> None:
        row = self.table.cursor_row_data
        status = self._shown
        detail = self.query_one("#endpoint-detail", Static)
        summary = self.query_one("#pool-summary", Static)
        models = self.query_one(LoadedModelTable)
        agent = status.get(row.agent) if row is not None and status is not None else None
        if row is None or agent is None or status is None:
            detail.update("no endpoint selected" if self.table.all_rows else "")
            summary.update("")
            models.show(None, 0.0)
            return
        detail.update(styled_detail(detail_text(row, agent, status.polled_at)))
        serving = agent.serving
        if serving is None:
            summary.update(f"{agent.label}: serves nothing")
        else:
            text = Text(f"{agent.label}: {pool_line(serving)}\n")
            text.append(predlog_line(serving), style="bold yellow" if serving.predlog_rows_dropped else "")
            summary.update(text)
        models.show(agent, status.polled_at)

    def status_parts(self, status: FleetStatus) -> list[str]:
        table = self.table
        agents = status.agents
        with_serving = [a for a in agents if a.serving is not None]
        parts = [f"{len(table.rows_shown)}/{len(table.all_rows)} rows"]
        parts.append(f"{len(with_serving)}/{len(agents)} agents serving")
        none = sum(1 for a in agents if a.serving_state is ServingState.NONE)
        if none:
            parts.append(f"{none} without serving")
        waiting = sum(1 for a in agents if a.serving_state is ServingState.UNKNOWN and a.state is AgentState.UP)
        if waiting:
            parts.append(f"{waiting} loading…")
        failing = [a.label for a in agents if a.serving_state is ServingState.ERROR]
        if failing:
            parts.append(f"serving status failed: {', '.join(failing)}")
        windows = {r.stats.window_s for r in table.all_rows if r.stats is not None}
        if len(windows) == 1:
            parts.append(f"rates over {windows.pop():g}s")
        return parts

    # ------------------------------------------------------------------ actions

    def action_open_drift(self) -> None:
        """`d`: the drift of the selected endpoint (features, scores, histograms)."""
        row = self.cursor_row("endpoint")
        if row is not None:
            self.app.push_screen(DriftScreen(row.agent, row.endpoint))

    def action_open_timeline(self) -> None:
        """`t`: the selected endpoint's timeline across every host serving it."""
        from console.timeline.screen import TimelineScreen, agents_serving

        row = self.cursor_row("endpoint")
        if row is not None:
            agents = agents_serving(self.wk_app.fleet_status, row.endpoint, row.agent)
            self.app.push_screen(TimelineScreen(row.endpoint, agents))

    @mutating
    def action_toggle_fallback(self) -> None:
        """`f`: switch the selected endpoint to its fallback (or back), after confirmation."""
        row = self.cursor_row("endpoint")
        if row is None:
            return
        request = fallback_request(row)
        if request.enable and not request.fallback_configured:
            self.app.notify(
                f"{row.endpoint} on {row.host} has no fallback prediction configured; set one in its config first",
                severity="warning",
                timeout=8,
            )
            return
        if row.agent_state is AgentState.DOWN:
            self.app.notify(f"{row.host} is down; cannot switch {row.endpoint}", severity="warning")
            return
        dialog = FallbackConfirm(request)
        self.confirm(
            dialog, lambda: self.wk_app.set_fallback(request.agent, request.endpoint, request.enable, dialog.reason)
        )


def styled_detail(plain: str) -> Text:
    """The detail panel's text with the lines an operator must not miss highlighted."""
    text = Text()
    for i, line in enumerate(plain.split("\n")):
        style = ""
        if i == 0:
            style = "bold"
        elif line.startswith(("FALLBACK FORCED", "LAST KNOWN", "cannot resolve")):
            style = "bold yellow"
        elif line.startswith(("retired", "warm standby")):
            style = "dim"
        text.append(("\n" if i else "") + line, style=style)
    return text


def fallback_request(row: EndpointRow) -> FallbackRequest:
    """The switch `f` proposes for a row: the opposite of the endpoint's current mode."""
    info = row.info
    version = f"{info.model}:{info.version if info.version is not None else '?'}"
    return FallbackRequest(
        agent=row.agent,
        host=row.host,
        endpoint=row.endpoint,
        model_version=version,
        enable=not info.fallback_mode,
        breaker=info.breaker_state,
        fallback_configured=info.config.fallback is not None,
    )
