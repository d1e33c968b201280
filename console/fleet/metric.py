"""A labelled history row: name and current value on the left, a fixed-scale sparkline right."""

from __future__ import annotations

from collections.abc import Sequence

from textual.app import ComposeResult
from textual.containers import Horizontal
from textual.widgets import Label

from console.core.widgets.spark import Spark


class MetricSpark(Horizontal):
    """One metric: `label  value` and its recent history.

    Values may be set before the widget is mounted (a GPU panel is filled in the same refresh
    that creates it); they are kept and drawn on mount.
    """

    DEFAULT_CSS = """
    MetricSpark { height: 1; }
    MetricSpark > .metric--label { width: 38; }
    """

    def __init__(self, label: str, *, ceiling: float | None = 100.0, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.label = label
        self.value_text = ""
        self.history: tuple[float, ...] = ()
        self._label = Label(label, classes="metric--label", markup=False)
        self._spark = Spark()
        self._spark.ceiling = ceiling

    def compose(self) -> ComposeResult:
        yield self._label
        yield self._spark

    def on_mount(self) -> None:
        self._draw()

    def _draw(self) -> None:
        self._label.update(f"{self.label:<12}{self.value_text}")
        self._spark.data = self.history

    def set_value(self, text: str) -> None:
        """Show the current value next to the label."""
        if text != self.value_text:
            self.value_text = text
            if self.is_mounted:
                self._draw()

    def set_history(self, values: Sequence[float], *, ceiling: float | None = None) -> None:
        """Replace the history (missing samples already dropped by the caller)."""
        if ceiling is not None:
            self._spark.ceiling = ceiling
        data = tuple(float(v) for v in values)
        if data != self.history:
            self.history = data
            if self.is_mounted:
                self._draw()
