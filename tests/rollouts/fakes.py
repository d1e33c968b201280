"""Test doubles for the rollout engine: a serving layer, a registry, an audit log and datasets in memory,
with a real store (DuckDB, migrated) behind a real writer."""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb

from agent.registry.store import NotFound
from agent.rollouts.engine import RolloutEngine
from agent.schemas import EndpointConfig, ModelVersion, ModelVersionCreate, Principal
from agent.serving.pool import ModelLoadError
from agent.store.migrations import migrate
from agent.store.writer import StoreWriter

FLIGHTS = Path(__file__).resolve().parents[2] / "sample_data" / "flights"
META = ModelVersionCreate.model_validate(json.loads((FLIGHTS / "metadata.json").read_text()))

ADMIN = Principal(name="admin", role="admin", via="token")
OLGA = Principal(name="olga", role="operator", via="token")
ALICE = Principal(name="alice", role="approver", via="token")
BOB = Principal(name="bob", role="approver", via="token")
VERA = Principal(name="vera", role="viewer", via="token")


def version(v: int, name: str = "flights") -> ModelVersion:
    return ModelVersion(
        name=name, version=v, digest=f"{v:064x}", size_bytes=1, format="onnx", created_at=0.0, created_by="ci",
        lineage=META.lineage.model_copy(update={"build_id": f"build-{v}"}), signature=META.signature,
    )  # fmt: skip


class FakeRegistry:
    def __init__(self, versions: int = 3) -> None:
        self.versions = {v: version(v) for v in range(1, versions + 1)}

    def get(self, name: str, v: int) -> ModelVersion:
        if name != "flights" or v not in self.versions:
            raise NotFound(f"model {name!r} has no version {v}", "version")
        return self.versions[v]


@dataclass
class FakeEndpoint:
    name: str
    config: EndpointConfig
    version: ModelVersion | None
    route: Any = None


class FakeServing:
    def __init__(self, registry: FakeRegistry) -> None:
        self.registry = registry
        self.endpoints: dict[str, FakeEndpoint] = {}
        self.loaded: set[tuple[str, int]] = {("flights", 1)}
        self.pins: dict[tuple[str, int], float | None] = {}
        self.puts: list[tuple[str, int | None, str]] = []
        self.metrics: Any = None
        self.load_gate: threading.Event | None = None  # set: loads wait for it
        self.loading = threading.Event()  # a load has begun
        self.fail_loads = False
        self.scores: dict[int, Any] = {}  # version -> callable(records) -> (scores, labels)
        self.loads = 0

    def add(self, name: str = "delays", v: int = 1) -> None:
        cfg = EndpointConfig(model="flights", version=v, missing_policy="impute")
        self.endpoints[name] = FakeEndpoint(name, cfg, self.registry.get("flights", v))

    def set_route(self, name: str, route: Any) -> None:
        self.endpoints[name].route = route

    def pin(self, model: str, v: int, seconds: float | None = None) -> None:
        self.pins[(model, v)] = seconds

    def is_version_loaded(self, model: str, v: int) -> bool:
        return (model, v) in self.loaded

    def ensure_loaded_blocking(self, mv: ModelVersion, timeout: float = 60) -> None:
        self.loading.set()
        if self.load_gate is not None:
            self.load_gate.wait(timeout)
        if self.fail_loads:
            raise ModelLoadError("no such file")
        if (mv.name, mv.version) not in self.loaded:
            self.loads += 1
        self.loaded.add((mv.name, mv.version))

    def evaluate_blocking(self, mv: ModelVersion, records: list[dict]):
        return self.scores[mv.version](records)

    def route_metrics(self, name: str, window_s: float) -> Any:
        return self.metrics

    def put(self, name: str, cfg: EndpointConfig, principal: str) -> FakeEndpoint:
        ep = FakeEndpoint(name, cfg, self.registry.get(cfg.model, cfg.version))
        self.endpoints[name] = ep
        self.puts.append((name, cfg.version, principal))
        return ep


@dataclass
class FakeAudit:
    entries: list[tuple[str, str, str, dict, str | None]] = field(default_factory=list)

    def record(self, principal: Principal, action: str, target: str, detail: dict | None = None, client=None):
        self.entries.append((principal.name, action, target, detail or {}, client))

    def actions(self) -> list[tuple[str, str]]:
        return [(who, action) for who, action, *_ in self.entries]


class Clock:
    def __init__(self, t: float = 1_000_000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


@dataclass
class World:
    con: duckdb.DuckDBPyConnection
    writer: StoreWriter
    registry: FakeRegistry
    serving: FakeServing
    audit: FakeAudit
    clock: Clock
    datasets: Any = None
    alerts: Any = None

    def engine(self, serving: FakeServing | None = None) -> RolloutEngine:
        return RolloutEngine(
            self.writer, self.con, serving or self.serving, self.registry, self.audit, datasets=self.datasets,
            alerts=lambda: self.alerts, host="host-1", clock=self.clock,
        )  # fmt: skip


def world() -> World:
    con = duckdb.connect(":memory:")
    migrate(con)
    w = StoreWriter(con, flush_interval=60)
    w.start()
    reg = FakeRegistry()
    s = FakeServing(reg)
    s.add()
    return World(con, w, reg, s, FakeAudit(), Clock())
