"""Model pool: a slow load never blocks serving another model; LRU eviction under the budget."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import numpy as np

import agent.serving.pool as pool_mod
from agent.serving.pool import ModelPool


class FakeRuntime:
    def __init__(self, name: str) -> None:
        self.name = name

    def run(self, x: np.ndarray) -> np.ndarray:
        return np.full((len(x), 1), 0.5, dtype=np.float32)


def test_slow_load_does_not_block_serving_another(monkeypatch, tmp_path: Path):
    art = tmp_path / "m.onnx"
    art.write_bytes(b"x" * 10)

    def fake_load(path: Path, fmt: str):
        if fmt == "slow":
            time.sleep(0.5)
        return FakeRuntime(fmt)

    monkeypatch.setattr(pool_mod, "load_runtime", fake_load)

    async def main():
        pool = ModelPool(budget_bytes=10**12)
        fast = await pool.get(("fast", 1), art, "fast", 4)
        slow_task = asyncio.create_task(pool.get(("slow", 1), art, "slow", 4))
        await asyncio.sleep(0.01)
        # While "slow" loads in the loader thread, the loop keeps serving "fast".
        t0 = time.perf_counter()
        served = 0
        while not slow_task.done():
            assert pool.peek(("fast", 1)) is fast
            fast.runtime.run(np.zeros((1, 4), dtype=np.float32))
            served += 1
            await asyncio.sleep(0.005)
        waited = time.perf_counter() - t0
        # concurrent callers share one load
        again = await pool.get(("slow", 1), art, "slow", 4)
        pool.close()
        return served, waited, slow_task.result() is again

    served, waited, shared = asyncio.run(main())
    assert waited > 0.3 and served > 20 and shared


def test_lru_eviction_under_budget(monkeypatch, tmp_path: Path):
    art = tmp_path / "m.onnx"
    art.write_bytes(b"x" * 1000)  # each model counts at least its artifact size
    monkeypatch.setattr(pool_mod, "load_runtime", lambda p, f: FakeRuntime(f))

    async def main():
        pool = ModelPool(budget_bytes=2500)
        for name in ("a", "b"):
            await pool.get((name, 1), art, "onnx", 4)
        pool.peek(("a", 1))  # a is now more recent than b
        await pool.get(("c", 1), art, "onnx", 4)
        names = [m.model for m in pool.loaded()]
        pool.close()
        return names, pool.evictions

    names, evictions = asyncio.run(main())
    assert sorted(names) == ["a", "c"] and evictions == 1


def test_cheap_models_are_marked_inline(monkeypatch, tmp_path: Path):
    art = tmp_path / "m.onnx"
    art.write_bytes(b"x")

    class Slow(FakeRuntime):
        def run(self, x):
            time.sleep(0.002)
            return super().run(x)

    monkeypatch.setattr(pool_mod, "load_runtime", lambda p, f: Slow(f) if f == "slow" else FakeRuntime(f))

    async def main():
        pool = ModelPool(budget_bytes=10**9)
        cheap = await pool.get(("cheap", 1), art, "cheap", 4)
        slow = await pool.get(("slow", 1), art, "slow", 4)
        pool.close()
        return cheap, slow

    cheap, slow = asyncio.run(main())
    assert cheap.inline and not slow.inline and slow.call_us > 1000
