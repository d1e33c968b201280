"""Pipelines: client, rows, CLI and screen (issue 14)."""
