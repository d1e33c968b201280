"""A rollout's route in the serving service: measured split, sticky assignment, shadow never changes answers,
no request to a candidate that is not loaded, a failing candidate hands its requests to stable."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import orjson
import polars as pl
import pytest

from agent.registry.store import Registry
from agent.schemas import EndpointConfig, FaultConfig, ModelVersionCreate
from agent.serving.service import Route, ServingService
from agent.store.db import open_store
from agent.store.writer import StoreWriter

FLIGHTS = Path(__file__).resolve().parents[2] / "sample_data" / "flights"


@pytest.fixture
def service(tmp_path: Path):
    opened = open_store(tmp_path / "wk.duckdb")
    w = StoreWriter(opened.con, flush_interval=60)
    w.start()
    reg = Registry(w, opened.con, tmp_path / "models", tmp_path / "tmp")
    meta = ModelVersionCreate.model_validate(json.loads((FLIGHTS / "metadata.json").read_text()))
    art = (FLIGHTS / "model.onnx").read_bytes()
    for i, extra in enumerate((b"", b"\x32\x02v2")):  # v2: the same weights under a new digest
        (tmp_path / "tmp").mkdir(exist_ok=True)
        src = tmp_path / "tmp" / f"up{i}"
        src.write_bytes(art + extra)
        reg.register("flights", meta, src, "alice")
    s = ServingService(reg, w, 2**30)
    yield s
    s.close()
    w.stop()
    opened.con.close()


def _bodies(n: int) -> list[bytes]:
    names = [f["name"] for f in json.loads((FLIGHTS / "metadata.json").read_text())["signature"]["features"]]
    rows = pl.read_parquet(FLIGHTS / "reference.parquet").head(n).select(names).to_dicts()
    return [orjson.dumps({"records": [r]}) for r in rows]


async def _started(s: ServingService, **cfg) -> None:
    s.start(asyncio.get_running_loop())
    s.put("delays", EndpointConfig(model="flights", version=1, missing_policy="impute", **cfg), "alice")
    await s._load(s.endpoints["delays"])


def _version(ans) -> int:
    return orjson.loads(ans.body)["version"]


def test_split_is_measured_and_sticky_callers_keep_their_version(service: ServingService):
    async def run() -> None:
        await _started(service)
        cand = service.registry.resolve("flights", 2)
        bodies = _bodies(200)
        service.set_route("delays", Route("r1", cand, weight=25.0))
        # not loaded yet: every request stays on stable
        got = [_version(await service.predict("delays", b, f"a{i}")) for i, b in enumerate(bodies[:50])]
        assert set(got) == {1}
        await asyncio.to_thread(service.ensure_loaded_blocking, cand)
        n = 10_000
        got = [_version(await service.predict("delays", bodies[i % 200], f"b{i}")) for i in range(n)]
        share = got.count(2) / n
        assert abs(share - 0.25) < 0.02, share  # 10k Bernoulli(0.25): sd 0.0043, so +-2 % is > 4.5 sd
        # sticky A/B: the same caller key lands on the same version every time, and keys split ~25 %
        service.set_route("delays", Route("r2", cand, weight=25.0, sticky_header="x-caller-key"))
        first: dict[str, int] = {}
        for rep in range(3):
            for k in range(400):
                v = _version(await service.predict("delays", bodies[k % 200], f"c{rep}-{k}",
                                                   [(b"x-caller-key", f"user-{k}".encode())]))  # fmt: skip
                assert first.setdefault(f"user-{k}", v) == v
        assert 0.18 < list(first.values()).count(2) / 400 < 0.32

    asyncio.run(run())


def test_shadow_never_changes_an_answer_and_is_compared(service: ServingService):
    async def run() -> None:
        await _started(service)
        cand = service.registry.resolve("flights", 2)
        await asyncio.to_thread(service.ensure_loaded_blocking, cand)
        bodies = _bodies(100)
        plain = [orjson.loads((await service.predict("delays", b, "p")).body)["predictions"] for b in bodies]
        service.set_route("delays", Route("r3", cand, shadow=1.0))
        shadowed = [orjson.loads((await service.predict("delays", b, "s")).body) for b in bodies]
        assert [a["predictions"] for a in shadowed] == plain and {a["version"] for a in shadowed} == {1}
        for _ in range(500):  # let the mirrored calls finish (batched on a timer, run on a thread)
            m = service.route_metrics("delays", 60)
            if m.shadow.requests >= 100:
                break
            await asyncio.sleep(0.01)
        assert m.shadow.requests == 100 and m.shadow.rows == 100 and m.shadow.errors == 0
        assert m.shadow.disagreements == 0 and m.shadow.score_abs_diff_mean == 0.0  # same weights
        assert m.candidate is not None and m.candidate.requests == 0  # mirrored calls serve nobody
        assert m.stable.requests >= 100 and len(m.stable.scores) >= 100

    asyncio.run(run())


def test_a_failing_candidate_costs_callers_nothing_and_is_counted(service: ServingService):
    async def run() -> None:
        await _started(service, faults=FaultConfig(error_rate=1.0, version=2))
        cand = service.registry.resolve("flights", 2)
        await asyncio.to_thread(service.ensure_loaded_blocking, cand)
        service.set_route("delays", Route("r4", cand, weight=50.0))
        answers = [await service.predict("delays", b, f"f{i}") for i, b in enumerate(_bodies(200))]
        assert {a.status for a in answers} == {200} and {_version(a) for a in answers} == {1}
        m = service.route_metrics("delays", 60)
        assert m.candidate is not None and m.candidate.requests > 60 and m.candidate.error_rate == 1.0
        assert m.stable.error_rate == 0.0
        service.set_route("delays", None)
        assert not service.pool.pinned(("flights", 2))

    asyncio.run(run())
