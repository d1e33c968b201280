"""Serving exceptions, importable without numpy."""

from __future__ import annotations

from typing import Any


class ValidationFailed(Exception):
    """Request rows that don't match the signature; `errors` name the row and field of each problem."""

    def __init__(self, errors: list[dict[str, Any]]) -> None:
        super().__init__(f"{len(errors)} validation error(s)")
        self.errors = errors
