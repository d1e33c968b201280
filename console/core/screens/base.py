"""Behaviour every console screen shares."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from textual.screen import ModalScreen, Screen

from console.core.poller import FleetStatus
from console.core.readonly import allowed

if TYPE_CHECKING:
    from console.app import WatchkeeperApp


class ConsoleScreen(Screen):
    """A screen that honours read-only mode and can be handed fresh fleet data."""

    @property
    def wk_app(self) -> WatchkeeperApp:
        return self.app  # type: ignore[return-value]

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        return allowed(self, action)

    def show_fleet(self, status: FleetStatus) -> None:
        """Receive the latest poll (called by the App, never while a modal covers the screen)."""

    def confirm(self, dialog: ModalScreen[bool], then: Callable[[], object]) -> None:
        """Open `dialog` (a `ConfirmScreen`); call `then` once the operator has confirmed, else nothing."""

        def decided(confirmed: bool | None) -> None:
            if confirmed:
                then()

        self.app.push_screen(dialog, decided)
