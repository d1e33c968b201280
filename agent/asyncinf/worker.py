"""The async worker: drains each endpoint's queue into its model in micro-batches, behind real time.

Order: endpoints take turns (one micro-batch each); within an endpoint, highest priority first, then
submission order. A micro-batch takes queued requests until `batch_rows` rows (a request is never split:
one larger than that is a batch of its own). Reading bodies, validation, encoding, the model call and
writing results run on the worker's own thread, never on the serving loop and never in real time's
inference threads; only the bookkeeping (records, prediction log, callbacks) runs on the loop.

Real time keeps priority, judged by the overload module's signals (agent/serving/overload.py): while
real-time requests arrive (in the last REALTIME_RECENT_S) and the serving loop lags more than YIELD_LAG_S,
the worker starts no batch; while real-time requests are arriving it rests after each batch for as long as
the batch took (async gets at most about half the time real time leaves it). With no real-time traffic it
drains at full speed, whatever the lag (a busy host then slows nobody's answer).

At-least-once: a batch's requests are marked `running` before the run; after a crash they run again.
The answer for an id is the one whose `d` record was written first: it is written after the result file
and never rewritten, so a restart can't give one id two answers.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import orjson

from agent.asyncinf.queue import AsyncQueue
from agent.asyncinf.table import Entry
from agent.serving.codec import NonFiniteOutput, TooManyRows, decode_output, encode_payload, first_field
from agent.serving.errors import ValidationFailed
from agent.serving.pool import ModelLoadError

if TYPE_CHECKING:
    from agent.serving.endpoints import Endpoint
    from agent.serving.pool import Loaded
    from agent.serving.service import ServingService

log = logging.getLogger("watchkeeper.async")

YIELD_LAG_S = 0.010  # the serving loop running this late: real time is short of CPU, start nothing
YIELD_SLEEP_S = 0.05
REALTIME_RECENT_S = 1.0  # real time counts as active this long after its last request
REST_SHARE = 1.0  # while real time is busy: rest this multiple of each batch's time after it
UNAVAILABLE_RETRY_S = 1.0  # an endpoint whose model could not load is tried again after this
RECHECK_S = 0.2  # queued work that could not run (paused, model loading) is looked at again after this
BATCH_SWITCH_INTERVAL_S = 0.0005  # the interpreter's GIL switch interval while a batch runs (see _one)
MAX_BATCH_BYTES = 16 * 2**20  # bodies read into one micro-batch at most (a bigger request is alone)


class _ResultGate:
    """Lets the loop abandon a batch that overran its timeout: the worker thread then writes no result."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.abandoned = False

    def abandon(self) -> None:
        with self.lock:
            self.abandoned = True


@dataclass
class Done:
    """One request's outcome, computed on the worker thread."""

    entry: Entry
    state: str  # succeeded | failed
    reason: str | None
    log: tuple | None = None  # the prediction log's arguments (after the `d` record)
    result_ref: list[int] | None = None  # where its answer was written (None: abandoned, nothing written)


@dataclass
class WorkerStats:
    batches: int = 0
    rows: int = 0
    yields: int = 0  # times it held back for real time
    busy_s: float = 0.0
    per_endpoint_rows: dict[str, int] = field(default_factory=dict)


class AsyncWorker:
    def __init__(self, queue: AsyncQueue, serving: ServingService) -> None:
        self.q = queue
        self.serving = serving
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="async-infer")
        self.stats = WorkerStats()
        self._task: asyncio.Task | None = None
        self._unavailable: dict[str, float] = {}  # endpoint -> retry after (monotonic)
        self._turn = 0
        self._rt_seen = 0
        self._rt_at = float("-inf")

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._task = loop.create_task(self._run())

    def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
        self.pool.shutdown(wait=False, cancel_futures=True)

    # ------------------------------------------------------------------ real time first

    def _realtime_requests(self) -> int:
        # Submissions count too: a caller waits for its 202 as for a prediction.
        return sum(s.requests for s in self.serving.stats.values()) + self.q.submitted

    def _realtime_busy(self) -> bool:
        """Real-time requests arrived since the last look."""
        n = self._realtime_requests()
        busy, self._rt_seen = n != self._rt_seen, n
        if busy:
            self._rt_at = time.monotonic()
        return busy

    def _realtime_recent(self) -> bool:
        """Real-time requests arrived in the last REALTIME_RECENT_S."""
        self._realtime_busy()
        return time.monotonic() - self._rt_at < REALTIME_RECENT_S

    # ------------------------------------------------------------------ the loop

    async def _run(self) -> None:
        while True:
            try:
                if not await self._one():
                    self.q.wake.clear()
                    # Work that can't run now (paused, model not loaded) is looked at again soon.
                    waiting = any(eq.queued for eq in self.q.table.queues.values())
                    try:
                        await asyncio.wait_for(self.q.wake.wait(), RECHECK_S if waiting else UNAVAILABLE_RETRY_S)
                    except TimeoutError:
                        pass
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("async worker: batch failed; going on")
                await asyncio.sleep(UNAVAILABLE_RETRY_S)

    async def _one(self) -> bool:
        """Run one micro-batch; False when there was nothing runnable."""
        # A lagging loop delays the next real-time request; with none about, lag costs nobody (a busy host).
        if self.serving.lag.lag_s > YIELD_LAG_S and self._realtime_recent():
            self.stats.yields += 1
            await asyncio.sleep(YIELD_SLEEP_S)
            return True
        picked = await self._pick()
        if picked is None:
            return False
        ep, loaded, batch = picked
        t = time.perf_counter()
        for i, e in enumerate(batch):
            try:
                self.q.started(e)
            except OSError as exc:  # the record file can't be written (disk full): run nothing unrecorded
                log.error("async: cannot record a run (%s); retrying in %g s", exc, UNAVAILABLE_RETRY_S)
                for rest in batch[i:]:
                    self.q.table.push_back(rest)
                batch = batch[:i]
                break
        if not batch:
            await asyncio.sleep(UNAVAILABLE_RETRY_S)
            return True
        cfg = ep.config.asynchronous
        gate = _ResultGate()
        # While the worker thread runs Python (parsing, encoding), the loop waits for the GIL up to the switch
        # interval (5 ms) each time it wakes; a shorter one while a batch runs took real time's p99 beside a
        # draining backlog from 45 to 20 ms here (bench/async.py).
        old_sw = sys.getswitchinterval()
        sys.setswitchinterval(BATCH_SWITCH_INTERVAL_S)
        fut = asyncio.get_running_loop().run_in_executor(self.pool, self._process, ep, loaded, batch, gate)
        try:
            done = await asyncio.wait_for(asyncio.shield(fut), cfg.processing_timeout_s)
        except TimeoutError:
            gate.abandon()  # the thread runs on, but its results are never written: the failure is the answer
            done = [self._failed(e, 504, "timeout", f"not processed within processing_timeout_s "
                                 f"({cfg.processing_timeout_s:g} s)") for e in batch]  # fmt: skip
        finally:
            sys.setswitchinterval(old_sw)
        took = time.perf_counter() - t
        self._finish(ep, done)
        self.stats.batches += 1
        self.stats.busy_s += took
        if self._realtime_busy():
            self.stats.yields += 1
            await asyncio.sleep(took * REST_SHARE)
        else:
            await asyncio.sleep(0)  # let the loop run between batches
        return True

    async def _pick(self) -> tuple[Endpoint, Loaded, list[Entry]] | None:
        names = [n for n, eq in self.q.table.queues.items() if eq.queued > 0]
        if not names:
            return None
        now = time.monotonic()
        for i in range(len(names)):
            name = names[(self._turn + i) % len(names)]
            if self._unavailable.get(name, 0) > now:
                continue
            ep = self.serving.endpoints.get(name)
            if ep is None:  # deleted: its queued requests can never run
                while (e := self.q.table.pop(name)) is not None:
                    self.q.finish(e, "failed", f"endpoint {name!r} was deleted")
                continue
            if ep.config.asynchronous.paused:
                continue
            loaded = self.serving.pool.peek(ep.key) if ep.key else None
            if loaded is None:
                if ep.version is None:
                    self._unavailable[name] = now + UNAVAILABLE_RETRY_S
                    continue
                try:
                    loaded = await self.serving.load(ep)
                except ModelLoadError as exc:
                    log.warning("async: endpoint %s: %s (its requests stay queued)", name, exc)
                    self._unavailable[name] = time.monotonic() + UNAVAILABLE_RETRY_S
                    continue
            batch = self._take(name, ep.config.asynchronous.batch_rows)
            if batch:
                self._turn = (self._turn + i + 1) % max(1, len(names))
                return ep, loaded, batch
        return None

    def _take(self, name: str, max_rows: int) -> list[Entry]:
        batch: list[Entry] = []
        rows = size = 0
        while True:
            e = self.q.table.peek(name)
            if e is None:
                break
            r = e.rows or max_rows  # not known until read: a request of unknown size goes alone
            if batch and (rows + r > max_rows or size + e.body_bytes > MAX_BATCH_BYTES):
                break
            self.q.table.pop(name)
            batch.append(e)
            rows += r
            size += e.body_bytes
        return batch

    # ------------------------------------------------------------------ on the worker thread

    def _failed(
        self, e: Entry, status: int, error: str, detail: Any, field: str | None = None, gate: _ResultGate | None = None
    ) -> Done:
        body = orjson.dumps({"error": error, "detail": detail, "field": field, "status": status})
        reason = f"{error}: {detail}" if isinstance(detail, str) else f"{error} ({field})"
        return Done(e, "failed", reason, result_ref=self._write_result(body, gate))

    def _write_result(self, body: bytes, gate: _ResultGate | None = None) -> list[int] | None:
        with gate.lock if gate is not None else nullcontext():
            if gate is not None and gate.abandoned:
                return None
            return self.q.result_blobs.append(body)

    def _process(self, ep: Endpoint, loaded: Loaded, batch: list[Entry], gate: _ResultGate) -> list[Done]:
        import numpy as np

        cfg = ep.config.asynchronous
        mv = ep.version
        encoder = ep.encoder
        out: list[Done] = []
        good: list[tuple[Entry, Any]] = []
        for e in batch:
            try:
                payload = orjson.loads(self.q.read_body(e))
            except OSError:
                out.append(self._failed(e, 500, "body_missing", "the request's body file is gone", "body", gate=gate))
                continue
            except orjson.JSONDecodeError as exc:
                out.append(self._failed(e, 422, "invalid_json", f"body is not valid JSON: {exc}", "body", gate=gate))
                continue
            try:
                enc = encode_payload(encoder, payload, cfg.max_rows)  # type: ignore[arg-type]
            except ValidationFailed as exc:
                out.append(self._failed(e, 422, "invalid_request", exc.errors, first_field(exc.errors), gate=gate))
                continue
            except TooManyRows as exc:
                out.append(self._failed(e, 413, "too_many_rows", str(exc), "records", gate=gate))
                continue
            del payload
            good.append((e, enc))
        if not good or mv is None:
            return out
        run = loaded.runtime.run
        try:
            y = run(np.concatenate([enc.matrix for _, enc in good]) if len(good) > 1 else good[0][1].matrix)
            outs = []
            at = 0
            for _, enc in good:
                n = len(enc.matrix)
                outs.append(y[at : at + n])
                at += n
        except Exception as exc:  # one bad request must not fail the others: run them one by one
            log.warning("async: endpoint %s: batch failed (%r); running its requests one by one", ep.name, exc)
            outs = []
            for _, enc in good:
                try:
                    outs.append(run(enc.matrix))
                except Exception as exc1:
                    outs.append(exc1)
        for (e, enc), y in zip(good, outs, strict=True):
            if isinstance(y, Exception):
                out.append(self._failed(e, 502, "model_error", "the model failed on this input", gate=gate))
                continue
            try:
                scores, labels, preds = decode_output(y, mv)
            except NonFiniteOutput:
                out.append(self._failed(e, 502, "model_error", "the model answered a non-finite score", gate=gate))
                continue
            latency_ms = (time.time() - e.submitted_at) * 1000
            body = orjson.dumps(
                {"request_id": e.id, "endpoint": ep.name, "model": mv.name, "version": mv.version,
                 "predictions": preds, "fallback": False, "fallback_reason": None, "latency_ms": latency_ms},
                option=orjson.OPT_SERIALIZE_NUMPY,
            )  # fmt: skip
            ref = self._write_result(body, gate)
            logged = (e.id, ep.name, mv.name, mv.version, enc.num, enc.num_width, enc.cat, enc.cat_width, scores,
                      labels, latency_ms)  # fmt: skip
            out.append(Done(e, "succeeded", None, log=logged, result_ref=ref))
        return out

    # ------------------------------------------------------------------ back on the loop

    def _finish(self, ep: Endpoint, done: list[Done]) -> None:
        predlog = self.serving.predlog
        rows = 0
        for d in done:
            if d.entry.state != "running":  # finished meanwhile (cannot happen today: running can't be cancelled)
                continue
            self.q.finish(d.entry, d.state, d.reason, d.result_ref)
            if d.log is not None:
                rows += len(d.log[8])
                if predlog.sampled(ep.config.log_sample_rate):
                    predlog.log(*d.log, "ok", None, mode="async")
        self.stats.rows += rows
        self.stats.per_endpoint_rows[ep.name] = self.stats.per_endpoint_rows.get(ep.name, 0) + rows
