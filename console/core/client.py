"""Talking to one agent: `AgentClient` and the `httpx` client it talks through.

This module, `console.core.errors` and `console.core.poller` are the console's data layer. They must
not import Textual (a test enforces it) so the headless `watchkeeper status` and any future tool can
use them, and they import nothing from `agent/` except the wire contract in `agent.schemas`.
Feature clients (`console.monitoring.client`, `console.rollouts.client`) subclass `AgentClient`.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import ssl
import time
from collections.abc import Callable
from email.utils import parsedate_to_datetime
from typing import Any, TypeVar
from urllib.parse import quote, urlsplit

import httpx
from pydantic import TypeAdapter, ValidationError

from agent.schemas import (
    API_PREFIX,
    AgentAlert,
    AgentSummary,
    AuditEntry,
    AuditHead,
    AuditVerify,
    EndpointInfo,
    FallbackToggle,
    Health,
    HostInfo,
    ModelVersion,
    Principal,
    SeriesResponse,
    ServingStatus,
    Snapshot,
)
from console import __version__
from console.core.config import AgentSpec
from console.core.errors import AgentError, ErrorKind, classify_response, classify_transport_error
from console.core.fastget import Answer, HttpProtocolError, KeepAliveGet

T = TypeVar("T")
# The HTTP Date header has 1 s resolution; only offsets clearly beyond that are clock skew.
MIN_CLOCK_OFFSET_S = 2.0

_SNAPSHOT = TypeAdapter(Snapshot)
_SUMMARY = TypeAdapter(AgentSummary)
_HOST = TypeAdapter(HostInfo)
_SERIES = TypeAdapter(SeriesResponse)
_HEALTH = TypeAdapter(Health)
_PRINCIPAL = TypeAdapter(Principal)
_ALERTS = TypeAdapter(list[AgentAlert])
_AUDIT = TypeAdapter(list[AuditEntry])
_AUDIT_HEAD = TypeAdapter(AuditHead)
_AUDIT_VERIFY = TypeAdapter(AuditVerify)
_SERVING = TypeAdapter(ServingStatus)
_ENDPOINT = TypeAdapter(EndpointInfo)
_ENDPOINTS = TypeAdapter(list[EndpointInfo])
_MODEL_VERSION = TypeAdapter(ModelVersion)
_SSL_CONTEXTS: dict[bool | str, ssl.SSLContext] = {}
# httpx carries what the plain GET connection (console/core/fastget.py) does not: other methods, and
# GETs asked beside the summary. Kept a few seconds only, so a fleet at rest holds about one socket
# per agent (a fleet of 1,000 agents must fit modest open-files limits).
AGENT_LIMITS = httpx.Limits(max_connections=4, max_keepalive_connections=1, keepalive_expiry=5.0)


def _shared_ssl_context(verify: bool | str) -> ssl.SSLContext:
    # Building a context reads the CA bundle from disk (tens of ms); a fleet of 100 agents needs
    # one per distinct `verify` setting, not one per agent.
    _cache = _SSL_CONTEXTS
    if verify not in _cache:
        if verify is True:
            _cache[verify] = ssl.create_default_context()
        elif verify is False:
            ctx = ssl.create_default_context()
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
            _cache[verify] = ctx
        else:
            _cache[verify] = ssl.create_default_context(cafile=str(verify))
    return _cache[verify]


def ssl_context_for(spec: AgentSpec) -> ssl.SSLContext:
    """The TLS context to hand httpx for `spec`: shared by every agent with the same `verify`.

    httpx builds a fresh context (CA bundle read, ~34 ms and ~0.9 MiB) for every client given
    `verify=True`, even one that only ever speaks `http://` or `unix://`; a plain-HTTP agent gets the
    one shared default context instead, which it never uses."""
    return _shared_ssl_context(spec.verify if spec.url.startswith("https://") else True)


def http_client(
    spec: AgentSpec,
    *,
    timeout_s: float | None = None,
    limits: httpx.Limits | None = None,
    transport: httpx.AsyncBaseTransport | None = None,
) -> httpx.AsyncClient:
    """An `httpx.AsyncClient` for one agent: base URL (or Unix socket), token, TLS, no proxies."""
    headers = {"User-Agent": f"watchkeeper-console/{__version__}", "Accept": "application/json"}
    if spec.token:
        headers["Authorization"] = f"Bearer {spec.token}"
    base_url = spec.url
    if spec.socket_path is not None:
        transport = transport or httpx.AsyncHTTPTransport(
            uds=spec.socket_path, limits=limits or AGENT_LIMITS, verify=ssl_context_for(spec)
        )
        base_url = "http://agent"
    return httpx.AsyncClient(
        base_url=base_url,
        headers=headers,
        timeout=httpx.Timeout(spec.timeout_s if timeout_s is None else timeout_s),
        transport=transport,
        limits=limits or AGENT_LIMITS,
        verify=ssl_context_for(spec),
        follow_redirects=False,
        # Agents live on internal networks: an HTTP(S)_PROXY meant for the internet must not
        # swallow requests to 10.x or 127.0.0.1.
        trust_env=False,
    )


@functools.lru_cache(maxsize=64)
def _date_ts(date: str) -> float | None:
    # A fleet answering within the same second sends the same Date: parsed once, not per agent.
    try:
        return parsedate_to_datetime(date).timestamp()
    except (TypeError, ValueError):
        return None


def _as_response(answer: Answer) -> httpx.Response:
    # What callers of `request` read (status, headers, content): ~10 µs to build.
    return httpx.Response(
        answer.status,
        headers=answer.headers,
        content=answer.body,
        extensions={"reason_phrase": answer.reason.encode("latin-1")},  # the agent's own words, as httpx keeps them
    )


def keepalive_get(spec: AgentSpec) -> KeepAliveGet:
    """The plain keep-alive GET connection for `spec` (same headers, TLS context and socket as httpx's)."""
    headers = {"User-Agent": f"watchkeeper-console/{__version__}", "Accept": "application/json"}
    if spec.token:
        headers["Authorization"] = f"Bearer {spec.token}"
    if spec.socket_path is not None:
        return KeepAliveGet("agent", 80, uds=spec.socket_path, headers=headers)
    parts = urlsplit(spec.url)
    https = parts.scheme == "https"
    return KeepAliveGet(
        parts.hostname or "",
        parts.port or (443 if https else 80),
        ssl_context=ssl_context_for(spec) if https else None,
        headers=headers,
    )


class AgentClient:
    """An async HTTP client for one agent (http, https or `unix://` socket).

    GETs without a body go over one plain keep-alive connection (`console.core.fastget`, a fraction
    of httpx's CPU per request, which is what a 1,000-agent poll is made of); everything else (other
    methods, a GET while that connection is busy, every request of a client given its own httpx
    `transport`) goes through httpx."""

    def __init__(self, spec: AgentSpec, *, transport: httpx.AsyncBaseTransport | None = None) -> None:
        self.spec = spec
        # Offset of the agent's clock from ours (agent - console), from the Date header.
        self.clock_offset_s = 0.0
        # Shared by a poller's clients: bounds the requests in flight across the fleet. A request's
        # timeout starts once it holds a slot, so it measures the agent, not the console's backlog.
        self.limiter: asyncio.Semaphore | None = None
        self._http = http_client(spec, transport=transport)
        self._get = keepalive_get(spec) if transport is None else None
        # Held while a GET is on that connection (HTTP/1.1 answers in order).
        self._get_lock = asyncio.Lock()

    async def aclose(self) -> None:
        """Close the connections."""
        if self._get is not None:
            await self._get.aclose()
        await self._http.aclose()

    async def request(
        self,
        method: str,
        path: str,
        params: dict[str, Any] | None = None,
        body: bytes | None = None,
        *,
        files: dict[str, Any] | None = None,
        timeout_s: float | None = None,
        refusal: Callable[[httpx.Response], AgentError] | None = None,
        headers: dict[str, str] | None = None,
    ) -> httpx.Response:
        """One request bounded as a whole (`timeout_s`, default the agent's); a non-2xx answer raises
        `refusal(response)`, by default `classify_response`'s AgentError (a 304 answering an
        If-None-Match in `headers` is returned, not raised)."""
        timeout_s = self.spec.timeout_s if timeout_s is None else timeout_s
        conditional = bool(headers and "If-None-Match" in headers)
        # The plain connection serves one GET at a time; another asked meanwhile (a poll asking the
        # host or serving status beside the summary) goes through httpx as before, concurrently: a
        # hanging agent still costs one timeout, not one per request.
        if method == "GET" and body is None and files is None and self._plain_free():
            response = _as_response(await self._plain_get(path, params, headers, timeout_s))
        else:
            response = await self._httpx_request(method, path, params, body, files, headers, timeout_s)
        if not response.is_success and not (conditional and response.status_code == 304):
            if refusal is not None:
                raise refusal(response)
            raise classify_response(response, has_token=bool(self.spec.token))
        # Only from answers of the agent itself: an error may come from a proxy with its own clock.
        self._note_date(response.headers.get("date"))
        return response

    def _plain_free(self) -> bool:
        return self._get is not None and not self._get_lock.locked()

    async def _plain_get(
        self, path: str, params: dict[str, Any] | None, headers: dict[str, str] | None, timeout_s: float
    ) -> Answer:
        assert self._get is not None
        target = f"{path}?{httpx.QueryParams(params)}" if params else path  # encoded as httpx would
        try:
            async with self._get_lock, self.limiter or contextlib.nullcontext():
                async with asyncio.timeout(timeout_s):
                    return await self._get.get(target, headers)
        except TimeoutError:
            raise AgentError(ErrorKind.TIMEOUT, f"timeout after {timeout_s:g}s") from None
        except (OSError, EOFError, HttpProtocolError, asyncio.LimitOverrunError) as exc:
            raise classify_transport_error(exc, timeout_s=timeout_s) from exc

    async def _httpx_request(
        self,
        method: str,
        path: str,
        params: dict[str, Any] | None,
        body: bytes | None,
        files: dict[str, Any] | None,
        headers: dict[str, str] | None,
        timeout_s: float,
    ) -> httpx.Response:
        if body is not None:
            headers = {**(headers or {}), "Content-Type": "application/json"}
        try:
            async with self.limiter or contextlib.nullcontext():
                # httpx's timeout is per phase (connect, each read...); an agent trickling bytes could
                # exceed it many times over. This bounds the whole request, from its send.
                async with asyncio.timeout(timeout_s):
                    response = await self._http.request(
                        method, path, params=params, content=body, files=files, headers=headers
                    )
        except TimeoutError:
            raise AgentError(ErrorKind.TIMEOUT, f"timeout after {timeout_s:g}s") from None
        except httpx.HTTPError as exc:
            raise classify_transport_error(exc, timeout_s=timeout_s) from exc
        return response

    async def fetch(self, path: str, adapter: TypeAdapter[T], params: dict[str, Any] | None = None) -> T:
        """`GET path` parsed with `adapter` (feature clients build their routes on this)."""
        return self.parse(path, adapter, await self.request("GET", path, params))

    async def _post(self, path: str, adapter: TypeAdapter[T], body: bytes) -> T:
        return self.parse(path, adapter, await self.request("POST", path, body=body))

    @staticmethod
    def parse(path: str, adapter: TypeAdapter[T], response: httpx.Response) -> T:
        """`response`'s body as `adapter`'s type; an answer that does not fit is a PROTOCOL AgentError."""
        return AgentClient.parse_bytes(path, adapter, response.content)

    @staticmethod
    def parse_bytes(path: str, adapter: TypeAdapter[T], body: bytes) -> T:
        """`body` (the answer to `path`) as `adapter`'s type, or a PROTOCOL AgentError."""
        try:
            return adapter.validate_json(body)
        except ValidationError as exc:
            raise AgentError(
                ErrorKind.PROTOCOL, f"unexpected response from {path} ({exc.error_count()} errors)"
            ) from exc

    def _note_date(self, date: str | None) -> None:
        server = _date_ts(date) if date else None
        if server is None:
            return
        # The header is truncated to whole seconds, so add half a second to centre the estimate.
        offset = server + 0.5 - time.time()
        self.clock_offset_s = offset if abs(offset) >= MIN_CLOCK_OFFSET_S else 0.0

    async def health(self) -> Health:
        """`GET /healthz`."""
        return await self.fetch("/healthz", _HEALTH)

    async def ready(self) -> Health:
        """`GET /readyz` (raises `AgentError` NOT_READY while the agent starts)."""
        return await self.fetch("/readyz", _HEALTH)

    async def snapshot(self) -> Snapshot:
        """`GET /api/v1/snapshot`: the newest telemetry sample."""
        return await self.fetch(f"{API_PREFIX}/snapshot", _SNAPSHOT)

    async def summary(self, etag: str | None = None) -> tuple[AgentSummary | None, str | None]:
        """`GET /api/v1/summary` (the fleet screen's one request): (summary, its ETag); with `etag`, the
        answer is (None, etag) when nothing changed since (304)."""
        path = f"{API_PREFIX}/summary"
        headers = {"If-None-Match": etag} if etag else None
        if self._plain_free():
            # The poll's one request per agent: read straight from the plain answer (an httpx.Response
            # built per poll was ~10 % of the poll's CPU at 1,000 agents); a refusal goes the usual way.
            answer = await self._plain_get(path, None, headers, self.spec.timeout_s)
            if answer.status not in (200, 304):
                raise classify_response(_as_response(answer), has_token=bool(self.spec.token))
            self._note_date(answer.headers.get("date"))
            tag = answer.headers.get("etag")
            if answer.status == 304:
                return None, tag or etag
            return self.parse_bytes(path, _SUMMARY, answer.body), tag
        response = await self.request("GET", path, headers=headers)
        tag = response.headers.get("etag")
        if response.status_code == 304:
            return None, tag or etag
        return self.parse(path, _SUMMARY, response), tag

    async def host_info(self) -> HostInfo:
        """`GET /api/v1/host`: static-ish facts about the host and agent."""
        return await self.fetch(f"{API_PREFIX}/host", _HOST)

    async def series(self, metric: str, start: float, end: float, step_s: float) -> SeriesResponse:
        """`GET /api/v1/series` for one metric over [start, end] (unix seconds)."""
        params = {"metric": metric, "start": f"{start:.3f}", "end": f"{end:.3f}", "step": f"{step_s:g}"}
        return await self.fetch(f"{API_PREFIX}/series", _SERIES, params)

    async def alerts(self) -> list[AgentAlert]:
        """`GET /api/v1/alerts`: conditions of the agent itself."""
        return await self.fetch(f"{API_PREFIX}/alerts", _ALERTS)

    async def whoami(self) -> Principal:
        """`GET /api/v1/whoami`: who the agent thinks we are."""
        return await self.fetch(f"{API_PREFIX}/whoami", _PRINCIPAL)

    async def audit(self, limit: int = 100) -> list[AuditEntry]:
        """`GET /api/v1/audit?limit=`: newest audit entries."""
        return await self.fetch(f"{API_PREFIX}/audit", _AUDIT, {"limit": limit})

    async def audit_head(self) -> AuditHead:
        """`GET /api/v1/audit/head`: the newest audit entry (404 while the log is empty)."""
        return await self.fetch(f"{API_PREFIX}/audit/head", _AUDIT_HEAD)

    async def audit_verify(self, since: tuple[int, str] | None = None) -> AuditVerify:
        """`GET /api/v1/audit/verify`, with `since` (seq, hash): whether the chain still holds that entry."""
        params = {"since_seq": since[0], "since_hash": since[1]} if since else None
        return await self.fetch(f"{API_PREFIX}/audit/verify", _AUDIT_VERIFY, params)

    async def serving(self) -> ServingStatus | None:
        """`GET /api/v1/serving`; None when the agent serves nothing (older agent: 404; serving off: 503)."""
        try:
            return await self.fetch(f"{API_PREFIX}/serving", _SERVING)
        except AgentError as exc:
            if exc.status_code == 404 or (exc.status_code == 503 and exc.error_code == "serving_unavailable"):
                return None
            raise

    async def endpoints(self) -> list[EndpointInfo]:
        """`GET /api/v1/endpoints`."""
        return await self.fetch(f"{API_PREFIX}/endpoints", _ENDPOINTS)

    async def endpoint(self, name: str) -> EndpointInfo:
        """`GET /api/v1/endpoints/{name}`."""
        return await self.fetch(f"{API_PREFIX}/endpoints/{quote(name, safe='')}", _ENDPOINT)

    async def set_fallback(self, name: str, enabled: bool, reason: str) -> EndpointInfo:
        """`POST /api/v1/endpoints/{name}/fallback` (operator; the agent audits who, when, why)."""
        body = FallbackToggle(enabled=enabled, reason=reason).model_dump_json().encode()
        return await self._post(f"{API_PREFIX}/endpoints/{quote(name, safe='')}/fallback", _ENDPOINT, body)

    async def model_version(self, name: str, version: int) -> ModelVersion:
        """`GET /api/v1/models/{name}/versions/{version}` (its signature describes valid payloads)."""
        return await self.fetch(f"{API_PREFIX}/models/{quote(name, safe='')}/versions/{int(version)}", _MODEL_VERSION)

    async def metrics_text(self) -> str:
        """`GET /metrics`: the Prometheus text exposition."""
        return (await self.request("GET", "/metrics")).text
