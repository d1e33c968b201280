"""The endpoint registry: what an endpoint is (its model, limits, breaker, fallback, a rollout's route), and
its configuration as append-only events in the store (`endpoint_events`), rebuilt from them at start-up.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import orjson

from agent.schemas import EndpointConfig, EndpointInfo, ModelVersion
from agent.serving.breaker import CircuitBreaker
from agent.serving.pool import ModelLoadError
from agent.serving.stats import ShadowStats, ShadowWindow, VersionWindow
from agent.store.events import record_event

if TYPE_CHECKING:
    from agent.serving.batcher import MicroBatcher
    from agent.serving.encode import Encoder


class RegistryView(Protocol):
    def resolve(self, name: str, version: int | None = None, alias: str | None = None) -> ModelVersion: ...
    def artifact_path(self, name: str, version: int) -> Path: ...


@dataclass
class Answer:
    status: int
    body: bytes
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)


@dataclass
class Route:
    """A rollout's traffic split on one endpoint (agent/rollouts sets it; docs/rollouts.md).

    `weight` percent of requests go to the candidate (by a hash of the `sticky_header` value when given, so
    a caller keeps its version; random otherwise), `shadow` share of the rest is mirrored to it.
    """

    rollout_id: str
    candidate: ModelVersion
    weight: float = 0.0
    shadow: float = 0.0
    sticky_header: str | None = None
    encoder: Encoder | None = None  # the candidate's, when its signature differs from stable's

    @property
    def key(self) -> tuple[str, int]:
        return (self.candidate.name, self.candidate.version)


@dataclass
class RouteMetrics:
    stable: VersionWindow
    candidate: VersionWindow | None
    shadow: ShadowWindow


@dataclass
class Endpoint:
    name: str
    config: EndpointConfig
    updated_at: float
    updated_by: str
    version: ModelVersion | None = None
    resolve_error: str | None = None
    encoder: Encoder | None = None
    breaker: CircuitBreaker = field(init=False)
    batcher: MicroBatcher | None = None
    in_flight_rows: int = 0
    fallback_mode: bool = False
    fallback_reason: str = ""
    fallback_body: bytes | None = None  # pre-serialised single fallback prediction
    route: Route | None = None  # a rollout's candidate and split
    # (time, feature) of requests refused for a feature's value: the monitor's per-window type errors
    rejections: deque[tuple[float, str]] = field(default_factory=lambda: deque(maxlen=10_000))
    # Mirrored requests waiting for the candidate (see ServingService._queue_shadow).
    shadow_queue: list[tuple] = field(default_factory=list)
    shadow_queued_rows: int = 0
    shadow_flush_armed: bool = False
    shadow_skipped: int = 0
    shadow_stats: ShadowStats = field(default_factory=lambda: ShadowStats())

    def __post_init__(self) -> None:
        self.breaker = CircuitBreaker(self.config.breaker)
        if self.config.fallback is not None:
            self.fallback_body = orjson.dumps(self.config.fallback)

    @property
    def key(self) -> tuple[str, int] | None:
        return (self.version.name, self.version.version) if self.version else None

    def info(self, loaded: bool) -> EndpointInfo:
        return EndpointInfo(
            name=self.name,
            config=self.config,
            model=self.config.model,
            version=self.version.version if self.version else None,
            resolve_error=self.resolve_error,
            fallback_mode=self.fallback_mode,
            fallback_reason=self.fallback_reason,
            breaker_state=self.breaker.state,  # type: ignore[arg-type]
            breaker_since=self.breaker.since,
            breaker_reason=self.breaker.last_reason,
            loaded=loaded,
            updated_at=self.updated_at,
            updated_by=self.updated_by,
        )


class EndpointError(Exception):
    def __init__(self, status: int, error: str, detail: str, field: str | None = None) -> None:
        super().__init__(detail)
        self.status, self.error, self.detail, self.field = status, error, detail, field


log = logging.getLogger("watchkeeper.serving")


class EndpointTable:
    """Configure endpoints; mixed into ServingService (agent/serving/service.py), whose state it uses."""

    def restore(self, con: Any) -> None:
        """Rebuild endpoints from their events (start-up). Unresolvable models are kept, with the reason."""
        cur = con.cursor()
        try:
            rows = cur.execute(
                "SELECT seq, ts, endpoint, kind, body, principal FROM endpoint_events ORDER BY seq"
            ).fetchall()
        finally:
            cur.close()
        for seq, ts, name, kind, body, principal in rows:
            self._seq = max(self._seq, seq)
            data = orjson.loads(body)
            if kind == "config":
                ep = Endpoint(name, EndpointConfig.model_validate(data), ts, principal)
                old = self.endpoints.get(name)
                if old is not None:
                    ep.fallback_mode, ep.fallback_reason = old.fallback_mode, old.fallback_reason
                self._resolve(ep)
                self._watch_breaker(ep)
                self.endpoints[name] = ep
            elif kind == "delete":
                self.endpoints.pop(name, None)
            elif kind == "fallback" and name in self.endpoints:
                ep = self.endpoints[name]
                ep.fallback_mode, ep.fallback_reason = bool(data["enabled"]), data.get("reason", "")

    def _watch_breaker(self, ep: Endpoint) -> None:
        """Record the endpoint's breaker transitions as agent events (the incident timeline shows them)."""
        writer, name = self.writer, ep.name

        def changed(state: str, reason: str) -> None:
            word = {"open": "opened", "half_open": "half-open", "closed": "closed"}.get(state, state)
            record_event(writer, f"breaker.{state}", f"breaker {word}: {reason}", name, {"reason": reason})

        ep.breaker.on_change = changed

    def _resolve(self, ep: Endpoint) -> None:
        try:
            mv = self.registry.resolve(ep.config.model, ep.config.version, ep.config.alias)
        except Exception as e:  # unknown model/alias: the endpoint exists but answers 503/fallback
            ep.version, ep.encoder, ep.resolve_error = None, None, str(e)
            return
        from agent.serving.encode import Encoder  # numpy: only once a model is being served

        ep.version, ep.resolve_error = mv, None
        ep.encoder = Encoder(mv.signature, ep.config.missing_policy)
        ep.batcher = None  # rebuilt for the new runtime on first use

    def _event(self, name: str, kind: str, body: dict, principal: str) -> float:
        ts = time.time()
        self._seq += 1
        seq = self._seq
        payload = orjson.dumps(body).decode()
        self.writer.call(
            lambda con: con.execute(
                "INSERT INTO endpoint_events VALUES (?, ?, ?, ?, ?, ?)", [seq, ts, name, kind, payload, principal]
            )
        )
        return ts

    def put(self, name: str, cfg: EndpointConfig, principal: str) -> Endpoint:
        """Create or replace an endpoint (durable first). Raises EndpointError for a model that doesn't resolve."""
        if (cfg.version is None) == (cfg.alias is None):
            raise EndpointError(422, "invalid_request", "give exactly one of version and alias", "version")
        ep = Endpoint(name, cfg, time.time(), principal)
        self._resolve(ep)
        if ep.version is None:
            raise EndpointError(404, "not_found", ep.resolve_error or "model not found", "model")
        old = self.endpoints.get(name)
        if old is not None:
            ep.fallback_mode, ep.fallback_reason = old.fallback_mode, old.fallback_reason
        ep.updated_at = self._event(name, "config", cfg.model_dump(), principal)
        self._watch_breaker(ep)
        self.endpoints[name] = ep
        return ep

    def delete(self, name: str, principal: str) -> None:
        if name not in self.endpoints:
            raise EndpointError(404, "not_found", f"no endpoint {name!r}", "name")
        self._event(name, "delete", {}, principal)
        del self.endpoints[name]

    def set_fallback(self, name: str, enabled: bool, reason: str, principal: str) -> Endpoint:
        ep = self.endpoints.get(name)
        if ep is None:
            raise EndpointError(404, "not_found", f"no endpoint {name!r}", "name")
        if enabled and ep.config.fallback is None:
            raise EndpointError(409, "conflict", "this endpoint has no fallback prediction configured", "enabled")
        self._event(name, "fallback", {"enabled": enabled, "reason": reason}, principal)
        ep.fallback_mode, ep.fallback_reason = enabled, reason if enabled else ""
        return ep

    def reresolve_alias(self, model: str) -> None:
        """An alias of `model` moved: endpoints following it switch once the new version is loaded."""
        for ep in list(self.endpoints.values()):
            if ep.config.model == model and ep.config.alias is not None:
                candidate = Endpoint(ep.name, ep.config, ep.updated_at, ep.updated_by)
                self._resolve(candidate)
                if candidate.version is None or candidate.key == ep.key:
                    continue
                if self._loop is not None:
                    asyncio.run_coroutine_threadsafe(self._swap_when_loaded(ep, candidate), self._loop)

    async def _swap_when_loaded(self, ep: Endpoint, candidate: Endpoint) -> None:
        # Never route a request to a version that is not loaded: load first, then swap.
        try:
            await self._load(candidate)
        except ModelLoadError as e:
            log.error("endpoint %s stays on %s: %s", ep.name, ep.key, e)
            return
        ep.version, ep.encoder, ep.batcher = candidate.version, candidate.encoder, None
