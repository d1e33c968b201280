"""What the registry refuses, and why: each error carries the HTTP status and the field the API names."""

from __future__ import annotations

import re

from agent.schemas import NAME_PATTERN

_NAME_RE = re.compile(NAME_PATTERN)


class RegistryError(Exception):
    """A request the registry refuses; the API turns it into an `ErrorBody` with the same fields."""

    status = 400
    error = "bad_request"

    def __init__(self, detail: str, field: str | None = None, *, error: str | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.field = field
        if error is not None:
            self.error = error


class NotFound(RegistryError):
    status = 404
    error = "not_found"


class Conflict(RegistryError):
    status = 409
    error = "conflict"


class Invalid(RegistryError):
    status = 422
    error = "invalid_request"


class InvalidModel(Invalid):
    """The artifact or its metadata can't be served as described."""

    error = "invalid_model"


class StoreUnavailable(RegistryError):
    status = 503
    error = "store_unavailable"


def check_name(value: str, field: str = "name") -> str:
    if not isinstance(value, str) or not _NAME_RE.match(value):
        raise Invalid(
            f"{field} {value!r} must be 1-64 characters of [A-Za-z0-9_.-], starting with a letter or digit",
            field,
        )
    return value
