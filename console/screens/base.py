"""Behaviour every console screen shares."""

from __future__ import annotations

from textual.screen import Screen

from console.client import FleetStatus
from console.readonly import allowed


class ConsoleScreen(Screen):
    """A screen that honours read-only mode and can be handed fresh fleet data."""

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        return allowed(self, action)

    def show_fleet(self, status: FleetStatus) -> None:
        """Receive the latest poll (called by the App, never while a modal covers the screen)."""
