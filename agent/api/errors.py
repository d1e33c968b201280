"""One JSON error shape (`ErrorBody`) for every 4xx/5xx, and no request can take the agent down."""

from __future__ import annotations

import logging
import re

from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger("watchkeeper.api")


class ApiError(HTTPException):
    """An error with a short machine-readable `error` code and, when one field is at fault, its name."""

    def __init__(
        self,
        status: int,
        error: str,
        detail: object = None,
        field: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(status_code=status, detail=detail, headers=headers)
        self.error = error
        self.field = field


def _body(error: str, detail: object = None, field: str | None = None) -> dict:
    return {"error": error, "detail": detail, "field": field}


def _allowed(request: Request) -> str:
    """The methods the API documents for this path (Starlette's 405 names only the first route's methods).

    Where templates overlap (`/models/{name}/aliases/history` and `/models/{name}/aliases/{alias}`), the one
    with the fewest parameters is the resource.
    """
    app = request.app
    table = getattr(app.state, "allow_table", None)
    if table is None:
        table = []
        for path, ops in app.openapi().get("paths", {}).items():
            methods = {m.upper() for m in ops}
            if "GET" in methods:
                methods.add("HEAD")  # Starlette answers HEAD wherever it answers GET
            pattern = re.compile("^" + re.sub(r"\\{[^}]+\\}", "[^/]+", re.escape(path)) + "$")
            table.append((pattern, path.count("{"), methods))
        app.state.allow_table = table
    matches = [(params, methods) for pattern, params, methods in table if pattern.match(request.url.path)]
    fewest = min((params for params, _ in matches), default=0)
    return ", ".join(sorted(set().union(*(m for params, m in matches if params == fewest))))


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api_error(_: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse(_body(exc.error, exc.detail, exc.field), status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {
            400: "bad_request",
            404: "not_found",
            405: "method_not_allowed",
            401: "unauthorized",
            403: "forbidden",
        }.get(exc.status_code, "http_error")
        # FastAPI's only 400 is a body it could not parse (e.g. JSON nested past the recursion limit).
        field = "body" if exc.status_code == 400 else None
        headers = exc.headers
        if exc.status_code == 405:
            headers = {**(headers or {}), "Allow": _allowed(request)}
        return JSONResponse(_body(code, exc.detail, field), status_code=exc.status_code, headers=headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [
            {
                "field": ".".join(str(p) for p in e["loc"] if p not in ("body", "query", "path")) or "body",
                "message": e["msg"],
            }
            for e in exc.errors()
        ]
        field = errors[0]["field"] if errors else None
        return JSONResponse(_body("invalid_request", errors, field), status_code=422)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return JSONResponse(_body("internal_error", type(exc).__name__), status_code=500)
