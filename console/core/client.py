"""Talking to agents: one `AgentClient` per agent and a `FleetPoller` that polls them all.

This module is the console's data layer. It must not import Textual (a test enforces it) so the
headless `watchkeeper status` and any future tool can use it, and it imports nothing from `agent/`
except the wire contract in `agent.api.schemas`.

Failure model: every request is bounded by the agent's own timeout (the whole request, not each
phase of it), agents are polled concurrently, and an agent that keeps failing is retried with
exponential backoff, so a slow or dead agent never delays the others.
"""

from __future__ import annotations

import asyncio
import errno
import ssl
import statistics
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from enum import StrEnum
from typing import TYPE_CHECKING, Any, Protocol, TypeVar
from urllib.parse import quote

import httpx
from pydantic import TypeAdapter, ValidationError

from agent.api.schemas import (
    API_PREFIX,
    AgentAlert,
    AuditEntry,
    AuditHead,
    AuditVerify,
    EndpointInfo,
    ErrorBody,
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

if TYPE_CHECKING:
    from console.core.audit_heads import AuditAnchor, HeadStore
    from console.monitoring.client import AlertFeed

T = TypeVar("T")
C = TypeVar("C", bound="AgentClient")

# Used until the agent's HostInfo (which carries the real interval) has been fetched.
DEFAULT_SAMPLE_INTERVAL_S = 5.0
# "stale": the agent answers but its newest sample is older than this many sample intervals.
STALE_INTERVALS = 3.0
# The HTTP Date header has 1 s resolution; only offsets clearly beyond that are clock skew.
MIN_CLOCK_OFFSET_S = 2.0

_SNAPSHOT = TypeAdapter(Snapshot)
_HOST = TypeAdapter(HostInfo)
_SERIES = TypeAdapter(SeriesResponse)
_HEALTH = TypeAdapter(Health)
_PRINCIPAL = TypeAdapter(Principal)
_ALERTS = TypeAdapter(list[AgentAlert])
_AUDIT = TypeAdapter(list[AuditEntry])
_AUDIT_HEAD = TypeAdapter(AuditHead)
_AUDIT_VERIFY = TypeAdapter(AuditVerify)
_ERROR = TypeAdapter(ErrorBody)
_SERVING = TypeAdapter(ServingStatus)
_ENDPOINT = TypeAdapter(EndpointInfo)
_ENDPOINTS = TypeAdapter(list[EndpointInfo])
_MODEL_VERSION = TypeAdapter(ModelVersion)


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


_SSL_CONTEXTS: dict[bool | str, ssl.SSLContext] = {}


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


def _causes(exc: BaseException) -> Iterator[BaseException]:
    """`exc` and its causes/contexts (httpx wraps httpcore wraps anyio wraps the OSError)."""
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        yield cur
        seen.add(id(cur))
        cur = cur.__cause__ or cur.__context__


def classify_transport_error(exc: httpx.HTTPError, *, timeout_s: float) -> AgentError:
    """Map an httpx transport failure to an `AgentError` with a short reason."""
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
        transport = transport or httpx.AsyncHTTPTransport(uds=spec.socket_path, limits=limits or httpx.Limits())
        base_url = "http://agent"
    return httpx.AsyncClient(
        base_url=base_url,
        headers=headers,
        timeout=httpx.Timeout(spec.timeout_s if timeout_s is None else timeout_s),
        transport=transport,
        limits=limits or httpx.Limits(),
        verify=_shared_ssl_context(spec.verify) if spec.url.startswith("https://") else True,
        follow_redirects=False,
        # Agents live on internal networks: an HTTP(S)_PROXY meant for the internet must not
        # swallow requests to 10.x or 127.0.0.1.
        trust_env=False,
    )


class AgentClient:
    """An async HTTP client for one agent (http, https or `unix://` socket)."""

    def __init__(self, spec: AgentSpec, *, transport: httpx.AsyncBaseTransport | None = None) -> None:
        self.spec = spec
        # Offset of the agent's clock from ours (agent - console), from the Date header.
        self.clock_offset_s = 0.0
        self._http = http_client(spec, transport=transport)

    async def aclose(self) -> None:
        """Close the connection pool."""
        await self._http.aclose()

    async def _request(
        self,
        method: str,
        path: str,
        params: dict[str, Any] | None = None,
        body: bytes | None = None,
        *,
        files: dict[str, Any] | None = None,
        timeout_s: float | None = None,
        refusal: Callable[[httpx.Response], AgentError] | None = None,
    ) -> httpx.Response:
        """One request bounded as a whole (`timeout_s`, default the agent's); a non-2xx answer raises
        `refusal(response)`, by default `classify_response`'s AgentError."""
        timeout_s = self.spec.timeout_s if timeout_s is None else timeout_s
        headers = {"Content-Type": "application/json"} if body is not None else None
        try:
            # httpx's timeout is per phase (connect, each read...); an agent trickling bytes could
            # exceed it many times over. This bounds the whole request.
            async with asyncio.timeout(timeout_s):
                response = await self._http.request(
                    method, path, params=params, content=body, files=files, headers=headers
                )
        except TimeoutError:
            raise AgentError(ErrorKind.TIMEOUT, f"timeout after {timeout_s:g}s") from None
        except httpx.HTTPError as exc:
            raise classify_transport_error(exc, timeout_s=timeout_s) from exc
        if not response.is_success:
            if refusal is not None:
                raise refusal(response)
            raise classify_response(response, has_token=bool(self.spec.token))
        # Only from answers of the agent itself: an error may come from a proxy with its own clock.
        self._note_date(response)
        return response

    async def _get(self, path: str, adapter: TypeAdapter[T], params: dict[str, Any] | None = None) -> T:
        return self._parse(path, adapter, await self._request("GET", path, params))

    async def _post(self, path: str, adapter: TypeAdapter[T], body: bytes) -> T:
        return self._parse(path, adapter, await self._request("POST", path, body=body))

    @staticmethod
    def _parse(path: str, adapter: TypeAdapter[T], response: httpx.Response) -> T:
        try:
            return adapter.validate_json(response.content)
        except ValidationError as exc:
            raise AgentError(
                ErrorKind.PROTOCOL, f"unexpected response from {path} ({exc.error_count()} errors)"
            ) from exc

    def _note_date(self, response: httpx.Response) -> None:
        date = response.headers.get("date")
        if not date:
            return
        try:
            server = parsedate_to_datetime(date).timestamp()
        except (TypeError, ValueError):
            return
        # The header is truncated to whole seconds, so add half a second to centre the estimate.
        offset = server + 0.5 - time.time()
        self.clock_offset_s = offset if abs(offset) >= MIN_CLOCK_OFFSET_S else 0.0

    async def health(self) -> Health:
        """`GET /healthz`."""
        return await self._get("/healthz", _HEALTH)

    async def ready(self) -> Health:
        """`GET /readyz` (raises `AgentError` NOT_READY while the agent starts)."""
        return await self._get("/readyz", _HEALTH)

    async def snapshot(self) -> Snapshot:
        """`GET /api/v1/snapshot`: the newest telemetry sample."""
        return await self._get(f"{API_PREFIX}/snapshot", _SNAPSHOT)

    async def host_info(self) -> HostInfo:
        """`GET /api/v1/host`: static-ish facts about the host and agent."""
        return await self._get(f"{API_PREFIX}/host", _HOST)

    async def series(self, metric: str, start: float, end: float, step_s: float) -> SeriesResponse:
        """`GET /api/v1/series` for one metric over [start, end] (unix seconds)."""
        params = {"metric": metric, "start": f"{start:.3f}", "end": f"{end:.3f}", "step": f"{step_s:g}"}
        return await self._get(f"{API_PREFIX}/series", _SERIES, params)

    async def alerts(self) -> list[AgentAlert]:
        """`GET /api/v1/alerts`: conditions of the agent itself."""
        return await self._get(f"{API_PREFIX}/alerts", _ALERTS)

    async def whoami(self) -> Principal:
        """`GET /api/v1/whoami`: who the agent thinks we are."""
        return await self._get(f"{API_PREFIX}/whoami", _PRINCIPAL)

    async def audit(self, limit: int = 100) -> list[AuditEntry]:
        """`GET /api/v1/audit?limit=`: newest audit entries."""
        return await self._get(f"{API_PREFIX}/audit", _AUDIT, {"limit": limit})

    async def audit_head(self) -> AuditHead:
        """`GET /api/v1/audit/head`: the newest audit entry (404 while the log is empty)."""
        return await self._get(f"{API_PREFIX}/audit/head", _AUDIT_HEAD)

    async def audit_verify(self, since: tuple[int, str] | None = None) -> AuditVerify:
        """`GET /api/v1/audit/verify`, with `since` (seq, hash): whether the chain still holds that entry."""
        params = {"since_seq": since[0], "since_hash": since[1]} if since else None
        return await self._get(f"{API_PREFIX}/audit/verify", _AUDIT_VERIFY, params)

    async def serving(self) -> ServingStatus | None:
        """`GET /api/v1/serving`; None when the agent serves nothing (older agent: 404; serving off: 503)."""
        try:
            return await self._get(f"{API_PREFIX}/serving", _SERVING)
        except AgentError as exc:
            if exc.status_code == 404 or (exc.status_code == 503 and exc.error_code == "serving_unavailable"):
                return None
            raise

    async def endpoints(self) -> list[EndpointInfo]:
        """`GET /api/v1/endpoints`."""
        return await self._get(f"{API_PREFIX}/endpoints", _ENDPOINTS)

    async def endpoint(self, name: str) -> EndpointInfo:
        """`GET /api/v1/endpoints/{name}`."""
        return await self._get(f"{API_PREFIX}/endpoints/{quote(name, safe='')}", _ENDPOINT)

    async def set_fallback(self, name: str, enabled: bool, reason: str) -> EndpointInfo:
        """`POST /api/v1/endpoints/{name}/fallback` (operator; the agent audits who, when, why)."""
        body = FallbackToggle(enabled=enabled, reason=reason).model_dump_json().encode()
        return await self._post(f"{API_PREFIX}/endpoints/{quote(name, safe='')}/fallback", _ENDPOINT, body)

    async def model_version(self, name: str, version: int) -> ModelVersion:
        """`GET /api/v1/models/{name}/versions/{version}` (its signature describes valid payloads)."""
        return await self._get(f"{API_PREFIX}/models/{quote(name, safe='')}/versions/{int(version)}", _MODEL_VERSION)

    async def metrics_text(self) -> str:
        """`GET /metrics`: the Prometheus text exposition."""
        return (await self._request("GET", "/metrics")).text


# --------------------------------------------------------------------------- poll results


class AgentState(StrEnum):
    UP = "up"
    STALE = "stale"
    DOWN = "down"


class ServingState(StrEnum):
    """Whether we know what an agent serves (`GET /api/v1/serving`)."""

    UNKNOWN = "unknown"  # not fetched yet
    OK = "ok"
    NONE = "none"  # the agent serves nothing (older agent, or serving switched off)
    ERROR = "error"  # the last fetch failed; `serving` is the last good answer, if any


@dataclass(frozen=True)
class AgentStatus:
    """What the console knows about one agent after a poll. Times are console-clock unix seconds.

    `snapshot` is the newest sample ever received, so a down agent still shows when it was last
    seen; `state` says whether to trust it.
    """

    name: str
    url: str
    state: AgentState
    reason: str | None = None
    error_kind: ErrorKind | None = None
    display_name: str = ""
    snapshot: Snapshot | None = None
    host: HostInfo | None = None
    last_seen: float | None = None
    sample_age_s: float | None = None
    sample_interval_s: float = DEFAULT_SAMPLE_INTERVAL_S
    failures: int = 0
    next_retry_at: float | None = None
    latency_s: float | None = None
    clock_offset_s: float = 0.0
    serving: ServingStatus | None = None
    serving_state: ServingState = ServingState.UNKNOWN
    serving_error: str | None = None
    serving_at: float | None = None  # console-clock time of the last good serving answer
    # The agent's model alerts (filled by `console.monitoring_client.MonitoringPoller`; None: not asked).
    alerts: AlertFeed | None = None
    # Its audit chain against the head this console remembers (console/audit_heads.py; None: not checked).
    audit: AuditAnchor | None = None

    @property
    def label(self) -> str:
        """The name to show: the configured one, or the agent's own for bare `--agents` URLs."""
        return self.display_name or self.name


@dataclass(frozen=True)
class FleetStatus:
    """The result of one poll of the whole fleet, in fleet order."""

    polled_at: float
    duration_s: float
    agents: tuple[AgentStatus, ...]

    def get(self, name: str) -> AgentStatus | None:
        """The status of agent `name`, or None."""
        return next((a for a in self.agents if a.name == name), None)

    def count(self, state: AgentState) -> int:
        """How many agents are in `state`."""
        return sum(1 for a in self.agents if a.state is state)

    @property
    def all_up(self) -> bool:
        return all(a.state is AgentState.UP for a in self.agents)


class FleetSource(Protocol):
    """What the UI needs from the data layer (FleetPoller, or a fake in tests)."""

    @property
    def specs(self) -> Sequence[AgentSpec]: ...

    def now(self) -> float: ...

    async def poll(self) -> FleetStatus: ...

    async def series(self, name: str, metric: str, start: float, end: float, step_s: float) -> SeriesResponse: ...

    def want_serving(self, wanted: bool) -> None:
        """Fetch serving status on every poll (True: the endpoints view is open) or only rarely."""

    async def set_fallback(self, name: str, endpoint: str, enabled: bool, reason: str) -> EndpointInfo: ...

    async def aclose(self) -> None: ...


# --------------------------------------------------------------------------- the poller


@dataclass
class _Track:
    """Mutable per-agent bookkeeping between polls."""

    spec: AgentSpec
    client: AgentClient
    failures: int = 0
    next_attempt_at: float = 0.0
    error: AgentError | None = None
    snapshot: Snapshot | None = None
    host: HostInfo | None = None
    host_fetched_at: float | None = None
    last_seen: float | None = None
    latency_s: float | None = None
    latencies: list[float] = field(default_factory=list)
    serving: ServingStatus | None = None
    serving_state: ServingState = ServingState.UNKNOWN
    serving_error: str | None = None
    serving_at: float | None = None
    serving_attempt_at: float | None = None
    audit: AuditAnchor | None = None
    audit_at: float | None = None


class FleetPoller:
    """Polls every agent concurrently; one call to `poll()` is one refresh of the fleet.

    A poll takes about as long as the slowest *responsive* agent, bounded by the largest agent
    timeout: each agent's requests run concurrently with everyone else's under its own deadline.
    An agent that fails is skipped until its backoff expires (base * 2^(failures-1), capped), and
    keeps its last snapshot so the UI can say when it was last seen.

    Serving status (`/api/v1/serving`, bigger than a snapshot) is fetched alongside the snapshot
    on every poll while someone `want_serving(True)` (the endpoints view), otherwise only every
    `serving_idle_s`; an agent that serves nothing (404) is asked again only at that idle pace.
    """

    def __init__(
        self,
        specs: Iterable[AgentSpec],
        *,
        clock: Callable[[], float] = time.time,
        host_refresh_s: float = 300.0,
        backoff_base_s: float = 1.0,
        backoff_cap_s: float = 30.0,
        serving_idle_s: float = 120.0,
        client_factory: Callable[[AgentSpec], AgentClient] = AgentClient,
        audit_heads: HeadStore | None = None,
        audit_every_s: float = 60.0,
    ) -> None:
        self._specs = tuple(specs)
        # Each agent's audit chain checked against the head remembered in `audit_heads` every `audit_every_s`.
        self.audit_heads = audit_heads
        self.audit_every_s = audit_every_s
        self._clock = clock
        self.host_refresh_s = host_refresh_s
        self.serving_idle_s = serving_idle_s
        self.serving_wanted = False
        self.backoff_base_s = backoff_base_s
        self.backoff_cap_s = backoff_cap_s
        self._tracks = {s.name: _Track(spec=s, client=client_factory(s)) for s in self._specs}

    @property
    def specs(self) -> Sequence[AgentSpec]:
        return self._specs

    def now(self) -> float:
        """The poller's clock (injectable for tests)."""
        return self._clock()

    def client(self, name: str) -> AgentClient:
        """The client for agent `name` (KeyError if unknown)."""
        return self._tracks[name].client

    def client_with(self, name: str, kind: type[C], routes: str) -> C:
        """The client for agent `name` as a `kind`; an AgentError if it lacks those (`routes`) routes."""
        client = self.client(name)
        if not isinstance(client, kind):
            raise AgentError(ErrorKind.PROTOCOL, f"console error: this agent's client has no {routes} routes")
        return client

    def backoff_s(self, failures: int) -> float:
        """Delay before the next attempt after `failures` consecutive failures."""
        if failures <= 0:
            return 0.0
        return min(self.backoff_cap_s, self.backoff_base_s * 2 ** (failures - 1))

    async def poll(self) -> FleetStatus:
        """Poll every agent whose backoff has expired; return the whole fleet's status."""
        started = self._clock()
        due = [t for t in self._tracks.values() if started >= t.next_attempt_at]
        # _poll_one never raises (except cancellation), so one agent cannot abort the others.
        await asyncio.gather(*(self._poll_one(t) for t in due))
        done = self._clock()
        return FleetStatus(
            polled_at=done,
            duration_s=max(0.0, done - started),
            agents=tuple(self._status(t, done) for t in self._tracks.values()),
        )

    async def series(self, name: str, metric: str, start: float, end: float, step_s: float) -> SeriesResponse:
        """Fetch one metric's series from agent `name`."""
        return await self._tracks[name].client.series(metric, start, end, step_s)

    def want_serving(self, wanted: bool) -> None:
        """Fetch serving status on every poll while `wanted`, else every `serving_idle_s`."""
        self.serving_wanted = wanted

    async def set_fallback(self, name: str, endpoint: str, enabled: bool, reason: str) -> EndpointInfo:
        """Switch `endpoint` on agent `name` to (or back from) its fallback prediction."""
        return await self._tracks[name].client.set_fallback(endpoint, enabled, reason)

    async def aclose(self) -> None:
        """Close every agent's connection pool."""
        await asyncio.gather(*(t.client.aclose() for t in self._tracks.values()), return_exceptions=True)

    async def __aenter__(self) -> FleetPoller:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def _poll_one(self, track: _Track) -> None:
        now = self._clock()
        t0 = time.monotonic()
        need_host = track.host is None or (
            track.host_fetched_at is not None and now - track.host_fetched_at >= self.host_refresh_s
        )
        need_serving = self._serving_due(track, now)
        calls: list[Any] = [track.client.snapshot()]
        if need_host:
            calls.append(track.client.host_info())
        if need_serving:
            track.serving_attempt_at = now
            calls.append(track.client.serving())
        results = await asyncio.gather(*(capture(c) for c in calls))
        snap_result = results[0]
        host_result: Any = results[1] if need_host else None
        if need_serving:
            self._note_serving(track, results[-1])
        if isinstance(host_result, HostInfo):
            track.host = host_result
            track.host_fetched_at = now
        if isinstance(snap_result, Snapshot):
            track.snapshot = snap_result
            track.latencies = ([*track.latencies, time.monotonic() - t0])[-5:]
            track.latency_s = statistics.median(track.latencies)
            track.last_seen = self._clock()
            if track.failures:
                # It was down: it may have restarted with other GPUs, settings or a newer version.
                track.host_fetched_at = None if track.host is None else now - self.host_refresh_s
                track.serving_attempt_at = None
            track.failures = 0
            track.next_attempt_at = 0.0
            track.error = None
            await self._check_audit(track, now)
            return
        error = as_agent_error(snap_result)
        track.error = error
        if error.kind is ErrorKind.NOT_READY:
            # Alive but starting (no sample yet): keep the normal cadence, no backoff.
            track.failures = 0
            track.next_attempt_at = 0.0
            track.last_seen = self._clock()
            return
        track.failures += 1
        track.next_attempt_at = self._clock() + self.backoff_s(track.failures)

    async def _check_audit(self, track: _Track, now: float) -> None:
        if self.audit_heads is None or (track.audit_at is not None and now - track.audit_at < self.audit_every_s):
            return
        from console.core.audit_heads import check_anchor

        track.audit_at = now
        try:
            track.audit = await check_anchor(track.client, self.audit_heads, track.spec.url)
        except OSError as e:  # the state file: say so on the row, keep polling
            from console.core.audit_heads import AuditAnchor

            track.audit = AuditAnchor("unknown", f"audit head not saved: {e}")

    def _serving_due(self, track: _Track, now: float) -> bool:
        if track.serving_attempt_at is None:
            return True
        if self.serving_wanted and track.serving_state is not ServingState.NONE:
            return True
        return now - track.serving_attempt_at >= self.serving_idle_s

    def _note_serving(self, track: _Track, result: Any) -> None:
        if isinstance(result, ServingStatus):
            track.serving = result
            track.serving_state = ServingState.OK
            track.serving_error = None
            track.serving_at = self._clock()
        elif result is None:
            track.serving = None
            track.serving_state = ServingState.NONE
            track.serving_error = None
        else:
            error = as_agent_error(result)
            track.serving_state = ServingState.ERROR
            track.serving_error = error.message

    def _status(self, track: _Track, now: float) -> AgentStatus:
        spec = track.spec
        interval = track.host.sample_interval_s if track.host else DEFAULT_SAMPLE_INTERVAL_S
        offset = track.client.clock_offset_s
        age = None
        if track.snapshot is not None:
            # Compare on the agent's clock so a skewed console does not call a healthy agent stale.
            age = max(0.0, now + offset - track.snapshot.ts)
        display = ""
        if spec.name_from_url:
            if track.host is not None:
                display = track.host.agent_name
            elif track.snapshot is not None:
                display = track.snapshot.agent_name
        common: dict[str, Any] = {
            "name": spec.name,
            "url": spec.url,
            "display_name": display,
            "snapshot": track.snapshot,
            "host": track.host,
            "last_seen": track.last_seen,
            "sample_age_s": age,
            "sample_interval_s": interval,
            "failures": track.failures,
            "latency_s": track.latency_s,
            "clock_offset_s": offset,
            "serving": track.serving,
            "serving_state": track.serving_state,
            "serving_error": track.serving_error,
            "serving_at": track.serving_at,
            "audit": track.audit,
        }
        if track.error is not None:
            return AgentStatus(
                state=AgentState.DOWN,
                reason=track.error.message,
                error_kind=track.error.kind,
                next_retry_at=track.next_attempt_at if track.failures else None,
                **common,
            )
        if track.snapshot is None:  # never polled yet
            return AgentStatus(state=AgentState.DOWN, reason="not polled yet", **common)
        if age is not None and age > STALE_INTERVALS * interval:
            return AgentStatus(state=AgentState.STALE, reason=f"last sample {age:.0f}s old", **common)
        return AgentStatus(state=AgentState.UP, **common)


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
