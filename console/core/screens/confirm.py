"""A confirmation dialog for actions that change something on an agent (Posting-style).

`y` confirms, `n` or Escape cancels. An optional text box takes a reason or comment (required or
not); while it has focus every key types into it, so a stray `y` can only ever become part of the
text, and Enter there confirms. Subclasses may add choices between the body and the text box
(`compose_choices`) and pick what has focus first (`first_focus`). The confirm action is
`@mutating`, so read-only mode refuses it even if a dialog was somehow opened.
"""

from __future__ import annotations

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widget import Widget
from textual.widgets import Button, Input, Label, Static

from console.core.readonly import mutating

TEXT_MAX = 500  # the agent's limit on reasons and comments


class ConfirmScreen(ModalScreen[bool]):
    """Dismisses True (confirmed; `reason` holds the typed text, whitespace collapsed) or False."""

    BINDINGS = [
        Binding("escape", "cancel", "Cancel"),
        Binding("n", "cancel", "No"),
        Binding("y", "confirm", "Yes"),
    ]

    def __init__(
        self,
        *,
        heading: str,
        body: str,
        yes_label: str,
        yes_variant: str = "primary",
        box_class: str = "",
        text_label: str | None = None,
        text_placeholder: str = "",
        text_required: bool = False,
    ) -> None:
        super().__init__()
        self.heading = heading
        self.body = body
        self.yes_label = yes_label
        self.yes_variant = yes_variant
        self.box_class = box_class
        self.text_label = text_label
        self.text_placeholder = text_placeholder
        self.text_required = text_required
        self.reason = ""

    def compose(self) -> ComposeResult:
        with Vertical(id="confirm-box", classes=self.box_class):
            yield Static(self.heading, id="confirm-title", markup=False)
            yield Static(self.body, id="confirm-body", markup=False)
            yield from self.compose_choices()
            if self.text_label is not None:
                yield Label(self.text_label)
                yield Input(placeholder=self.text_placeholder, max_length=TEXT_MAX, id="reason")
            yield Static("", id="confirm-error", markup=False)
            with Horizontal(id="confirm-buttons"):
                yield Button(self.yes_label, id="yes", variant=self.yes_variant)  # type: ignore[arg-type]
                yield Button("No (n)", id="no")

    def compose_choices(self) -> ComposeResult:
        """Widgets between the body and the text box (none by default)."""
        yield from ()

    def first_focus(self) -> Widget:
        """What has focus when the dialog opens: the text box, else the Yes button."""
        boxes = self.query("#reason")
        return boxes.first() if boxes else self.query_one("#yes", Button)

    def on_mount(self) -> None:
        self.first_focus().focus()

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
        """Confirm, if the text (when required) was given."""
        boxes = self.query("#reason")
        box = boxes.first(Input) if boxes else None
        reason = " ".join(box.value.split()) if box is not None else ""
        if self.text_required and not reason:
            self._show_error("A reason is required.")
            if box is not None:
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
        boxes = self.query("#reason")
        if boxes:
            boxes.first().set_class(bool(text), "-invalid")
