"""The model pool: many models per agent, loaded on first use or pre-warmed, evicted LRU under a memory budget.

Loads run one at a time in a dedicated loader thread, so loading a large model never takes an
inference thread (serving other models goes on) and the resident-memory delta we measure around a
load belongs to that model alone. Concurrent requests for a model that is loading share one load.
An evicted model that still has calls in flight stays alive until they finish (they hold it).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from agent.schemas import LoadedModel
from agent.serving.runtimes import Runtime, load_runtime

log = logging.getLogger("watchkeeper.serving")

Key = tuple[str, int]

# A thread hop costs ~300 µs here against ~20 µs for a small ONNX model: models whose measured
# single-row call is below this run on the event loop; anything slower goes to the inference threads.
INLINE_BELOW_US = 200.0


@dataclass
class Loaded:
    model: str
    version: int
    format: str
    runtime: Runtime
    memory_bytes: int
    loaded_at: float
    load_ms: float
    call_us: float = 0.0  # median single-row call measured at load
    inline: bool = False  # cheap enough to run on the event loop (see INLINE_BELOW_US)
    last_used_at: float = field(default_factory=time.time)

    def info(self, endpoints: list[str]) -> LoadedModel:
        return LoadedModel(
            model=self.model, version=self.version, format=self.format,  # type: ignore[arg-type]
            memory_bytes=self.memory_bytes, loaded_at=self.loaded_at, last_used_at=self.last_used_at,
            load_ms=self.load_ms, endpoints=endpoints,
        )  # fmt: skip


class ModelLoadError(Exception):
    pass


class ModelPool:
    def __init__(self, budget_bytes: int) -> None:
        self.budget_bytes = budget_bytes
        self._models: OrderedDict[Key, Loaded] = OrderedDict()  # LRU order: oldest first
        self._loading: dict[Key, asyncio.Future] = {}
        self._loader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="model-loader")
        self._proc = psutil.Process()
        self.evictions = 0
        # Models that must stay loaded (a rollout's candidate; a promoted version's predecessor kept warm),
        # with the time the pin ends (None: until unpinned).
        self._pins: dict[Key, float | None] = {}

    def pin(self, key: Key, seconds: float | None = None) -> None:
        """Keep `key` loaded (not evicted) for `seconds`, or until `unpin`."""
        self._pins[key] = None if seconds is None else time.time() + seconds

    def unpin(self, key: Key) -> None:
        self._pins.pop(key, None)

    def pinned(self, key: Key) -> bool:
        if key not in self._pins:
            return False
        until = self._pins[key]
        if until is not None and until < time.time():
            del self._pins[key]
            return False
        return True

    @property
    def used_bytes(self) -> int:
        return sum(m.memory_bytes for m in self._models.values())

    def loaded(self) -> list[Loaded]:
        return list(self._models.values())

    def peek(self, key: Key) -> Loaded | None:
        """The loaded model, marked as just used; None when not loaded (never loads)."""
        m = self._models.get(key)
        if m is not None:
            self._models.move_to_end(key)
            m.last_used_at = time.time()
        return m

    async def get(self, key: Key, path: Path, fmt: str, width: int) -> Loaded:
        """The model, loading it if needed (shared by concurrent callers)."""
        m = self.peek(key)
        if m is not None:
            return m
        fut = self._loading.get(key)
        if fut is None:
            loop = asyncio.get_running_loop()
            fut = loop.run_in_executor(self._loader, self._load, key, path, fmt, width)
            self._loading[key] = fut
            fut.add_done_callback(lambda f: self._installed(key, f))
        return await asyncio.shield(fut)

    def _load(self, key: Key, path: Path, fmt: str, width: int) -> Loaded:
        before = self._proc.memory_info().rss
        t0 = time.perf_counter()
        try:
            runtime = load_runtime(path, fmt)
        except Exception as e:
            raise ModelLoadError(f"{key[0]}:{key[1]} failed to load: {e}") from e
        load_ms = (time.perf_counter() - t0) * 1000
        call_us = _time_call(runtime, width)
        grown = self._proc.memory_info().rss - before
        # The RSS delta misses memory the allocator had already reserved; the artifact size is a floor.
        mem = max(grown, path.stat().st_size)
        log.info("loaded %s:%s (%s) in %.0f ms, ~%d MiB", key[0], key[1], fmt, load_ms, mem >> 20)
        return Loaded(key[0], key[1], fmt, runtime, mem, time.time(), load_ms, call_us, call_us < INLINE_BELOW_US)

    def _installed(self, key: Key, fut: asyncio.Future) -> None:
        self._loading.pop(key, None)
        if fut.cancelled() or fut.exception() is not None:
            return
        m: Loaded = fut.result()
        self._models[key] = m
        self._models.move_to_end(key)
        self._evict(keep=key)

    def _evict(self, keep: Key) -> None:
        while self.used_bytes > self.budget_bytes and len(self._models) > 1:
            victim = next((k for k in self._models if k != keep and not self.pinned(k)), None)
            if victim is None:
                return  # everything else is pinned: over budget rather than break a rollout
            gone = self._models.pop(victim)
            self.evictions += 1
            log.info("evicted %s:%s (LRU, pool over %d MiB budget)", gone.model, gone.version, self.budget_bytes >> 20)

    def unload(self, key: Key) -> bool:
        return self._models.pop(key, None) is not None

    def close(self) -> None:
        self._loader.shutdown(wait=False, cancel_futures=True)
        self._models.clear()


def _time_call(runtime: Runtime, width: int) -> float:
    """Median µs of a one-row call after a warm-up (the first calls allocate)."""
    import numpy as np

    x = np.zeros((1, width), dtype=np.float32)
    try:
        for _ in range(3):
            runtime.run(x)
        times = []
        for _ in range(15):
            t = time.perf_counter()
            runtime.run(x)
            times.append((time.perf_counter() - t) * 1e6)
    except Exception:  # a model that fails on zeros still serves; it just isn't trusted inline
        return float("inf")
    return sorted(times)[len(times) // 2]
