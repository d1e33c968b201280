"""The async queue: what a submission commits before its 202, status and cancel, expiry, TTL removal.

All state changes run on the serving loop's thread (the routes, the worker's bookkeeping, callback
progress handed over with `call_soon_threadsafe`), so the table and the record file need no lock.
A request's body (up to 1 MiB) is a blob in the body segments, or, larger, `bodies/<id>` (streamed there
as it arrives, never held whole); its answer a blob in the result segments (agent/asyncinf/blobs.py),
written by the worker before its `d` record: a record names only what is already on disk.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections import Counter, deque
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from agent.asyncinf.blobs import BlobStore
from agent.asyncinf.records import RecordFile
from agent.asyncinf.table import AsyncTable, Entry
from agent.schemas import AsyncConfig, AsyncQueueStats, AsyncStatus
from agent.serving.overload import BodyBudget

if TYPE_CHECKING:
    from agent.serving.service import ServingService

log = logging.getLogger("watchkeeper.async")

SWEEP_S = 1.0
# Free space the data dir keeps beyond a body that could arrive: the store and the journal need room too.
MIN_FREE_BYTES = 1024 * 2**20
# Compact the record file when it is this much larger than the live state's records (and past MIN bytes).
COMPACT_RATIO = 4
COMPACT_MIN_BYTES = 4 * 2**20
_DEFAULTS = AsyncConfig()


class QueueError(Exception):
    def __init__(self, status: int, error: str, detail: str, field: str | None = None, retry_after: int = 0) -> None:
        super().__init__(detail)
        self.status, self.error, self.detail, self.field, self.retry_after = status, error, detail, field, retry_after


class AsyncQueue:
    def __init__(self, directory: Path, serving: ServingService) -> None:
        self.dir = directory
        self.bodies = directory / "bodies"
        for d in (directory, self.bodies):
            d.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.body_blobs = BlobStore(directory / "body-segments")
        self.result_blobs = BlobStore(directory / "result-segments")
        self.serving = serving
        self.table = AsyncTable()
        records, torn = RecordFile.read(directory / "queue.log")
        for rec in records:
            self.table.apply(rec, live=False)
        if torn:
            log.warning("async queue: %d bytes of torn records at the end of its file were skipped", torn)
        self.requeued = len(self.table.requeue_running())
        self._drop_orphans()
        self.file = RecordFile(directory / "queue.log")
        self.file.compact(self._live_records())  # start from a file holding only the live requests
        self.receiving: set[str] = set()  # ids whose body is streaming in now
        self.held = BodyBudget()  # body bytes submissions hold while they arrive (beyond it: streamed to a file)
        self.wake = asyncio.Event()
        self.on_finished: Callable[[Entry], None] | None = None  # the callback sender's enqueue
        self.submitted = 0  # since start: the worker treats submissions as interactive traffic
        self.completed_at: deque[float] = deque()  # finish times of the last minute (the drain rate)
        self._sweeper: asyncio.Task | None = None
        if self.table.entries:
            log.info("async queue: %d requests restored (%d interrupted runs queued again)",
                     len(self.table.entries), self.requeued)  # fmt: skip

    def _drop_orphans(self) -> None:
        """Bodies of submissions that crashed before their record, results of runs that never finished."""
        for p in self.bodies.iterdir():
            e = self.table.entries.get(p.name)
            if e is None or e.final:
                p.unlink(missing_ok=True)
        bodies: Counter[int] = Counter()
        results: Counter[int] = Counter()
        for e in self.table.entries.values():
            if not e.final and e.body_ref:
                bodies[e.body_ref[0]] += 1
            if e.final and e.result_ref:
                results[e.result_ref[0]] += 1
        self.body_blobs.keep(bodies)
        self.result_blobs.keep(results)

    def _live_records(self) -> list[list]:
        return [r for e in sorted(self.table.entries.values(), key=lambda e: e.seq) for r in e.records()]

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._sweeper = loop.create_task(self._sweep_forever())
        if any(eq.queued for eq in self.table.queues.values()):
            self.wake.set()

    def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
        self.file.close()
        self.body_blobs.close()
        self.result_blobs.close()

    # ------------------------------------------------------------------ paths and config

    def body_path(self, rid: str) -> Path:
        """Where a body too large for a segment blob streams to."""
        return self.bodies / rid

    def read_body(self, e: Entry) -> bytes:
        """A request's body (raises OSError when it is gone)."""
        return self.body_blobs.read(e.body_ref) if e.body_ref else self.body_path(e.id).read_bytes()

    def read_result(self, rid: str) -> Any:
        """A finished request's result (parsed), None when it has none or it can't be read."""
        e = self.table.entries.get(rid)
        if e is None or not e.result_ref:
            return None
        try:
            return orjson.loads(self.result_blobs.read(e.result_ref))
        except (OSError, orjson.JSONDecodeError):
            return None

    def config(self, endpoint: str) -> AsyncConfig:
        ep = self.serving.endpoints.get(endpoint)
        return ep.config.asynchronous if ep is not None else _DEFAULTS

    # ------------------------------------------------------------------ submission

    def admit(self, endpoint: str, cfg: AsyncConfig) -> None:
        """Raise 429 (with a Retry-After from the recent drain rate) when the endpoint's queue is full, 503 when the
        data dir lacks room for another body."""
        st = os.statvfs(self.bodies)
        need = MIN_FREE_BYTES + cfg.max_body_bytes
        if st.f_bavail * st.f_frsize < need:
            why = f"less than {need >> 20} MiB free in the data dir for queued bodies; retry later"
            raise QueueError(503, "insufficient_storage", why, None, retry_after=60)
        eq = self.table.q(endpoint)
        if eq.queued + eq.running >= cfg.capacity:
            rate = self.drain_rate()
            wait = int(min(300, max(1, (eq.queued + eq.running - cfg.capacity + 1) / rate))) if rate else 5
            raise QueueError(429, "queue_full", f"the async queue of {endpoint!r} holds {cfg.capacity} requests "
                             "(its capacity); retry later", "endpoint", retry_after=wait)  # fmt: skip

    def commit(self, rid: str, endpoint: str, priority: int, principal: str, callback: str | None,
               size: int, rows: int, body_ref: list[int] | None) -> Entry:  # fmt: skip
        """Record a submission whose body is on disk. Once this returns, the request survives kill -9."""
        self.table.seq += 1
        rec = ["s", rid, endpoint, priority, self.table.seq, time.time(), principal, callback, size, rows, body_ref]
        self.file.append(rec)
        e = self.table.apply(rec)
        assert e is not None
        self.submitted += 1
        self.wake.set()
        return e

    # ------------------------------------------------------------------ status and cancel

    def status(self, e: Entry, with_result: bool = True) -> AsyncStatus:
        """The GET answer. Reads the result file (call off the loop for large results)."""
        result = None
        if with_result and e.final and e.state in ("succeeded", "failed"):
            result = self.read_result(e.id)
        ttl = self.config(e.endpoint).result_ttl_s
        return AsyncStatus(
            id=e.id, endpoint=e.endpoint, state=e.state, reason=e.reason, priority=e.priority,  # type: ignore[arg-type]
            submitted_at=e.submitted_at, started_at=e.started_at, finished_at=e.finished_at, attempts=e.attempts,
            expires_at=e.finished_at + ttl if e.finished_at is not None else None, result=result,
            callback=e.callback(),
        )  # fmt: skip

    def cancel(self, e: Entry, why: str) -> None:
        if e.state != "queued":
            raise QueueError(409, "conflict", f"request {e.id} is {e.state}: only a queued request can be cancelled",
                             "id")  # fmt: skip
        self.finish(e, "cancelled", why)

    # ------------------------------------------------------------------ the worker's bookkeeping

    def started(self, e: Entry) -> None:
        rec = ["r", e.id, e.attempts + 1, time.time()]
        self.file.append(rec)
        self.table.apply(rec)

    def finish(self, e: Entry, state: str, reason: str | None, result_ref: list[int] | None = None) -> None:
        """The request's final state (its result, for succeeded/failed, already written at `result_ref`)."""
        now = time.time()
        rec = ["d", e.id, state, reason, now, result_ref]
        self.file.append(rec)
        self.table.apply(rec)
        if e.body_ref:
            self.body_blobs.unref(e.body_ref)
        else:
            self.body_path(e.id).unlink(missing_ok=True)
        self.completed_at.append(now)
        if self.on_finished is not None and e.callback_url is not None:
            self.on_finished(e)

    def callback_progress(self, rid: str, state: str, attempts: int, error: str | None, next_at: float | None) -> None:
        """From the callback sender (via the loop): one attempt's outcome."""
        e = self.table.entries.get(rid)
        if e is None:
            return
        rec = ["c", rid, state, attempts, error, next_at]
        try:
            self.file.append(rec)
        except OSError as exc:
            log.error("async queue: callback state of %s not recorded: %s", rid, exc)
        self.table.apply(rec)

    def drain_rate(self) -> float:
        """Requests finished per second over the last minute."""
        cut = time.time() - 60
        while self.completed_at and self.completed_at[0] < cut:
            self.completed_at.popleft()
        return len(self.completed_at) / 60

    # ------------------------------------------------------------------ expiry, TTL, compaction

    async def _sweep_forever(self) -> None:
        while True:
            await asyncio.sleep(SWEEP_S)
            try:
                self.sweep(time.time())
            except Exception:
                log.exception("async queue sweep failed")

    def sweep(self, now: float) -> None:
        """Expire requests queued past max_queue_s, remove finished ones past result_ttl_s, compact."""
        cfgs: dict[str, AsyncConfig] = {}
        for e in list(self.table.entries.values()):
            cfg = cfgs.get(e.endpoint) or cfgs.setdefault(e.endpoint, self.config(e.endpoint))
            if e.state == "queued" and now - e.submitted_at > cfg.max_queue_s:
                self.finish(e, "expired", f"queued longer than max_queue_s ({cfg.max_queue_s:g} s)")
            elif e.final and e.finished_at is not None and now - e.finished_at > cfg.result_ttl_s \
                    and e.callback_state != "pending":  # fmt: skip
                self.file.append(["x", e.id])
                self.table.apply(["x", e.id])
                self.result_blobs.unref(e.result_ref)
        live = max(1, len(self.table.entries)) * 200
        if self.file.bytes > COMPACT_MIN_BYTES and self.file.bytes > COMPACT_RATIO * live:
            self.file.compact(self._live_records())

    # ------------------------------------------------------------------ counts

    def stats(self) -> dict[str, AsyncQueueStats]:
        now = time.time()
        return {name: self.table.stats(name, self.config(name).capacity, now) for name in sorted(self.table.queues)}
