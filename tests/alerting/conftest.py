"""A migrated store with a running writer, a fake clock and a notifier double for engine tests."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from agent.schemas import AlertOut
from agent.store.db import open_store
from agent.store.reader import StoreReader
from agent.store.writer import StoreWriter


class Clock:
    def __init__(self, t: float = 1_700_000_000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


@dataclass
class Recorder:
    """Stands in for the Notifier: records what would be sent."""

    sent: list[tuple[str, str, AlertOut]] = field(default_factory=list)

    def notify(self, alert: AlertOut, status: str) -> None:
        self.sent.append((alert.fingerprint, status, alert))

    def statuses(self) -> list:
        return []

    def counters(self) -> list:
        return []

    def statuses_of(self, status: str) -> list[str]:
        return [fp for fp, s, _ in self.sent if s == status]


@dataclass
class Store:
    path: Path
    writer: StoreWriter
    reader: StoreReader


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    opened = open_store(tmp_path / "wk.duckdb")
    w = StoreWriter(opened.con, flush_interval=60)
    w.start()
    yield Store(tmp_path / "wk.duckdb", w, StoreReader(opened.con, 3600))
    w.stop()
    opened.con.close()
