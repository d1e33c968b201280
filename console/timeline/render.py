"""A timeline drawn as text (no Textual): stacked sparklines on one time axis, event markers beneath, a cursor,
and the items at the cursor's moment. The TUI's timeline screen shows these lines; the CLI prints them.

The chart is `width` columns wide: a label, the bars, the value under the cursor. Each column covers the
buckets that fall in it (several when the range has more buckets than columns, one stretched over several
columns when fewer); a column shows the worst bucket in it (max), so a short spike is never averaged away.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass

from rich.text import Text

from agent.schemas import Timeline, TimelineItem, TimelineSeries

BARS = "▁▂▃▄▅▆▇█"
LABEL_W = 9
VALUE_W = 9
# Short names, and the scale each is drawn on: a fixed ceiling (percent, shares) or None (the data's maximum).
SERIES_VIEW: dict[str, tuple[str, float | None]] = {
    "requests_per_s": ("req/s", None),
    "p50_ms": ("p50 ms", None),
    "p99_ms": ("p99 ms", None),
    "error_share": ("errors", 1.0),
    "fallback_share": ("fallbk", 1.0),
    "drift_score": ("drift", None),
    "host_cpu_percent": ("cpu %", 100.0),
    "host_memory_percent": ("mem %", 100.0),
    "gpu_utilization_percent": ("gpu %", 100.0),
    "gpu_memory_percent": ("gpumem%", 100.0),
    "xid_errors": ("xid", None),
}
# Dropped first when the terminal is short (the least asked-for on call).
DROP_ORDER = ("p50_ms", "host_memory_percent", "gpu_memory_percent", "xid_errors", "fallback_share", "drift_score")


@dataclass(frozen=True)
class Column:
    """The buckets [lo, hi) one chart column covers, and its time span."""

    lo: int
    hi: int
    start: float
    end: float


def columns(tl: Timeline, width: int) -> list[Column]:
    """`width` columns over the timeline's buckets."""
    n = len(tl.buckets)
    out = []
    for c in range(max(width, 1)):
        lo = c * n // width
        hi = max((c + 1) * n // width, lo + 1)
        lo, hi = min(lo, n - 1), min(hi, n)
        out.append(Column(lo, hi, tl.buckets[lo], tl.buckets[hi - 1] + tl.step_s))
    return out


def fmt_value(v: float | None, name: str) -> str:
    if v is None:
        return "-"
    if name in ("error_share", "fallback_share"):
        return f"{v * 100:.1f}%"
    if abs(v) >= 1e4:
        return f"{v / 1e3:.0f}k"
    if abs(v) >= 100:
        return f"{v:.0f}"
    return f"{v:.3g}"


def _col_max(values: Sequence[float | None], col: Column) -> float | None:
    have = [v for v in values[col.lo : col.hi] if v is not None]
    return max(have) if have else None


def spark(s: TimelineSeries, cols: Sequence[Column], cursor: int) -> Text:
    """One series' bars, one per column; the cursor's column reversed."""
    name = s.name
    ceiling = SERIES_VIEW.get(name, ("", None))[1]
    vals = [_col_max(s.values, c) for c in cols]
    top = ceiling or max((v for v in vals if v is not None), default=0.0) or 1.0
    text = Text(no_wrap=True, end="")
    for i, v in enumerate(vals):
        style = "reverse" if i == cursor else ""
        if v is None:
            text.append(" ", style=style or "dim")
            continue
        frac = min(max(v / top, 0.0), 1.0)
        colour = "red" if frac >= 0.9 else "yellow" if frac >= 0.75 else "green"
        if ceiling is None:
            colour = "cyan"
        text.append(BARS[max(0, math.ceil(frac * len(BARS)) - 1)], style=f"{colour} {style}".strip())
    return text


def markers(items: Sequence[TimelineItem], cols: Sequence[Column], cursor: int) -> Text:
    """One mark per column: ▲ a change, ● a signal, ◆ both; the cursor's column as ┃ when empty."""
    kinds: list[set[str]] = [set() for _ in cols]
    if cols:
        start, end = cols[0].start, cols[-1].end
        span = (end - start) or 1.0
        n = len(cols)
        for x in items:
            if start <= x.ts < end:
                i = min(n - 1, int((x.ts - start) / span * n))
                # Columns may be uneven: step to the one whose span holds ts.
                while i > 0 and x.ts < cols[i].start:
                    i -= 1
                while i < n - 1 and x.ts >= cols[i].end:
                    i += 1
                kinds[i].add(x.category)
    text = Text(no_wrap=True, end="")
    for i, k in enumerate(kinds):
        ch, style = (
            ("◆", "magenta") if len(k) == 2 else ("▲", "yellow") if "change" in k else ("●", "red") if k else (" ", "")
        )
        if i == cursor:
            ch, style = (ch if k else "┃"), f"{style} reverse".strip()
        text.append(ch, style=style)
    return text


def clock(ts: float, with_date: bool = False) -> str:
    """UTC wall clock: HH:MM:SS, or MM-DD HH:MM for ranges over a day."""
    fmt = "%m-%d %H:%M" if with_date else "%H:%M:%S"
    return time.strftime(fmt, time.gmtime(ts))


def axis(cols: Sequence[Column], span_s: float) -> Text:
    """Time labels under the chart, one every ~14 columns."""
    with_date = span_s > 86400
    width = len(cols)
    line = [" "] * width
    label_w = 11 if with_date else 8
    i = 0
    while i + label_w <= width:
        label = clock(cols[i].start, with_date)
        line[i : i + len(label)] = list(label)
        i += max(label_w + 3, 14)
    return Text("".join(line), style="dim", no_wrap=True, end="")


def items_at(tl: Timeline, col: Column) -> list[TimelineItem]:
    """The items in the cursor's column."""
    return [x for x in tl.items if col.start <= x.ts < col.end]


def item_line(x: TimelineItem, multi_host: bool = False) -> str:
    who = x.actor if not x.on_behalf_of else f"{x.actor} for {x.on_behalf_of}"
    host = f"[{x.host}] " if multi_host and x.host else ""
    return f"{clock(x.ts)} {host}{x.kind} · {who} · {x.summary}"


def render(tl: Timeline, width: int, height: int, cursor: int | None = None) -> tuple[list[Text], int, Column]:
    """The chart's lines for a `width` x `height` area (series that don't fit are dropped, least asked-for
    first), the cursor's column (default: the last) and that column."""
    chart_w = max(width - LABEL_W - VALUE_W, 8)
    cols = columns(tl, chart_w)
    cur = len(cols) - 1 if cursor is None else min(max(cursor, 0), len(cols) - 1)
    shown = [s for s in tl.series if s.name in SERIES_VIEW]
    room = max(height - 2, 1)  # markers and axis below the series
    for name in DROP_ORDER:
        if len(shown) <= room:
            break
        shown = [s for s in shown if s.name != name]
    shown = shown[:room]
    lines = []
    for s in shown:
        label = SERIES_VIEW[s.name][0]
        line = Text(f"{label:<{LABEL_W - 1}.{LABEL_W - 1}} ", style="bold", no_wrap=True, end="")
        line.append_text(spark(s, cols, cur))
        v = _col_max(s.values, cols[cur])
        line.append(f" {fmt_value(v, s.name):>{VALUE_W - 1}.{VALUE_W - 1}}")
        lines.append(line)
    mark = Text(f"{'events':<{LABEL_W - 1}} ", style="bold", no_wrap=True, end="")
    mark.append_text(markers(tl.items, cols, cur))
    lines.append(mark)
    ax = Text(" " * LABEL_W, no_wrap=True, end="")
    ax.append_text(axis(cols, tl.until - tl.since))
    lines.append(ax)
    return lines, cur, cols[cur]
