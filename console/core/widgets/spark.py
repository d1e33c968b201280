"""A sparkline on a fixed scale.

Textual's `Sparkline` scales every chart from its own minimum to its own maximum, so CPU wobbling
between 50.0 and 50.4 % looks like a saw-tooth. On an ops console a bar's height must mean the
same thing every time: percentages are drawn on 0..100, bytes on 0..capacity.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from rich.text import Text
from textual.reactive import reactive
from textual.widget import Widget

BARS = "▁▂▃▄▅▆▇█"


def bucket(values: Sequence[float], width: int) -> list[float]:
    """Fit `values` into `width` columns: the newest `width` values, or bucket maxima if more."""
    if width <= 0 or not values:
        return []
    if len(values) <= width:
        return list(values)
    size = len(values) / width
    out = []
    for i in range(width):
        lo, hi = int(i * size), max(int((i + 1) * size), int(i * size) + 1)
        out.append(max(values[lo:hi]))  # max, so a short spike is not averaged away
    return out


def spark_text(values: Sequence[float], width: int, ceiling: float | None) -> Text:
    """Render bars right-aligned in `width` cells; `ceiling` None scales to the data's maximum."""
    points = bucket(values, width)
    top = ceiling if ceiling else (max(points) if points else 0.0) or 1.0
    text = Text(" " * (width - len(points)), no_wrap=True, end="")
    for v in points:
        frac = min(max(v / top, 0.0), 1.0)
        style = "red" if frac >= 0.9 else "yellow" if frac >= 0.75 else "green"
        # The lowest bar that reaches the value: 50 % is exactly half height.
        text.append(BARS[max(0, math.ceil(frac * len(BARS)) - 1)], style=style)
    return text


class Spark(Widget):
    """One-line history chart on a fixed scale (`ceiling`)."""

    DEFAULT_CSS = "Spark { height: 1; width: 1fr; }"

    data: reactive[tuple[float, ...]] = reactive(tuple)
    ceiling: reactive[float | None] = reactive(100.0)

    def render(self) -> Text:
        return spark_text(self.data, self.size.width, self.ceiling)
