"""The serving service: endpoints and their predict path, put together.

Its parts, one job each: the endpoint registry (agent/serving/endpoints.py: what an endpoint is, its
configuration events), the predict path (agent/serving/predict.py), a rollout's candidate routing and
shadow traffic (agent/serving/routing.py). This module holds the shared state (model pool, prediction
log, stats), the lifecycle on the serving loop, and the status reads.
"""

from __future__ import annotations

import asyncio
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from agent.schemas import EndpointVersionStats, PredictionLogRow, ServingStatus
from agent.serving.overload import LoopLag
from agent.serving.pool import ModelLoadError, ModelPool
from agent.serving.predlog import PredictionLog
from agent.serving.stats import VersionStats
from agent.store.writer import StoreWriter

if TYPE_CHECKING:
    pass


from agent.serving.endpoints import Answer, Endpoint, EndpointError, EndpointTable, RegistryView, Route, RouteMetrics
from agent.serving.predict import STATUS_WITHOUT_FALLBACK, PredictPath
from agent.serving.routing import CandidateRouting

__all__ = [
    "STATUS_WITHOUT_FALLBACK",
    "Answer",
    "Endpoint",
    "EndpointError",
    "RegistryView",
    "Route",
    "RouteMetrics",
    "ServingService",
]


log = logging.getLogger("watchkeeper.serving")


# Logged rows waiting for the writer (it flushes every 4,000): a bound on what a slow disk or a starved writer
# thread costs in memory. The store writer's own default (200k) let 1 MiB bodies take the agent past 512 MiB.
PREDLOG_MAX_PENDING_ROWS = 50_000


class ServingService(EndpointTable, CandidateRouting, PredictPath):
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

    async def load(self, ep: Endpoint):
        """The endpoint's model, loading it first if it is not resident (raises ModelLoadError)."""
        return await self._load(ep)

    async def _load(self, ep: Endpoint):
        assert ep.version is not None
        mv = ep.version
        width = ep.encoder.width if ep.encoder else 0
        return await self.pool.get(
            (mv.name, mv.version), self.registry.artifact_path(mv.name, mv.version), mv.format, width
        )

    # ------------------------------------------------------------------ rollouts (agent/rollouts drives these)

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
                           latency_ms, status, fallback_reason, mode
                    FROM predictions WHERE {where} ORDER BY ts DESC, row_idx LIMIT ?""",
                [*params, limit],
            ).fetchall()
        finally:
            cur.close()
        names: dict[tuple[str, int], tuple[list[str], list[str]]] = {}
        out = []
        for ts, rid, ep, model, version, idx, num, cat, score, label, lat, status, reason, mode in rows:
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
                mode=mode or "realtime",
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
