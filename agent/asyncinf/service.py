"""The async inference service: the queue, its worker and callback sender, wired and started on the serving loop."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import TYPE_CHECKING

from agent.asyncinf.callbacks import CallbackSender
from agent.asyncinf.queue import AsyncQueue
from agent.asyncinf.table import Entry
from agent.asyncinf.worker import AsyncWorker

if TYPE_CHECKING:
    from agent.serving.service import ServingService


class AsyncService:
    def __init__(self, directory: Path, serving: ServingService) -> None:
        """Replays the queue's record file (call before serving starts): interrupted runs are queued again."""
        self.queue = AsyncQueue(directory, serving)
        self.worker = AsyncWorker(self.queue, serving)
        self._loop: asyncio.AbstractEventLoop | None = None
        self.callbacks = CallbackSender(self._progress, self.queue.read_result)
        self.queue.on_finished = self._send

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self.callbacks.start()
        for e in self.queue.table.entries.values():  # callbacks a crash left undelivered: again
            if e.final and e.callback_url and e.callback_state == "pending":
                self.callbacks.enqueue(e.id, e.callback_url, self._status(e), e.callback_attempts)
        self.queue.start(loop)
        self.worker.start(loop)

    def close(self) -> None:
        self.worker.close()
        self.callbacks.stop()
        self.queue.close()

    def _status(self, e: Entry) -> dict:
        return self.queue.status(e, with_result=False).model_dump(exclude={"result", "callback"})

    def _send(self, e: Entry) -> None:
        assert e.callback_url is not None
        self.callbacks.enqueue(e.id, e.callback_url, self._status(e))

    def _progress(self, rid: str, state: str, attempts: int, error: str | None, next_at: float | None) -> None:
        if self._loop is not None:  # from the sender's thread: the record file is the loop's
            self._loop.call_soon_threadsafe(self.queue.callback_progress, rid, state, attempts, error, next_at)
