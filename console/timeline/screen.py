"""The timeline screen: one endpoint across every host serving it, on one time axis.

Opened with `t` from an endpoint, an alert (the cursor on the moment it fired) or a rollout (on its start).
Stacked sparklines (traffic, latency as callers waited, error and fallback share, top-feature drift, host
CPU and memory, GPU, XID errors), event markers beneath (▲ change, ● signal), a cursor (←/→, shift for ten
columns) showing every item at that moment, zoom `+`/`-` (1 h … 7 d), `w` "what changed before" the cursor's
moment. Fetching runs in this screen's worker on the poller's thread, never on the UI thread.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import cast

from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.widgets import Footer, Header, Static

from agent.schemas import Timeline, TimelineItem
from console.core.poller import FleetStatus
from console.core.screens.base import ConsoleScreen
from console.timeline.client import TimelineSource, gather_before, gather_timelines
from console.timeline.render import LABEL_W, VALUE_W, clock, item_line, items_at, render

STYLES = Path(__file__).resolve().parent / "timeline.tcss"
ZOOMS = (3600.0, 3 * 3600.0, 6 * 3600.0, 12 * 3600.0, 86400.0, 3 * 86400.0, 7 * 86400.0)
BEFORE_S = 1800.0
REFRESH_MIN_S = 10.0


def chart_width(width: int) -> int:
    """Columns of bars in a chart `width` cells wide (render() takes the label and value from it)."""
    return max(width - LABEL_W - VALUE_W, 8)


def zoom_name(span: float) -> str:
    return f"{span / 86400:g} d" if span >= 86400 else f"{span / 3600:g} h"


def agents_serving(status: FleetStatus | None, endpoint: str, first: str | None = None) -> list[str]:
    """Agents whose last serving answer has `endpoint` (`first`, the one it was opened from, leads)."""
    names = [first] if first else []
    if status is not None:
        for a in status.agents:
            if a.serving is not None and any(e.name == endpoint for e in a.serving.endpoints) and a.name not in names:
                names.append(a.name)
    return names


class TimelineScreen(ConsoleScreen):
    """Escape goes back."""

    CSS_PATH = STYLES
    BINDINGS = [
        Binding("escape", "back", "Back"),
        Binding("backspace", "app.pop_screen", "Back", show=False),
        Binding("left", "move(-1)", "Earlier", show=False),
        Binding("right", "move(1)", "Later", show=False),
        Binding("shift+left", "move(-10)", "Earlier x10", show=False),
        Binding("shift+right", "move(10)", "Later x10", show=False),
        Binding("plus,equals_sign", "zoom(-1)", "Zoom in"),
        Binding("minus", "zoom(1)", "Zoom out"),
        Binding("w", "before", "What changed before"),
        Binding("r", "reload", "Refresh"),
    ]

    def __init__(self, endpoint: str, agents: Sequence[str], at: float | None = None, context: str = "") -> None:
        super().__init__()
        self.endpoint = endpoint
        self.agents = list(agents)
        self.at = at  # the moment it was opened for (an alert firing, a rollout starting); None: now
        self.context = context  # what it was opened from, e.g. 'alert rollout_guard'
        self.zoom = 0
        self.cursor: int | None = None  # chart column; None: the column of `at` (or the newest)
        self.timeline: Timeline | None = None
        self.errors: dict[str, str] = {}
        self.before: list[TimelineItem] | None = None  # "what changed before" the moment below
        self.before_at: float | None = None
        self.loads = 0  # loads applied (tests wait on it)
        self._cols = 0
        self._col_span: tuple[float, float] | None = None
        self._moved = False  # the cursor left the moment it was opened for

    @property
    def source(self) -> TimelineSource:
        return cast(TimelineSource, self.wk_app.source)

    def compose(self) -> ComposeResult:
        yield Header()
        yield Static("", id="timeline-title", markup=False)
        yield Static("", id="timeline-chart", markup=False)
        with VerticalScroll(id="timeline-items-box"):
            yield Static("", id="timeline-items", markup=False)
        yield Footer()

    def on_mount(self) -> None:
        hosts = f"{len(self.agents)} hosts" if len(self.agents) != 1 else (self.agents[0] if self.agents else "no host")
        self.sub_title = f"timeline · {self.endpoint} · {hosts}"
        self._draw()
        self.load()
        # Following "now" (not pinned to an alert's or a rollout's moment): refresh with the app's polls.
        self.set_interval(max(self.wk_app.refresh_s, REFRESH_MIN_S), self._tick)

    def _tick(self) -> None:
        if self.at is None and not self._moved and self.before is None:
            self.load()

    def on_resize(self) -> None:
        self._draw()

    # ------------------------------------------------------------------ loading

    def _range(self) -> tuple[float, float]:
        span = ZOOMS[self.zoom]
        now = self.wk_app.source.now()
        if self.at is None:
            return now - span, now
        until = min(now, self.at + span / 3)
        return until - span, until

    @work(exclusive=True, group="timeline")
    async def load(self) -> None:
        since, until = self._range()
        tl, errors = await gather_timelines(self.source, self.agents, self.endpoint, since, until)
        self.timeline, self.errors = tl, errors
        self.loads += 1
        self._draw()

    @work(exclusive=True, group="timeline-before")
    async def load_before(self, at: float) -> None:
        changes, errors = await gather_before(self.source, self.agents, self.endpoint, at, BEFORE_S)
        self.before, self.before_at = changes, at
        self.errors.update(errors)
        self.loads += 1
        self._draw()

    # ------------------------------------------------------------------ actions

    def action_back(self) -> None:
        if self.before is not None:
            self.before = None  # first Escape leaves "what changed before"
            self._draw()
            return
        self.app.pop_screen()

    def action_move(self, by: int) -> None:
        if self._cols:
            cur = self.cursor if self.cursor is not None else self._cols - 1
            self.cursor = min(max(cur + by, 0), self._cols - 1)
            self._moved = True
            self._draw()

    def action_zoom(self, by: int) -> None:
        z = min(max(self.zoom + by, 0), len(ZOOMS) - 1)
        if z != self.zoom:
            if self._col_span is not None:
                self.at = self._col_span[1]  # keep the cursor's moment in view
            self.zoom, self.cursor, self._moved = z, None, False
            self.load()

    def action_before(self) -> None:
        """`w`: what changed in the 30 min before the cursor's moment (the alert's, when opened from one)."""
        at = self.at if not self._moved else None
        if at is None:
            at = self._col_span[1] if self._col_span is not None else self.wk_app.source.now()
        self.load_before(at)

    def action_reload(self) -> None:
        self.load()

    # ------------------------------------------------------------------ drawing

    def _draw(self) -> None:
        if not self.is_mounted:
            return
        title = self.query_one("#timeline-title", Static)
        chart = self.query_one("#timeline-chart", Static)
        box = self.query_one("#timeline-items", Static)
        width = max(self.size.width - 2, 20)
        tl = self.timeline
        if tl is None:
            waiting = "; ".join(f"{a}: {e}" for a, e in self.errors.items()) or "loading…"
            title.update(f"{self.endpoint} · {zoom_name(ZOOMS[self.zoom])} · {waiting}")
            chart.update("")
            box.update("")
            return
        # The chart takes what the items need least: at 24 lines, 9 series and 5 item lines.
        height = max(self.size.height - 9, 4)
        if self.cursor is None and self.at is not None and tl.buckets:
            self.cursor = self._column_of(tl, self.at, width)
        lines, _cur, col = render(tl, width, height, self.cursor)
        self._cols = chart_width(width)
        self._col_span = (col.start, col.end)
        days = tl.until - tl.since > 86400
        failed = f" · no answer from {', '.join(self.errors)}" if self.errors else ""
        title.update(
            f"{self.context + ' · ' if self.context else ''}{self.endpoint} on {tl.host} · "
            f"{clock(tl.since, days)} → {clock(tl.until, days)} UTC · {zoom_name(ZOOMS[self.zoom])} · "
            f"step {tl.step_s:g}s{failed}"
        )
        chart.update(Text("\n").join(lines))
        box.update(self._items_text(tl, col))

    def _column_of(self, tl: Timeline, at: float, width: int) -> int:
        chart_w = chart_width(width)
        span = (tl.buckets[-1] + tl.step_s) - tl.buckets[0]
        return min(chart_w - 1, max(0, int((at - tl.buckets[0]) / span * chart_w)))

    def _items_text(self, tl: Timeline, col) -> Text:
        multi = len(self.agents) > 1
        out = Text(no_wrap=False, end="")
        if self.before is not None and self.before_at is not None:
            out.append(
                f"What changed in the {BEFORE_S / 60:g} min before {clock(self.before_at)} (newest first)\n", "bold"
            )
            if not self.before:
                out.append("no change recorded in that window\n", "dim")
            for x in self.before:
                out.append(item_line(x, multi) + "\n")
            return out
        here = items_at(tl, col)
        out.append(f"{clock(col.start)}-{clock(col.end)}: {len(here) or 'no'} item(s)\n", "bold")
        if not here:
            earlier = [x for x in tl.items if x.ts < col.start][-3:]
            if earlier:
                out.append("latest before:\n", "dim")
            here = list(reversed(earlier))
        for x in here:
            style = "yellow" if x.category == "change" else "red"
            out.append(item_line(x, multi) + "\n", style)
        if tl.notes and not tl.items:
            out.append("; ".join(tl.notes) + "\n", "dim")
        return out
