"""The predict path, in order: parse → validate/encode against the signature → operator fallback? →
breaker → concurrency (rows in flight) → model from the pool → (batcher) → inference thread with a
timeout → answer → stats, breaker outcome and the prediction log. Every way it can fail ends in
either the endpoint's fallback prediction (200, marked) or a documented status code.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import orjson

from agent.schemas import ModelVersion
from agent.serving.errors import ValidationFailed
from agent.serving.pool import ModelLoadError

if TYPE_CHECKING:
    import numpy as np

    from agent.serving.encode import Encoded


from agent.serving.codec import (
    InjectedFault,
    NonFiniteOutput,
    TooManyRows,
    decode_output,
    encode_payload,
    error_answer,
    first_field,
    left_s,
    rows_in,
)
from agent.serving.endpoints import Answer, Endpoint
from agent.serving.routing import _to_candidate

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


class PredictPath:
    """The predict path; mixed into ServingService (agent/serving/service.py), whose state it uses."""

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
            return error_answer(404, "not_found", f"no endpoint {name!r}", "endpoint")
        try:
            payload = orjson.loads(body)
        except orjson.JSONDecodeError as e:
            return self._rejected(ep, 422, "invalid_json", f"body is not valid JSON: {e}", "body")
        if ep.encoder is None or ep.version is None:
            return self._fallback(ep, request_id, rows_in(payload), "model_unavailable", t0, None)
        try:
            enc = encode_payload(ep.encoder, payload, ep.config.max_rows)
        except ValidationFailed as e:
            return self._rejected(ep, 422, "invalid_request", e.errors, first_field(e.errors))
        except TooManyRows as e:
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
                out = await asyncio.wait_for(self._infer_rows(ep, enc.matrix), left_s(ep, t0))
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
            scores, labels, preds = decode_output(out, mv)
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
            ans = error_answer(status, reason, detail, None)
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
        return self._fallback(ep, request_id, rows_in(payload), "overload", t0, None)

    def _rejected(self, ep: Endpoint, status: int, error: str, detail: Any, field: str | None) -> Answer:
        mv = ep.version
        s = self.version_stats(ep.name, mv.name if mv else ep.config.model, mv.version if mv else 0)
        s.rejected += 1
        if isinstance(detail, list):  # validation errors: type mismatches and corrupt values per feature
            now = time.time()
            for fname in {e.get("field") for e in detail if isinstance(e, dict) and e.get("field")}:
                ep.rejections.append((now, fname))
        return error_answer(status, error, detail, field)

    def rejections(self, endpoint: str, start: float, end: float) -> dict[str, int]:
        """Requests refused for a bad value, per feature, in [start, end) (kept in memory, the last 10k)."""
        ep = self.endpoints.get(endpoint)
        out: dict[str, int] = {}
        for ts, fname in ep.rejections if ep is not None else ():
            if start <= ts < end:
                out[fname] = out.get(fname, 0) + 1
        return out
