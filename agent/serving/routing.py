"""Candidate routing: a rollout's traffic split on an endpoint (agent/rollouts drives it), the candidate's
loading and evaluation, mirrored (shadow) requests and the per-route metrics the rollout's guards read.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from typing import TYPE_CHECKING, Any

import orjson

from agent.schemas import ModelVersion
from agent.serving.errors import ValidationFailed
from agent.serving.pool import ModelLoadError
from agent.serving.stats import version_window

if TYPE_CHECKING:
    import numpy as np

    from agent.serving.encode import Encoded, Encoder


from agent.serving.codec import InjectedFault, decode_output, left_s
from agent.serving.endpoints import Answer, Endpoint, EndpointError, Route, RouteMetrics

log = logging.getLogger("watchkeeper.serving")


SHADOW_BATCH_S = 0.02  # mirrored requests wait at most this long to run batched on the candidate
SHADOW_MAX_QUEUED_ROWS = 8192


class CandidateRouting:
    """Rollout routes; mixed into ServingService (agent/serving/service.py), whose state it uses."""

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
            sc, lab, _ = decode_output(out, mv, strict=False)
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
                out = await asyncio.wait_for(self._run_candidate(ep, cand, x), left_s(ep, t0))
            scores, labels, preds = decode_output(out, mv)
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
            c_scores, c_labels, _ = decode_output(out, mv)
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
