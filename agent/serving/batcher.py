"""Adaptive micro-batching across concurrent requests, counting rows (not requests).

The first waiting request starts a batch; the batch is dispatched when it holds `max_rows` rows or
`max_wait_ms` has passed, whichever is first. While one batch runs in the inference thread the
next one fills up, so under load batches grow by themselves and with one caller nothing waits
longer than `max_wait_ms`. A request with more rows than `max_rows` runs as a batch of its own
(rows are never split across answers).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import Executor

import numpy as np


class MicroBatcher:
    def __init__(
        self,
        run: Callable[[np.ndarray], np.ndarray],
        executor: Executor,
        max_rows: int,
        max_wait_ms: float,
        inline: bool = False,
    ) -> None:
        self.run_fn = run
        self.owner: object = None  # what the run function belongs to (the loaded model), for rebinding
        self.inline = inline  # run batches on the loop (cheap models: a thread hop costs more)
        self._executor = executor
        self.max_rows = max_rows
        self.max_wait_s = max_wait_ms / 1000.0
        self._pending: list[tuple[np.ndarray, asyncio.Future]] = []
        self._pending_rows = 0
        self._timer: asyncio.TimerHandle | None = None
        self._running = False  # one batch in the thread at a time keeps batches large under load
        self.batches = 0
        self.batched_rows = 0

    async def submit(self, x: np.ndarray) -> np.ndarray:
        loop = asyncio.get_running_loop()
        fut: asyncio.Future = loop.create_future()
        if len(x) >= self.max_rows:
            self._dispatch(loop, [(x, fut)])
            return await fut
        self._pending.append((x, fut))
        self._pending_rows += len(x)
        if self._pending_rows >= self.max_rows:
            self._flush(loop)
        elif self._timer is None and not self._running:
            self._timer = loop.call_later(self.max_wait_s, self._flush, loop)
        return await fut

    def _flush(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self._pending:
            return
        batch, self._pending, self._pending_rows = self._pending, [], 0
        self._running = True
        self._dispatch(loop, batch)

    def _dispatch(self, loop: asyncio.AbstractEventLoop, batch: list[tuple[np.ndarray, asyncio.Future]]) -> None:
        xs = [x for x, _ in batch]
        big = xs[0] if len(xs) == 1 else np.concatenate(xs)
        self.batches += 1
        self.batched_rows += len(big)
        if self.inline:
            task: asyncio.Future = loop.create_future()
            try:
                task.set_result(self.run_fn(big))
            except Exception as e:
                task.set_exception(e)
            self._done(loop, task, batch)
            return
        task = loop.run_in_executor(self._executor, self.run_fn, big)
        task.add_done_callback(lambda t: self._done(loop, t, batch))

    def _done(self, loop: asyncio.AbstractEventLoop, task: asyncio.Future, batch: list) -> None:
        self._running = False
        exc = task.exception() if not task.cancelled() else asyncio.CancelledError()
        if exc is None:
            out = task.result()
            start = 0
            for x, fut in batch:
                if not fut.done():
                    fut.set_result(out[start : start + len(x)])
                start += len(x)
        else:
            for _, fut in batch:
                if not fut.done():
                    fut.set_exception(exc)
        # Requests that arrived while this batch ran go now (they waited long enough).
        if self._pending:
            self._flush(loop)
