"""Watchkeeper agent: the per-host daemon (telemetry, store, HTTP API)."""

__version__ = "0.1.0"
