"""Watchkeeper console: the Textual fleet TUI and the `watchkeeper` CLI (a client of the agent API)."""

__version__ = "0.1.0"
