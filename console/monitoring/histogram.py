"""Reference vs current distribution of one feature: two horizontal bars per bin, side by side.

Drawn with Rich text (eighth-block bars), so it needs no plotting dependency and renders the same
in every terminal and snapshot. Both bars of a bin share one scale (the largest share of either
series), so their lengths compare directly; the change in percentage points is printed beside
them and stands out when the bin moved by `SHIFT_HOT` or more.
"""

from __future__ import annotations

from rich.text import Text
from textual.reactive import reactive
from textual.widget import Widget

from agent.schemas import HistogramOut

EIGHTHS = " ▏▎▍▌▋▊▉"
FULL = "█"
REF_STYLE = "blue"
CUR_STYLE = "magenta"
SHIFT_HOT = 0.05  # a bin whose share moved by 5 percentage points or more is highlighted
LABEL_MAX = 18
PCT_WIDTH = 7  # " 12.3%"


def bar(share: float, scale: float, width: int) -> str:
    """A bar of `width` cells for `share` on a 0..`scale` axis, in eighths of a cell."""
    if width <= 0 or scale <= 0:
        return ""
    eighths = round(min(max(share / scale, 0.0), 1.0) * width * 8)
    full, rest = divmod(eighths, 8)
    text = FULL * full + (EIGHTHS[rest] if rest else "")
    return text.ljust(width)


def _label(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def histogram_text(h: HistogramOut | None, width: int, note: str = "") -> Text:
    """The whole chart as text fitting `width` cells (never wrapped: one line per bin)."""
    out = Text(no_wrap=True, overflow="crop", end="")
    if h is None:
        out.append(note or "no feature selected", style="dim")
        return out
    n = min(len(h.bins), len(h.reference), len(h.current))
    label_w = min(LABEL_MAX, max([len(b) for b in h.bins[:n]] + [3]))
    # label + space, two groups of bar + pct + space, the change (8 cells), one spare cell
    bar_w = max(4, (width - label_w - 1 - 2 * (PCT_WIDTH + 1) - 8 - 1) // 2)
    scale = max([*h.reference[:n], *h.current[:n], 0.0]) or 1.0
    out.append(f"{h.feature}", style="bold")
    out.append(f"  ({h.kind}, share of rows per bin)  ")
    out.append("▇ reference", style=REF_STYLE)
    out.append("  ")
    out.append("▇ current", style=CUR_STYLE)
    if note:
        out.append(f"  {note}", style="dim")
    out.append("\n")
    out.append(f"{'bin':<{label_w}} {'reference':<{bar_w + PCT_WIDTH}} {'current':<{bar_w + PCT_WIDTH}} {'change':>8}")
    out.append("\n", style="")
    for i in range(n):
        ref, cur = h.reference[i], h.current[i]
        delta = cur - ref
        hot = abs(delta) >= SHIFT_HOT
        out.append(f"{_label(h.bins[i], label_w):<{label_w}} ", style="bold" if hot else "")
        out.append(bar(ref, scale, bar_w), style=REF_STYLE)
        out.append(f"{ref * 100:6.1f}% ")
        out.append(bar(cur, scale, bar_w), style=CUR_STYLE)
        out.append(f"{cur * 100:6.1f}% ")
        out.append(f"{delta * 100:+6.1f}pp", style="bold yellow" if hot else "dim")
        if i < n - 1:
            out.append("\n")
    if n == 0:
        out.append("(no bins)", style="dim")
    return out


class HistogramView(Widget):
    """The histogram of the selected feature; `note` says why there is none (or that it is loading)."""

    DEFAULT_CSS = "HistogramView { height: auto; }"

    histogram: reactive[HistogramOut | None] = reactive(None, layout=True)
    note: reactive[str] = reactive("", layout=True)

    def show(self, histogram: HistogramOut | None, note: str = "") -> None:
        """Draw `histogram` (None: nothing to draw, `note` says why)."""
        self.histogram = histogram
        self.note = note

    def render(self) -> Text:
        return histogram_text(self.histogram, self.size.width, self.note)
