"""`ThreadedSource`: a fleet source whose polling runs on its own thread and event loop, off the UI's.

A poll of 1,000 agents is hundreds of milliseconds of CPU (HTTP parsing, JSON validation); run on the
UI's event loop it froze the screen for as long. Here every coroutine of the wrapped source (the poll,
and the on-demand requests: series, drift, actions) runs on the poller's loop; the UI awaits a future
that resolves when it is done, so its loop keeps drawing and reading keys meanwhile. Results are
frozen dataclasses, safe to hand across. Plain (non-async) attributes are the wrapped source's own.
No Textual here.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import threading
from collections.abc import Coroutine, Sequence
from typing import Any, TypeVar

from console.core.config import AgentSpec
from console.core.poller import FleetSource, FleetStatus

T = TypeVar("T")


class ThreadedSource:
    """Wraps a `FleetSource` (a `FleetPoller` or a feature poller): its coroutines run on a poller thread."""

    def __init__(self, inner: FleetSource, *, name: str = "wk-poller") -> None:
        self.inner = inner
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_forever()

    async def run(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run `coro` on the poller's loop; await its result here (cancelling here cancels it there)."""
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coro, self._loop))

    @property
    def thread(self) -> threading.Thread:
        return self._thread

    @property
    def specs(self) -> Sequence[AgentSpec]:
        return self.inner.specs

    def now(self) -> float:
        return self.inner.now()

    async def poll(self) -> FleetStatus:
        """One poll of the fleet, on the poller's thread."""
        return await self.run(self.inner.poll())

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self.inner, name)
        if inspect.iscoroutinefunction(attr):

            @functools.wraps(attr)
            async def on_poller_thread(*args: Any, **kwargs: Any) -> Any:
                return await self.run(attr(*args, **kwargs))

            return on_poller_thread
        return attr

    async def aclose(self) -> None:
        """Close the wrapped source's connections on its loop, then stop the thread."""
        if not self._loop.is_running():
            return
        try:
            await self.run(self.inner.aclose())
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            await asyncio.to_thread(self._thread.join, 5.0)
            if not self._thread.is_alive():
                self._loop.close()
