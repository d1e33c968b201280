"""Confirmation before switching an endpoint to its fallback prediction (or back to the model).

Posting-style: `y` confirms, `n` or Escape cancels; the reason is required (the agent records it
in its audit log with who, when and from where). While the reason box has focus every key types
into it, so a stray `y` can only ever become part of the reason; Enter there confirms.
"""

from __future__ import annotations

from dataclasses import dataclass

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Input, Label, Static

from console.readonly import mutating

REASON_MAX = 500  # FallbackToggle.reason's limit on the agent


@dataclass(frozen=True)
class FallbackRequest:
    """What the operator is about to do, in the words the dialog shows."""

    agent: str  # the agent's key in the fleet
    host: str  # its display name
    endpoint: str
    model_version: str
    enable: bool
    breaker: str = "closed"
    fallback_configured: bool = True

    @property
    def title(self) -> str:
        action = "Switch to fallback" if self.enable else "Switch back to the model"
        return f"{action}: {self.endpoint} on {self.host}?"

    @property
    def consequence(self) -> str:
        """What will happen, in plain words."""
        where = f"{self.endpoint} on {self.host} (serving {self.model_version})"
        if self.enable:
            return (
                f"Every request to {where} will be answered with the endpoint's configured fallback "
                f"prediction (marked fallback: true, reason 'operator') instead of calling the model, "
                f"until someone switches it back."
            )
        return (
            f"Requests to {where} will go to the model again. "
            f"Breaker now {self.breaker.replace('_', '-')}: if it is open, callers still get the fallback "
            f"until it closes."
        )


class FallbackConfirm(ModalScreen[bool]):
    """y / n / Escape; the reason Input must not be empty. Dismisses True (confirmed) or False."""

    BINDINGS = [
        Binding("escape", "cancel", "Cancel"),
        Binding("n", "cancel", "No"),
        Binding("y", "confirm", "Yes"),
    ]

    def __init__(self, request: FallbackRequest) -> None:
        super().__init__()
        self.request = request
        self.reason = ""

    def compose(self) -> ComposeResult:
        r = self.request
        with Vertical(id="confirm-box", classes="-enable" if r.enable else "-disable"):
            yield Static(r.title, id="confirm-title", markup=False)
            yield Static(r.consequence, id="confirm-body", markup=False)
            yield Label("Reason (required; recorded in the agent's audit log):")
            yield Input(placeholder="e.g. INC-1234 model returns NaN", max_length=REASON_MAX, id="reason")
            yield Static("", id="confirm-error", markup=False)
            with Horizontal(id="confirm-buttons"):
                label = "Yes, switch to fallback (y)" if r.enable else "Yes, back to the model (y)"
                yield Button(label, id="yes", variant="warning" if r.enable else "primary")
                yield Button("No (n)", id="no")

    def on_mount(self) -> None:
        self.query_one("#reason", Input).focus()

    @on(Input.Submitted, "#reason")
    async def _submitted(self) -> None:
        await self.run_action("confirm")

    @on(Input.Changed, "#reason")
    def _changed(self, event: Input.Changed) -> None:
        if event.value.strip():
            self._show_error("")

    @on(Button.Pressed, "#yes")
    async def _yes(self) -> None:
        await self.run_action("confirm")

    @on(Button.Pressed, "#no")
    def _no(self) -> None:
        self.action_cancel()

    @mutating
    def action_confirm(self) -> None:
        """Confirm, if a reason was given."""
        box = self.query_one("#reason", Input)
        reason = " ".join(box.value.split())
        if not reason:
            self._show_error("A reason is required.")
            box.focus()
            return
        self.reason = reason
        self.dismiss(True)

    def action_cancel(self) -> None:
        """Leave without changing anything."""
        self.dismiss(False)

    def _show_error(self, text: str) -> None:
        error = self.query_one("#confirm-error", Static)
        error.update(text)
        error.display = bool(text)
        self.query_one("#reason", Input).set_class(bool(text), "-invalid")
