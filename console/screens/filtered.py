"""A screen with a table and the k9s-style `/` filter line (regex; `!` inverts)."""

from __future__ import annotations

import re

from textual import on
from textual.binding import Binding
from textual.widgets import Input

from console.filtering import RowFilter
from console.screens.base import ConsoleScreen


class FilterInput(Input):
    """The `/` filter line; Escape clears and hides it."""

    BINDINGS = [Binding("escape", "dismiss_filter", "Clear filter", show=False)]

    def action_dismiss_filter(self) -> None:
        self.screen.action_clear_filter()  # type: ignore[attr-defined]


class FilteredTableScreen(ConsoleScreen):
    """Owns the filter line of `self.table` (which has a `row_filter`); subclasses react in `_filter_applied`."""

    table: object  # a KeyedTable subclass with a `row_filter` attribute

    def _filter_applied(self) -> None:
        """Called after the filter changed (subclasses update their status line, panels)."""

    def action_filter(self) -> None:
        """`/`: show and focus the filter line."""
        box = self.query_one(FilterInput)
        box.remove_class("-hidden")
        box.focus()

    def action_clear_filter(self) -> None:
        """Escape: drop the filter and go back to the table."""
        box = self.query_one(FilterInput)
        box.value = ""
        box.add_class("-hidden")
        box.remove_class("-invalid")
        self.table.row_filter = RowFilter()  # type: ignore[attr-defined]
        self.table.focus()  # type: ignore[attr-defined]
        self._filter_applied()

    @on(Input.Changed, "#filter")
    def _filter_changed(self, event: Input.Changed) -> None:
        try:
            row_filter = RowFilter.parse(event.value)
        except re.error:
            # Keep showing the last valid filter while the user is mid-way through a pattern.
            event.input.add_class("-invalid")
            return
        event.input.remove_class("-invalid")
        self.table.row_filter = row_filter  # type: ignore[attr-defined]
        self._filter_applied()

    @on(Input.Submitted, "#filter")
    def _filter_submitted(self, event: Input.Submitted) -> None:
        if not event.value:
            self.action_clear_filter()
            return
        self.table.focus()  # type: ignore[attr-defined]
