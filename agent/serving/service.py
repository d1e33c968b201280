"""Endpoints and the predict path.

An endpoint binds a name to a model (a pinned version or an alias), with its limits, breaker,
batching and fallback. Configuration changes and operator switches are append-only events in the
store (`endpoint_events`); the current state is rebuilt from them at start-up.

The predict path, in order: parse → validate/encode against the signature → operator fallback? →
breaker → concurrency (rows in flight) → model from the pool → (batcher) → inference thread with a
timeout → answer → stats, breaker outcome and the prediction log. Every way it can fail ends in
either the endpoint's fallback prediction (200, marked) or a documented status code.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import random
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import orjson

from agent.schemas import (
    EndpointConfig,
    EndpointInfo,
    EndpointVersionStats,
    ModelVersion,
    PredictionLogRow,
    ServingStatus,
)
from agent.serving.breaker import CircuitBreaker
from agent.serving.errors import ValidationFailed
from agent.serving.overload import LoopLag
from agent.serving.pool import ModelLoadError, ModelPool
from agent.serving.predlog import PredictionLog
from agent.serving.stats import ShadowStats, ShadowWindow, VersionStats, VersionWindow, version_window
from agent.store.writer import StoreWriter

if TYPE_CHECKING:
    import numpy as np

    from agent.serving.batcher import MicroBatcher
    from agent.serving.encode import Encoded, Encoder

log = logging.getLogger("watchkeeper.serving")

# What the caller gets when there is no fallback configured, per reason.
STATUS_WITHOUT_FALLBACK = {
    "shed": 429,
    "overload": 429,
    "breaker_open": 503,
    "model_unavailable": 503,
    "operator": 503,
    "timeout": 504,
    "model_error": 502,
}


SHADOW_BATCH_S = 0.02  # mirrored requests wait at most this long to run batched on the candidate
SHADOW_MAX_QUEUED_ROWS = 8192
# Logged rows waiting for the writer (it flushes every 4,000): a bound on what a slow disk or a starved writer
# thread costs in memory. The store writer's own default (200k) let 1 MiB bodies take the agent past 512 MiB.
PREDLOG_MAX_PENDING_ROWS = 50_000


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


class ServingService:
    def __init__(self, registry: RegistryView, writer: StoreWriter, pool_budget_bytes: int) -> None:
        self.registry = registry
        self.writer = writer
        self.pool = ModelPool(pool_budget_bytes)
        self.predlog = PredictionLog(writer, max_pending_rows=PREDLOG_MAX_PENDING_ROWS)
        self.endpoints: dict[str, Endpoint] = {}
        self.stats: dict[tuple[str, int], VersionStats] = {}
        self._infer = ThreadPoolExecutor(max_workers=max(2, os.cpu_count() or 2), thread_name_prefix="infer")
        self._loop: asyncio.AbstractEventLoop | None = None
        self._seq = 0
        self.lag = LoopLag()  # the serving loop's lag: part of a request's wait the handler can't see

    # ------------------------------------------------------------------ configuration

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
                self.endpoints[name] = ep
            elif kind == "delete":
                self.endpoints.pop(name, None)
            elif kind == "fallback" and name in self.endpoints:
                ep = self.endpoints[name]
                ep.fallback_mode, ep.fallback_reason = bool(data["enabled"]), data.get("reason", "")

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

    # ------------------------------------------------------------------ lifecycle

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Bind to the serving loop and pre-warm endpoints that ask for it."""
        self._loop = loop
        self.lag.start(loop)
        for ep in self.endpoints.values():
            if ep.config.prewarm and ep.version is not None:
                loop.create_task(self._prewarm(ep))

    async def _prewarm(self, ep: Endpoint) -> None:
        try:
            await self._load(ep)
        except ModelLoadError as e:
            log.error("pre-warming endpoint %s: %s", ep.name, e)

    def prewarm_soon(self, ep: Endpoint) -> None:
        if ep.config.prewarm and self._loop is not None:
            self._loop.create_task(self._prewarm(ep))

    def close(self) -> None:
        self.pool.close()
        self._infer.shutdown(wait=False, cancel_futures=True)

    async def _load(self, ep: Endpoint):
        assert ep.version is not None
        mv = ep.version
        width = ep.encoder.width if ep.encoder else 0
        return await self.pool.get(
            (mv.name, mv.version), self.registry.artifact_path(mv.name, mv.version), mv.format, width
        )

    # ------------------------------------------------------------------ rollouts (agent/rollouts drives these)

    def set_route(self, endpoint: str, route: Route | None) -> None:
        """Split `endpoint`'s traffic with a candidate (None: all to stable). Takes effect on the next request."""
        ep = self.endpoints.get(endpoint)
        if ep is None:
            raise EndpointError(404, "not_found", f"no endpoint {endpoint!r}", "name")
        old = ep.route
        if route is not None:
            from agent.serving.encode import Encoder

            if ep.version is None or route.candidate.signature.features != ep.version.signature.features:
                route.encoder = Encoder(route.candidate.signature, ep.config.missing_policy)
            self.pool.pin(route.key)
        if old is not None and (route is None or old.key != route.key):
            self.pool.unpin(old.key)
        ep.route = route

    def pin(self, model: str, version: int, seconds: float | None = None) -> None:
        """Keep a version loaded (a promoted version's predecessor, for an instant rollback)."""
        self.pool.pin((model, version), seconds)

    def is_version_loaded(self, model: str, version: int) -> bool:
        return any(m.model == model and m.version == version for m in self.pool.loaded())

    def ensure_loaded_blocking(self, mv: ModelVersion, timeout: float = 60.0) -> None:
        """Load a version into the pool, from a thread other than the serving loop's. Raises ModelLoadError."""
        from agent.registry.signature import encoded_width

        if self.pool.peek((mv.name, mv.version)) is not None:
            return
        if self._loop is None:
            raise ModelLoadError("serving is not started")
        coro = self.pool.get(
            (mv.name, mv.version), self.registry.artifact_path(mv.name, mv.version), mv.format,
            encoded_width(mv.signature),
        )  # fmt: skip
        asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    def evaluate_blocking(self, mv: ModelVersion, records: list[dict]) -> tuple[np.ndarray, list[str | None]]:
        """Scores and labels of `mv` on `records` (a rollout gate's validation set), off the serving loop."""
        import numpy as np

        from agent.serving.encode import Encoder

        self.ensure_loaded_blocking(mv)
        loaded = self.pool.peek((mv.name, mv.version))
        if loaded is None:
            raise ModelLoadError(f"{mv.name}:{mv.version} was evicted while evaluating")
        enc = Encoder(mv.signature, "impute")
        scores: list[float] = []
        labels: list[str | None] = []
        for i in range(0, len(records), 4096):
            out = loaded.runtime.run(enc.encode_records(records[i : i + 4096]).matrix)
            sc, lab, _ = _decode(out, mv, strict=False)
            scores += sc
            labels += lab
        return np.asarray(scores, dtype=np.float64), labels

    def route_metrics(self, endpoint: str, window_s: float) -> RouteMetrics:
        """Stable beside candidate over the last `window_s` seconds (5 s granularity), and the shadow's record."""
        ep = self.endpoints.get(endpoint)
        if ep is None or ep.version is None:
            raise EndpointError(404, "not_found", f"no endpoint {endpoint!r} with a model", "name")
        stable = version_window(self.stats.get((endpoint, ep.version.version)), ep.version.version, window_s)
        cand = None
        if ep.route is not None:
            v = ep.route.candidate.version
            cand = version_window(self.stats.get((endpoint, v)), v, window_s)
        return RouteMetrics(stable, cand, ep.shadow_stats.window(window_s))

    async def _predict_candidate(
        self, ep: Endpoint, route: Route, cand: Any, enc: Encoded, request_id: str, t0: float
    ) -> Answer | None:
        """Serve a request with the candidate; None hands it back to stable (the candidate rejected or failed)."""
        mv = route.candidate
        n = len(enc.matrix)
        vs = self.version_stats(ep.name, mv.name, mv.version)
        try:
            x = enc.matrix if route.encoder is None else _encode_again(route.encoder, ep.encoder, enc)
        except ValidationFailed:
            return None
        f = ep.config.faults
        try:
            if cand.inline and (f is None or f.version != cand.version):
                out = cand.runtime.run(x)  # as for stable: no wait_for task for a call that can't be interrupted
                if (time.perf_counter() - t0) * 1000 > ep.config.timeout_ms:
                    raise TimeoutError
            else:
                out = await asyncio.wait_for(self._run_candidate(ep, cand, x), _left_s(ep, t0))
            scores, labels, preds = _decode(out, mv)
        except Exception as e:  # counted against the candidate (its guards decide); the caller gets stable
            if not isinstance(e, TimeoutError | InjectedFault):
                log.warning("endpoint %s candidate %s:%s: %r", ep.name, mv.name, mv.version, e)
            vs.record((time.perf_counter() - t0) * 1000, n, 504 if isinstance(e, TimeoutError) else 502, None, True)
            return None
        latency_ms = (time.perf_counter() - t0) * 1000
        vs.record(latency_ms, n, 200, None, False)
        vs.add_scores(scores)
        if self.predlog.sampled(ep.config.log_sample_rate):
            self.predlog.log(request_id, ep.name, mv.name, mv.version, enc.num, enc.num_width, enc.cat, enc.cat_width,
                             scores, labels, latency_ms, "ok", None)  # fmt: skip
        body_out = orjson.dumps(
            {"request_id": request_id, "endpoint": ep.name, "model": mv.name, "version": mv.version,
             "predictions": preds, "fallback": False, "fallback_reason": None, "latency_ms": latency_ms},
            option=orjson.OPT_SERIALIZE_NUMPY,
        )  # fmt: skip
        return Answer(200, body_out, [(b"x-watchkeeper-model-version", f"{mv.name}:{mv.version}".encode())])

    async def _run_candidate(self, ep: Endpoint, cand: Any, x: np.ndarray) -> np.ndarray:
        f = ep.config.faults
        if f is not None and f.version == cand.version:
            if f.delay_ms and random.random() < f.delay_rate:
                await asyncio.sleep(f.delay_ms / 1000)
            if f.error_rate and random.random() < f.error_rate:
                raise InjectedFault("injected fault")
        if cand.inline:
            return cand.runtime.run(x)
        return await asyncio.get_running_loop().run_in_executor(self._infer, cand.runtime.run, x)

    def _queue_shadow(
        self, ep: Endpoint, route: Route, enc: Encoded, scores: list, labels: list, request_id: str
    ) -> None:
        """Queue an answered request for the candidate. Mirrored calls run batched every SHADOW_BATCH_S: one
        model call and one decode for many requests keep the cost to live traffic small (bench/serving.py)."""
        if ep.shadow_queued_rows >= SHADOW_MAX_QUEUED_ROWS:
            ep.shadow_skipped += 1  # the candidate can't keep up: mirror less rather than grow memory
            return
        ep.shadow_queue.append((enc, scores, labels, request_id))
        ep.shadow_queued_rows += len(scores)
        if not ep.shadow_flush_armed:
            ep.shadow_flush_armed = True
            loop = asyncio.get_running_loop()
            loop.call_later(SHADOW_BATCH_S, lambda: loop.create_task(self._shadow_batch(ep, route)))

    async def _shadow_batch(self, ep: Endpoint, route: Route) -> None:
        """Run the queued mirrored requests through the candidate and compare; never touches an answer."""
        import numpy as np

        batch, ep.shadow_queue = ep.shadow_queue, []
        ep.shadow_queued_rows, ep.shadow_flush_armed = 0, False
        cand = self.pool.peek(route.key)
        if cand is None or not batch or ep.route is not route:
            return
        mv = route.candidate
        t0 = time.perf_counter()
        try:
            xs = [e.matrix if route.encoder is None else _encode_again(route.encoder, ep.encoder, e) for e, *_ in batch]
            out = await asyncio.wait_for(self._run_candidate(ep, cand, np.concatenate(xs)), ep.config.timeout_ms / 1000)
            c_scores, c_labels, _ = _decode(out, mv)
        except Exception:
            for _ in batch:
                ep.shadow_stats.record(0, 0, 0.0, (time.perf_counter() - t0) * 1000, True)
            return
        call_ms = (time.perf_counter() - t0) * 1000
        total = max(len(c_scores), 1)
        at = 0
        for enc, scores, labels, request_id in batch:
            n = len(scores)
            cs, cl = c_scores[at : at + n], c_labels[at : at + n]
            at += n
            dis = sum(a != b for a, b in zip(labels, cl, strict=False))
            diff = sum(abs(a - b) for a, b in zip(scores, cs, strict=False) if a is not None and b is not None)
            # Latency: the candidate's model time, attributed to each request by its rows (calls are batched).
            ms = call_ms * n / total
            ep.shadow_stats.record(n, dis, diff, ms, False, cs)
            if self.predlog.sampled(ep.config.log_sample_rate):
                self.predlog.log(request_id, ep.name, mv.name, mv.version, enc.num, enc.num_width, enc.cat,
                                 enc.cat_width, cs, cl, ms, "shadow", None)  # fmt: skip

    # ------------------------------------------------------------------ status

    def version_stats(self, ep_name: str, model: str, version: int) -> VersionStats:
        key = (ep_name, version)
        s = self.stats.get(key)
        if s is None:
            s = self.stats[key] = VersionStats(ep_name, model, version)
        return s

    def stats_list(self, endpoint: str | None = None) -> list[EndpointVersionStats]:
        out = []
        for (name, _), s in self.stats.items():
            if endpoint is not None and name != endpoint:
                continue
            ep = self.endpoints.get(name)
            b = ep.batcher if ep else None
            mean = b.batched_rows / b.batches if b and b.batches else None
            out.append(s.snapshot(mean))
        return out

    def recent_predictions(
        self, con: Any, name: str, limit: int, request_id: str | None = None
    ) -> list[PredictionLogRow]:
        """Logged rows of an endpoint, newest first, features named from each row's model signature."""
        where, params = "endpoint = ?", [name]
        if request_id is not None:
            where, params = where + " AND request_id = ?", [*params, request_id]
        cur = con.cursor()
        try:
            rows = cur.execute(
                f"""SELECT epoch(ts), request_id, endpoint, model, version, row_idx, num, cat, score, label,
                           latency_ms, status, fallback_reason
                    FROM predictions WHERE {where} ORDER BY ts DESC, row_idx LIMIT ?""",
                [*params, limit],
            ).fetchall()
        finally:
            cur.close()
        names: dict[tuple[str, int], tuple[list[str], list[str]]] = {}
        out = []
        for ts, rid, ep, model, version, idx, num, cat, score, label, lat, status, reason in rows:
            key = (model, version)
            if key not in names and version is not None:
                try:
                    feats = self.registry.resolve(model, version).signature.features
                    names[key] = ([f.name for f in feats if f.dtype != "category"],
                                  [f.name for f in feats if f.dtype == "category"])  # fmt: skip
                except Exception:
                    names[key] = ([], [])
            num_names, cat_names = names.get(key, ([], []))
            features: dict[str, float | str | None] = dict(zip(num_names, num or [], strict=False))
            features.update(zip(cat_names, cat or [], strict=False))
            out.append(PredictionLogRow(
                ts=ts, request_id=rid, endpoint=ep, model=model, version=version, row_idx=idx, features=features,
                score=score, label=label, latency_ms=lat, status=status, fallback_reason=reason,
            ))  # fmt: skip
        return out

    def is_loaded(self, ep: Endpoint) -> bool:
        return ep.key is not None and ep.key in {(m.model, m.version) for m in self.pool.loaded()}

    def status(self) -> ServingStatus:
        users: dict[tuple[str, int], list[str]] = {}
        for ep in self.endpoints.values():
            if ep.key:
                users.setdefault(ep.key, []).append(ep.name)
        return ServingStatus(
            endpoints=[ep.info(self.is_loaded(ep)) for ep in self.endpoints.values()],
            stats=self.stats_list(),
            loaded_models=[m.info(users.get((m.model, m.version), [])) for m in self.pool.loaded()],
            pool_budget_bytes=self.pool.budget_bytes,
            pool_used_bytes=self.pool.used_bytes,
            predlog_rows_written=self.predlog.rows_committed,
            predlog_rows_dropped=self.predlog.rows_dropped,
            in_flight={ep.name: ep.in_flight_rows for ep in self.endpoints.values()},
        )

    # ------------------------------------------------------------------ predict

    async def predict(
        self,
        name: str,
        body: bytes,
        request_id: str,
        headers: list[tuple[bytes, bytes]] | None = None,
        t0: float | None = None,
    ) -> Answer:
        """Serve one request. Never raises: every outcome is an Answer with a documented status.

        `headers` (the request's, lower-case names) matter only to an A/B rollout's sticky assignment.
        `t0` is when the request arrived (time.perf_counter()): its latency and its timeout count from there."""
        start = time.perf_counter()
        if t0 is None:
            t0 = start
        ep = self.endpoints.get(name)
        if ep is None:
            return _error(404, "not_found", f"no endpoint {name!r}", "endpoint")
        try:
            payload = orjson.loads(body)
        except orjson.JSONDecodeError as e:
            return self._rejected(ep, 422, "invalid_json", f"body is not valid JSON: {e}", "body")
        if ep.encoder is None or ep.version is None:
            return self._fallback(ep, request_id, _rows_in(payload), "model_unavailable", t0, None)
        try:
            enc = _encode(ep.encoder, payload, ep.config.max_rows)
        except ValidationFailed as e:
            return self._rejected(ep, 422, "invalid_request", e.errors, _first_field(e.errors))
        except _TooManyRows as e:
            return self._rejected(ep, 413, "too_many_rows", str(e), "records")
        n = len(enc.matrix)
        if ep.fallback_mode:
            return self._fallback(ep, request_id, n, "operator", t0, enc)
        if not ep.breaker.allow():
            return self._fallback(ep, request_id, n, "breaker_open", t0, enc)
        if ep.in_flight_rows + n > ep.config.max_concurrency and ep.in_flight_rows > 0:
            return self._fallback(ep, request_id, n, "shed", t0, enc)
        route = ep.route
        if route is not None and route.weight > 0 and _to_candidate(route, headers):
            cand = self.pool.peek(route.key)
            if cand is not None:  # never a version that is not loaded: until then, stable serves
                ans = await self._predict_candidate(ep, route, cand, enc, request_id, t0)
                if ans is not None:
                    return ans
        mv = ep.version
        ep.in_flight_rows += n
        try:
            loaded = self.pool.peek(ep.key) if ep.key else None
            if (
                loaded is not None
                and loaded.inline
                and not ep.config.batching.enabled
                and (ep.config.faults is None or ep.config.faults.version not in (None, mv.version if mv else None))
            ):
                # An inline call can't be interrupted anyway: skip wait_for's task and timer (~8 % of
                # the loop's CPU); a call that overran still counts as a timeout below.
                out = loaded.runtime.run(enc.matrix)
                if (time.perf_counter() - t0) * 1000 > ep.config.timeout_ms:
                    raise TimeoutError
            else:
                out = await asyncio.wait_for(self._infer_rows(ep, enc.matrix), _left_s(ep, t0))
        except TimeoutError:
            ep.breaker.record(False, (time.perf_counter() - start) * 1000)
            return self._fallback(ep, request_id, n, "timeout", t0, enc, mv)
        except ModelLoadError as e:
            log.warning("endpoint %s: %s", name, e)
            return self._fallback(ep, request_id, n, "model_unavailable", t0, enc, mv)
        except Exception as e:  # the model raised: breaker counts it, caller gets the fallback
            log.warning("endpoint %s: model error: %r", name, e)
            ep.breaker.record(False, (time.perf_counter() - start) * 1000)
            return self._fallback(ep, request_id, n, "model_error", t0, enc, mv)
        finally:
            ep.in_flight_rows -= n
        now = time.perf_counter()
        latency_ms = (now - t0) * 1000  # what the caller waited, queueing included
        try:
            scores, labels, preds = _decode(out, mv)
        except NonFiniteOutput:  # NaN would be served as `score: null` beside a definite label
            log.warning("endpoint %s: the model answered a non-finite score", name)
            ep.breaker.record(False, (now - start) * 1000)
            return self._fallback(ep, request_id, n, "model_error", t0, enc, mv)
        ep.breaker.record(True, (now - start) * 1000)  # the model's health: not the queue's
        vs = self.version_stats(name, mv.name, mv.version)
        vs.record(latency_ms, n, 200, None, False)
        if route is not None:
            vs.add_scores(scores)
            if route.shadow > 0 and random.random() < route.shadow and self.pool.peek(route.key) is not None:
                # After the caller's answer: the candidate sees the same rows, its result is only compared.
                self._queue_shadow(ep, route, enc, scores, labels, request_id)
        if self.predlog.sampled(ep.config.log_sample_rate):
            self.predlog.log(request_id, name, mv.name, mv.version, enc.num, enc.num_width, enc.cat, enc.cat_width,
                             scores, labels, latency_ms, "ok", None)  # fmt: skip
        body_out = orjson.dumps(
            {"request_id": request_id, "endpoint": name, "model": mv.name, "version": mv.version,
             "predictions": preds, "fallback": False, "fallback_reason": None, "latency_ms": latency_ms},
            option=orjson.OPT_SERIALIZE_NUMPY,
        )  # fmt: skip
        return Answer(200, body_out, [(b"x-watchkeeper-model-version", f"{mv.name}:{mv.version}".encode())])

    async def _infer_rows(self, ep: Endpoint, x: np.ndarray) -> np.ndarray:
        f = ep.config.faults
        if f is not None and (f.version is None or f.version == (ep.version.version if ep.version else None)):
            # drills and tests: misbehave before the model, as a sick model would
            if f.delay_ms and random.random() < f.delay_rate:
                await asyncio.sleep(f.delay_ms / 1000)
            if f.error_rate and random.random() < f.error_rate:
                raise InjectedFault("injected fault")
        loaded = self.pool.peek(ep.key) if ep.key else None  # type: ignore[arg-type]
        if loaded is None:
            loaded = await self._load(ep)
        run: Callable[[np.ndarray], np.ndarray] = loaded.runtime.run
        b = ep.config.batching
        if b.enabled:
            from agent.serving.batcher import MicroBatcher

            # Rebuilt after a model swap: a batcher is bound to one runtime.
            if ep.batcher is None or ep.batcher.owner is not loaded:
                ep.batcher = MicroBatcher(run, self._infer, b.max_rows, b.max_wait_ms, inline=loaded.inline)
                ep.batcher.owner = loaded
            return await ep.batcher.submit(x)
        if loaded.inline:
            return run(x)
        return await asyncio.get_running_loop().run_in_executor(self._infer, run, x)

    def _fallback(
        self,
        ep: Endpoint,
        request_id: str,
        n: int,
        reason: str,
        t0: float,
        enc: Encoded | None,
        mv: ModelVersion | None = None,
    ) -> Answer:
        mv = mv or ep.version
        latency_ms = (time.perf_counter() - t0) * 1000
        version = mv.version if mv else 0
        model = mv.name if mv else ep.config.model
        if ep.fallback_body is None:
            status = STATUS_WITHOUT_FALLBACK[reason]
            vs = self.version_stats(ep.name, model, version)
            vs.record(latency_ms, n, status, None, True)
            if status == 429:
                vs.shed[reason] = vs.shed.get(reason, 0) + 1
            headers = [(b"retry-after", b"1")] if status in (429, 503) else []
            detail = {
                "shed": f"over max_concurrency ({ep.config.max_concurrency} rows in flight)",
                "overload": "the agent is overloaded; retry later",
                "breaker_open": f"circuit breaker open: {ep.breaker.last_reason}",
                "model_unavailable": ep.resolve_error or "the model could not be loaded",
                "operator": f"switched to fallback by an operator: {ep.fallback_reason}",
                "timeout": f"no answer within {ep.config.timeout_ms:g} ms",
                "model_error": "the model failed on this input",
            }[reason]
            ans = _error(status, reason, detail, None)
            ans.headers.extend(headers)
            return ans
        self.version_stats(ep.name, model, version).record(latency_ms, n, 200, reason, False)
        fb = ep.config.fallback or {}
        if enc is not None and self.predlog.sampled(ep.config.log_sample_rate):
            score = fb.get("score")
            self.predlog.log(request_id, ep.name, model, mv.version if mv else None, enc.num, enc.num_width,
                             enc.cat, enc.cat_width, [score] * n, [fb.get("label")] * n, latency_ms, "fallback",
                             reason)  # fmt: skip
        preds = b"[" + b",".join([ep.fallback_body] * n) + b"]"
        body = (
            b'{"request_id":' + orjson.dumps(request_id) + b',"endpoint":' + orjson.dumps(ep.name)
            + b',"model":' + orjson.dumps(model) + b',"version":' + orjson.dumps(mv.version if mv else None)
            + b',"predictions":' + preds + b',"fallback":true,"fallback_reason":' + orjson.dumps(reason)
            + b',"latency_ms":' + orjson.dumps(latency_ms) + b"}"
        )  # fmt: skip
        return Answer(200, body, [(b"x-watchkeeper-fallback", reason.encode())])

    def overloaded(self, ep: Endpoint, request_id: str, t0: float, why: str) -> tuple[int, bytes, list]:
        """Refuse a request the agent can't start in time (agent/serving/overload.py): 429 + Retry-After,
        counted like any answer (latency from its arrival). The body was not read: its rows are unknown."""
        mv = ep.version
        s = self.version_stats(ep.name, mv.name if mv else ep.config.model, mv.version if mv else 0)
        s.record((time.perf_counter() - t0) * 1000, 0, 429, None, True)
        s.shed["overload"] = s.shed.get("overload", 0) + 1
        body = orjson.dumps({"error": "overload", "detail": f"the agent is overloaded ({why}); retry later",
                             "field": None})  # fmt: skip
        return 429, body, [(b"retry-after", b"1"), (b"x-request-id", request_id.encode())]

    def overload_fallback(self, ep: Endpoint, request_id: str, t0: float, body: bytes) -> Answer:
        """The endpoint's fallback for every row of a request shed for overload (parsed, not encoded)."""
        try:
            payload = orjson.loads(body)
        except orjson.JSONDecodeError as e:
            return self._rejected(ep, 422, "invalid_json", f"body is not valid JSON: {e}", "body")
        return self._fallback(ep, request_id, _rows_in(payload), "overload", t0, None)

    def _rejected(self, ep: Endpoint, status: int, error: str, detail: Any, field: str | None) -> Answer:
        mv = ep.version
        s = self.version_stats(ep.name, mv.name if mv else ep.config.model, mv.version if mv else 0)
        s.rejected += 1
        if isinstance(detail, list):  # validation errors: type mismatches and corrupt values per feature
            now = time.time()
            for fname in {e.get("field") for e in detail if isinstance(e, dict) and e.get("field")}:
                ep.rejections.append((now, fname))
        return _error(status, error, detail, field)

    def rejections(self, endpoint: str, start: float, end: float) -> dict[str, int]:
        """Requests refused for a bad value, per feature, in [start, end) (kept in memory, the last 10k)."""
        ep = self.endpoints.get(endpoint)
        out: dict[str, int] = {}
        for ts, fname in ep.rejections if ep is not None else ():
            if start <= ts < end:
                out[fname] = out.get(fname, 0) + 1
        return out


def _left_s(ep: Endpoint, t0: float) -> float:
    """What is left of the endpoint's timeout for a request that arrived at t0 (seconds, >= 0)."""
    return max(0.0, ep.config.timeout_ms / 1000 - (time.perf_counter() - t0))


class InjectedFault(Exception):
    pass


class _TooManyRows(Exception):
    pass


def _rows_in(payload: Any) -> int:
    if isinstance(payload, dict):
        if isinstance(payload.get("records"), list):
            return len(payload["records"])
        cols = payload.get("columns")
        if isinstance(cols, dict) and cols:
            first = next(iter(cols.values()))
            return len(first) if isinstance(first, list) else 1
    return 1


def _encode(encoder: Encoder, payload: Any, max_rows: int) -> Encoded:
    if not isinstance(payload, dict):
        raise ValidationFailed([{"row": None, "field": "body", "message": "expected a JSON object"}])
    extra = set(payload) - {"records", "columns"}
    if extra:
        raise ValidationFailed([{"row": None, "field": sorted(extra)[0], "message": "unknown field"}])
    if "records" in payload and "columns" in payload:
        raise ValidationFailed([{"row": None, "field": "columns", "message": "give records or columns, not both"}])
    if "records" in payload:
        recs = payload["records"]
        if not isinstance(recs, list) or not recs:
            raise ValidationFailed([{"row": None, "field": "records", "message": "expected a non-empty list"}])
        if len(recs) > max_rows:
            raise _TooManyRows(f"{len(recs)} rows; this endpoint takes at most {max_rows}")
        return encoder.encode_records(recs)
    if "columns" in payload:
        n = _rows_in(payload)
        if n > max_rows:
            raise _TooManyRows(f"{n} rows; this endpoint takes at most {max_rows}")
        return encoder.encode_columns(payload["columns"])
    raise ValidationFailed([{"row": None, "field": "records", "message": "give records or columns"}])


class NonFiniteOutput(Exception):
    pass


def _decode(out: np.ndarray, mv: ModelVersion, strict: bool = True) -> tuple[list, list, list]:
    """Scores, labels and the answer's predictions. Raises NonFiniteOutput for a NaN/infinite score (strict)."""
    spec = mv.signature.output
    if spec.kind == "binary":
        col = out[:, -1] if out.shape[1] > 1 else out[:, 0]
        scores = col.tolist()
        if strict and not all(map(math.isfinite, scores)):
            raise NonFiniteOutput
        names = spec.labels or ["0", "1"]
        labels = [names[1] if s >= spec.threshold else names[0] for s in scores]
        return scores, labels, [{"score": s, "label": lab} for s, lab in zip(scores, labels, strict=True)]
    if spec.kind == "regression":
        scores = out[:, 0].tolist()
        if strict and not all(map(math.isfinite, scores)):
            raise NonFiniteOutput
        return scores, [None] * len(scores), [{"score": s} for s in scores]
    names = spec.labels or [str(i) for i in range(out.shape[1])]
    idx = out.argmax(axis=1).tolist()
    probs = out.tolist()
    if strict and not all(math.isfinite(p) for row in probs for p in row):
        raise NonFiniteOutput
    scores = [p[i] for p, i in zip(probs, idx, strict=True)]
    labels = [names[i] for i in idx]
    preds = [{"score": s, "label": lab, "scores": p} for s, lab, p in zip(scores, labels, probs, strict=True)]
    return scores, labels, preds


def _first_field(errors: list[dict]) -> str | None:
    return next((e.get("field") for e in errors if e.get("field")), None)


def _error(status: int, error: str, detail: Any, field: str | None) -> Answer:
    return Answer(status, orjson.dumps({"error": error, "detail": detail, "field": field}))


def _to_candidate(route: Route, headers: list[tuple[bytes, bytes]] | None) -> bool:
    """This request's side of the split: a stable hash of the caller key (A/B), else a coin."""
    if route.weight >= 100:
        return True
    if route.sticky_header is not None and headers:
        want = route.sticky_header.lower().encode()
        for k, v in headers:
            if k == want:
                import hashlib

                # Salted with the rollout, so each rollout assigns callers afresh.
                h = hashlib.blake2b(v, digest_size=8, key=route.rollout_id.encode()[:64]).digest()
                return int.from_bytes(h, "big") % 10_000 < route.weight * 100
    return random.random() * 100 < route.weight


def _encode_again(encoder: Encoder, stable: Encoder | None, enc: Encoded) -> np.ndarray:
    """The request's rows for a candidate whose signature differs, rebuilt by feature name from the values
    the stable encoder kept (missing stays missing; the candidate's policy applies)."""
    if stable is None:
        raise ValidationFailed([{"row": None, "field": None, "message": "no stable encoder"}])
    n = len(enc.matrix)
    recs: list[dict[str, Any]] = []
    for r in range(n):
        rec: dict[str, Any] = {}
        for i, name in enumerate(stable.numeric_names):
            rec[name] = enc.num[r * enc.num_width + i]
        for i, name in enumerate(stable.category_names):
            rec[name] = enc.cat[r * enc.cat_width + i]
        recs.append({k: v for k, v in rec.items() if k in encoder._by_name})
    return encoder.encode_records(recs).matrix
