"""Why a request to an agent failed: `AgentError` and its kinds, made from transport failures and
HTTP answers, and the helpers that turn one agent's failure into a value instead of an abort.

Part of the console's data layer (with `console.core.client` and `console.core.poller`): no Textual.
"""

from __future__ import annotations

import errno
import ssl
from collections.abc import Awaitable, Iterator
from enum import StrEnum
from typing import TypeVar

import httpx
from pydantic import TypeAdapter, ValidationError

from agent.schemas import ErrorBody

T = TypeVar("T")

_ERROR = TypeAdapter(ErrorBody)


class ErrorKind(StrEnum):
    """Why an agent could not be read, coarse enough to group and colour in the UI."""

    REFUSED = "refused"
    TIMEOUT = "timeout"
    UNREACHABLE = "unreachable"
    TLS = "tls"
    UNAUTHORIZED = "unauthorized"
    FORBIDDEN = "forbidden"
    NOT_READY = "not-ready"
    HTTP_4XX = "http-4xx"
    HTTP_5XX = "http-5xx"
    PROTOCOL = "protocol"


class AgentError(Exception):
    """A failed request to an agent; `str()` is the short "why" the UI shows."""

    def __init__(
        self, kind: ErrorKind, message: str, *, status_code: int | None = None, error_code: str | None = None
    ) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.status_code = status_code
        # The agent's machine-readable `ErrorBody.error` (e.g. "not_found", "conflict"), if it sent one.
        self.error_code = error_code


def _causes(exc: BaseException) -> Iterator[BaseException]:
    """`exc` and its causes/contexts (httpx wraps httpcore wraps anyio wraps the OSError)."""
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        yield cur
        seen.add(id(cur))
        cur = cur.__cause__ or cur.__context__


def classify_transport_error(exc: BaseException, *, timeout_s: float) -> AgentError:
    """Map a transport failure (httpx's, or the OSError / EOFError of `console.core.fastget`) to an
    `AgentError` with a short reason."""
    if isinstance(exc, httpx.TimeoutException):
        return AgentError(ErrorKind.TIMEOUT, f"timeout after {timeout_s:g}s")
    tls = next((c for c in _causes(exc) if isinstance(c, ssl.SSLError)), None)
    if tls is not None:
        return AgentError(ErrorKind.TLS, f"TLS error: {getattr(tls, 'reason', None) or tls}")
    # anyio's "All connection attempts failed" has no errno; the refused attempt under it does.
    os_error = next((c for c in _causes(exc) if isinstance(c, OSError) and c.errno is not None), None)
    if os_error is not None and os_error.errno is not None:
        if os_error.errno == errno.ECONNREFUSED:
            return AgentError(ErrorKind.REFUSED, "connection refused")
        if os_error.errno in (errno.ENOENT, errno.ENOTSOCK):
            return AgentError(ErrorKind.REFUSED, "no socket (agent not running?)")
        if os_error.errno in (errno.EACCES, errno.EPERM):
            return AgentError(ErrorKind.UNREACHABLE, "socket permission denied")
        return AgentError(ErrorKind.UNREACHABLE, os_error.strerror or str(os_error))
    if isinstance(exc, EOFError):  # asyncio.IncompleteReadError: the agent hung up mid-answer
        return AgentError(ErrorKind.UNREACHABLE, "connection closed by the agent")
    text = str(exc)
    if "refused" in text.lower():
        return AgentError(ErrorKind.REFUSED, "connection refused")
    if isinstance(exc, httpx.ConnectError):
        return AgentError(ErrorKind.UNREACHABLE, text or "cannot connect")
    return AgentError(ErrorKind.PROTOCOL, text or type(exc).__name__)


def classify_response(response: httpx.Response, *, has_token: bool) -> AgentError:
    """Map a non-2xx response (ErrorBody or not) to an `AgentError`."""
    code = response.status_code
    detail = ""
    error_code: str | None = None
    try:
        body = _ERROR.validate_json(response.content)
        detail = error_code = body.error
        if isinstance(body.detail, str) and body.detail:
            detail = f"{detail}: {body.detail}" if detail else body.detail
    except ValidationError:
        detail = response.reason_phrase or ""
    detail = " ".join(detail.split())[:120]
    if code == 401:
        message = "401 bad token" if has_token else "401 no token"
        return AgentError(ErrorKind.UNAUTHORIZED, message, status_code=code, error_code=error_code)
    if code == 403:
        message = f"403 forbidden{': ' + detail if detail else ''}"
        return AgentError(ErrorKind.FORBIDDEN, message, status_code=code, error_code=error_code)
    if code == 503:
        return AgentError(ErrorKind.NOT_READY, f"503 {detail or 'not ready'}", status_code=code, error_code=error_code)
    kind = ErrorKind.HTTP_5XX if code >= 500 else ErrorKind.HTTP_4XX
    return AgentError(kind, f"HTTP {code}{': ' + detail if detail else ''}", status_code=code, error_code=error_code)


async def capture(coro: Awaitable[T]) -> T | Exception:
    """What `coro` returns, or the exception it raised (one agent's failure must not abort a gather)."""
    try:
        return await coro
    except Exception as exc:
        return exc


def as_agent_error(result: object) -> AgentError:
    """`result` itself if it is an AgentError; any other failure (or an answer of the wrong type) is a
    console bug, reported as PROTOCOL."""
    if isinstance(result, AgentError):
        return result
    # A bug in our own code path must show up as a reason on that one agent, not kill the poll.
    return AgentError(ErrorKind.PROTOCOL, f"console error: {type(result).__name__}: {result}")


def why(exc: BaseException) -> str:
    """The short reason a failed request gives: an AgentError's message, else the exception's type and text."""
    return exc.message if isinstance(exc, AgentError) else f"{type(exc).__name__}: {exc}"
