"""The drift screen of one endpoint: its features by drift score, and the selected one's histogram.

Opened with `d` on the endpoints screen. Everything is fetched on demand in this screen's workers,
never on the UI thread: the drift report, the per-window history (sparklines) and the model quality
together in one exclusive worker, re-armed only after it finished (every `refresh_s`, at least
`DRIFT_REFRESH_MIN_S`: windows close once a minute by default); the histogram of the feature under
the cursor in another, whenever the cursor moves to another feature or the report is refreshed.
`b` switches the baseline between the reference profile (training-serving skew) and the previous
window (drift between windows).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, cast

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, VerticalScroll
from textual.message import Message
from textual.timer import Timer
from textual.widgets import DataTable, Header, Static

from agent.schemas import DriftHistory, DriftReportOut, HistogramOut, QualityReport
from console.core.errors import why
from console.core.messages import ConsoleError
from console.core.poller import AgentState, AgentStatus, FleetStatus
from console.core.rows import fmt_age
from console.core.screens.filtered import FilteredTableScreen
from console.monitoring.client import MonitoringSource
from console.monitoring.drift_rows import (
    data_quality_line,
    drift_line,
    feature_detail,
    feature_label,
    feature_rows,
    fmt_score,
    model_quality_line,
    window_text,
)
from console.monitoring.drift_table import DriftTable
from console.monitoring.histogram import HistogramView

STYLES = Path(__file__).resolve().parent / "monitoring.tcss"
DRIFT_REFRESH_MIN_S = 10.0
BASELINES = ("reference", "previous")
BASELINE_TEXT = {"reference": "reference profile", "previous": "previous window"}


class DriftLoaded(Message):
    """One refresh of the drift screen's data: each part is its answer, or its error in `errors`."""

    def __init__(
        self,
        agent: str,
        endpoint: str,
        baseline: str,
        report: DriftReportOut | None,
        history: DriftHistory | None,
        quality: QualityReport | None,
        errors: dict[str, str],
    ) -> None:
        super().__init__()
        self.agent = agent
        self.endpoint = endpoint
        self.baseline = baseline
        self.report = report
        self.history = history
        self.quality = quality
        self.errors = errors


class HistogramLoaded(Message):
    """The histogram of one feature arrived (`histogram`), or `error` says why not."""

    def __init__(self, feature: str, histogram: HistogramOut | None, error: str | None) -> None:
        super().__init__()
        self.feature = feature
        self.histogram = histogram
        self.error = error


async def _attempt(call: Callable[[], Awaitable[Any]]) -> Any:
    """The call's answer, or its exception (one failing part must not lose the others)."""
    try:
        return await call()
    except Exception as exc:
        return exc


class DriftScreen(FilteredTableScreen):
    """Drift of one endpoint on one agent; Escape goes back."""

    CSS_PATH = STYLES
    BINDINGS = [
        Binding("escape", "back", "Back"),
        Binding("backspace", "app.pop_screen", "Back", show=False),
        Binding("b", "toggle_baseline", "Baseline"),
        Binding("slash", "filter", "Filter"),
        Binding("r", "reload", "Refresh"),
    ]
    STATUS_ID = "drift-status"

    def __init__(self, agent: str, endpoint: str) -> None:
        super().__init__()
        self.agent = agent
        self.endpoint = endpoint
        self.baseline = "reference"
        self.report: DriftReportOut | None = None
        self.history: DriftHistory | None = None
        self.quality: QualityReport | None = None
        self.errors: dict[str, str] = {}
        self.histogram_feature: str | None = None
        self.histogram: HistogramOut | None = None
        self.loads = 0  # refreshes applied (tests wait on it)
        self.loading = False
        self._agent_status: AgentStatus | None = None
        self._timer: Timer | None = None
        self._closed = False  # unmounted: no more refreshes
        self._reported: str | None = None

    @property
    def source(self) -> MonitoringSource:
        return cast(MonitoringSource, self.wk_app.source)

    @property
    def table(self) -> DriftTable:
        return self.query_one(DriftTable)

    @property
    def refresh_interval(self) -> float:
        return max(self.wk_app.refresh_s, DRIFT_REFRESH_MIN_S)

    def agent_now(self) -> float:
        """Now on the agent's clock (report times are the agent's)."""
        offset = self._agent_status.clock_offset_s if self._agent_status is not None else 0.0
        return self.wk_app.source.now() + offset

    @property
    def host(self) -> str:
        return self._agent_status.label if self._agent_status is not None else self.agent

    def compose(self) -> ComposeResult:
        yield Header()
        yield Static("", id="drift-summary")
        yield DriftTable(id="drift-table")
        with Horizontal(id="drift-panel"):
            with VerticalScroll(id="histogram-box"):
                yield HistogramView(id="histogram")
            yield Static("", id="feature-detail", markup=False)
        yield from self.compose_bottom()

    # ------------------------------------------------------------------ lifecycle

    def on_mount(self) -> None:
        status = self.wk_app.fleet_status
        if status is not None:
            self._agent_status = status.get(self.agent)
        self.sub_title = f"drift · {self.endpoint} on {self.host}"
        self.table.focus()
        self._show_summary()
        self._show_panel()
        self.update_status_line()
        self._load_now()

    def on_unmount(self) -> None:
        self._closed = True  # a load finishing after this must not arm another refresh
        if self._timer is not None:
            self._timer.stop()

    def show_fleet(self, status: FleetStatus) -> None:
        """The agent's state goes into the header (a down agent's drift is its last answer)."""
        before = self._agent_status
        self._agent_status = status.get(self.agent)
        if before is None or self._agent_status is None or before.state is not self._agent_status.state:
            self._show_summary()

    def on_screen_resume(self) -> None:
        if self.wk_app.fleet_status is not None:
            self.show_fleet(self.wk_app.fleet_status)

    # ------------------------------------------------------------------ loading

    def _load_now(self) -> None:
        """Refresh now; the timer is re-armed when this load has finished (loads never overlap)."""
        if self._closed:
            return
        if self._timer is not None:
            self._timer.stop()
            self._timer = None
        self.loading = True
        self.update_status_line()
        self.load_drift()

    @work(exclusive=True, group="drift")
    async def load_drift(self) -> None:
        """Fetch report, history and quality together, post them, then arm the next refresh."""
        source, agent, endpoint, baseline = self.source, self.agent, self.endpoint, self.baseline
        cancelled = False
        try:
            report, history, quality = await asyncio.gather(
                _attempt(lambda: source.drift(agent, endpoint, baseline)),
                _attempt(lambda: source.drift_history(agent, endpoint, baseline)),
                _attempt(lambda: source.quality(agent, endpoint)),
            )
            errors = {
                part: why(result)
                for part, result in (("drift", report), ("history", history), ("quality", quality))
                if isinstance(result, BaseException)
            }
            self.post_message(
                DriftLoaded(
                    agent,
                    endpoint,
                    baseline,
                    report if isinstance(report, DriftReportOut) else None,
                    history if isinstance(history, DriftHistory) else None,
                    quality if isinstance(quality, QualityReport) else None,
                    errors,
                )
            )
        except asyncio.CancelledError:
            cancelled = True
            raise
        finally:
            if not cancelled and self.is_attached and not self._closed:
                if self._timer is not None:
                    self._timer.stop()
                self._timer = self.set_timer(self.refresh_interval, self._load_now)

    @on(DriftLoaded)
    def _drift_loaded(self, message: DriftLoaded) -> None:
        if (message.agent, message.endpoint, message.baseline) != (self.agent, self.endpoint, self.baseline):
            return  # an answer for the baseline we just switched away from
        self.loading = False
        self.loads += 1
        self.errors = message.errors
        # A part that failed keeps its last good answer (shown with the error) rather than vanishing.
        if message.report is not None:
            self.report = message.report
        if message.history is not None:
            self.history = message.history
        if message.quality is not None:
            self.quality = message.quality
        self.table.show(feature_rows(self.report, self.history))
        self._show_summary()
        self._show_panel()
        self.update_status_line()
        self._request_histogram(refresh=True)
        error = message.errors.get("drift")
        if error and error != self._reported:
            text = f"{self.endpoint} on {self.host}: drift unavailable: {error}"
            self.post_message(ConsoleError(f"drift {self.agent}/{self.endpoint}", text, severity="warning"))
        self._reported = error

    def _request_histogram(self, *, refresh: bool = False) -> None:
        row = self.table.cursor_row_data
        view = self.query_one(HistogramView)
        if row is None:
            self.histogram_feature = None
            self.histogram = None
            view.show(None, "no feature selected" if self.table.all_rows else "")
            return
        if row.key == self.histogram_feature and not refresh:
            return
        if row.key != self.histogram_feature:
            self.histogram = None
            view.show(None, f"loading the histogram of {feature_label(row.key)}…")
        self.histogram_feature = row.key
        self.load_histogram(row.key)

    @work(exclusive=True, group="histogram")
    async def load_histogram(self, feature: str) -> None:
        """Fetch one feature's reference vs current histogram."""
        result = await _attempt(lambda: self.source.drift_histogram(self.agent, self.endpoint, feature))
        if isinstance(result, HistogramOut):
            self.post_message(HistogramLoaded(feature, result, None))
        else:
            self.post_message(HistogramLoaded(feature, None, why(result)))

    @on(HistogramLoaded)
    def _histogram_loaded(self, message: HistogramLoaded) -> None:
        if message.feature != self.histogram_feature:
            return  # the cursor moved on
        view = self.query_one(HistogramView)
        if message.histogram is not None:
            self.histogram = message.histogram
            view.show(message.histogram)
        elif self.histogram is not None:
            view.show(self.histogram, f"(refresh failed: {message.error})")
        else:
            view.show(None, f"no histogram for {feature_label(message.feature)}: {message.error}")

    # ------------------------------------------------------------------ drawing

    def _show_summary(self) -> None:
        text = Text()
        report = self.report
        model = f"{report.model}:{report.version}" if report is not None else "…"
        text.append(f"{self.endpoint} on {self.host}", style="bold")
        text.append(f"  ·  model {model}  ·  baseline: ")
        text.append(BASELINE_TEXT[self.baseline], style="bold")
        agent = self._agent_status
        if agent is not None and agent.state is AgentState.DOWN:
            text.append(f"  ·  {self.host} is down: last answer shown", style="bold yellow")
        error = self.errors.get("drift")
        if report is None:
            text.append("\n")
            text.append(f"drift unavailable: {error}" if error else "loading drift…", style="yellow" if error else "")
        else:
            now = self.agent_now()
            text.append("\n" + (f"note: {report.note}" if report.note else window_text(report, now)))
            if error:
                text.append(f"  (refresh failed: {error})", style="yellow")
            text.append("\n" + drift_line(report), style="bold red" if report.dataset_drift else "")
            quality_issues = any(f.quality_issues for f in report.features)
            text.append("\n" + data_quality_line(report), style="yellow" if quality_issues else "")
        version = report.version if report is not None else None
        text.append("\n" + model_quality_line(self.quality, version, self.errors.get("quality")))
        self.query_one("#drift-summary", Static).update(text)

    def _show_panel(self) -> None:
        row = self.table.cursor_row_data
        detail = self.query_one("#feature-detail", Static)
        if row is None:
            detail.update("")
            return
        text = feature_detail(row.feature)
        if row.history:
            text += f"\nhistory: {len(row.history)} windows, max {fmt_score(max(row.history))}"
        detail.update(text)

    def update_status_line(self) -> None:
        table = self.table
        parts = [f"{len(table.rows_shown)}/{len(table.all_rows)} features", f"baseline {self.baseline}"]
        if self.loading:
            parts.append("loading…")
        elif self.report is not None:
            age = max(0.0, self.agent_now() - self.report.computed_at)
            parts.append(f"computed {fmt_age(age)} ago")
        if "history" in self.errors:
            parts.append(f"history unavailable: {self.errors['history']}")
        parts.append(f"every {self.refresh_interval:g}s")
        self.show_status(parts)

    @on(DataTable.RowHighlighted, "#drift-table")
    def _row_highlighted(self) -> None:
        self._show_panel()
        self._request_histogram()

    def filter_applied(self) -> None:
        self.update_status_line()
        self._show_panel()
        self._request_histogram()

    # ------------------------------------------------------------------ actions

    def action_toggle_baseline(self) -> None:
        """`b`: compare with the reference profile or with the previous window."""
        self.baseline = BASELINES[(BASELINES.index(self.baseline) + 1) % len(BASELINES)]
        self.report = None
        self.history = None
        self.errors = {}
        self.table.show([])
        self._show_summary()
        self._show_panel()
        self._load_now()

    def action_reload(self) -> None:
        """`r`: refresh the drift data now (and poll the fleet)."""
        self._load_now()
        self.wk_app.action_refresh_now()
